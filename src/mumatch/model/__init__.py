"""scvi-tools-style model classes (``CLIP``, ``CLUE``; each lands with its issue)."""

__all__: list[str] = []
