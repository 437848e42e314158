"""Tools: training the shared embeddings and matching cells across modalities."""

from ._match import match_ot
from ._train import train_clip
from ._train_clue import train_clue
from ._transfer import transfer_labels

__all__: list[str] = ["match_ot", "train_clip", "train_clue", "transfer_labels"]
