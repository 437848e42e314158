"""Optimal-transport solvers on embeddings, with no AnnData in sight."""

__all__: list[str] = []
