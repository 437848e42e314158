"""Preprocessing: per-modality embeddings that the models take as input."""

from ._lsi_harmony import lsi_harmony, lsi_harmony_transform

__all__: list[str] = ["lsi_harmony", "lsi_harmony_transform"]
