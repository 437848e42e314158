"""Plots of matchings, embeddings, confidences, scores and training curves."""

from ._confidence import confidence
from ._embedding import joint_embedding
from ._plan import plan
from ._scores import scores
from ._training import training

__all__: list[str] = ["confidence", "joint_embedding", "plan", "scores", "training"]
