"""Preprocessing: per-modality embeddings that the models take as input."""

from ._depth import append_depth
from ._lsi_harmony import lsi_harmony, lsi_harmony_transform

__all__: list[str] = ["append_depth", "lsi_harmony", "lsi_harmony_transform"]
