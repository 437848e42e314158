"""Torch modules and losses of the models (no AnnData here)."""
