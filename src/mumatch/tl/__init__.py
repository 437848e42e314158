"""Tools: training the shared embeddings and matching cells across modalities."""

from ._train import train_clip

__all__: list[str] = ["train_clip"]
