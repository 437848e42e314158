"""scvi-tools-style model classes (``CLIP``, ``CLUE``; each lands with its issue)."""

from ._clip import CLIP
from ._clue import CLUE

__all__: list[str] = ["CLIP", "CLUE"]
