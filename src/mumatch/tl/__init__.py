"""Tools: training the shared embeddings and matching cells across modalities."""

from ._train import train_clip
from ._train_clue import train_clue

__all__: list[str] = ["train_clip", "train_clue"]
