"""Torch modules and losses of the models (no AnnData here)."""

from ._clip import CLIPModule

__all__ = ["CLIPModule"]
