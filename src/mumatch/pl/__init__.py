"""Plots of matchings, embeddings, confidences, scores and training curves (each lands with its issue)."""

__all__: list[str] = []
