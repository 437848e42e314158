"""Preprocessing: per-modality embeddings that the models take as input (``lsi_harmony`` lands with its issue)."""

__all__: list[str] = []
