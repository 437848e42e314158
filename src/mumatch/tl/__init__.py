"""Tools: training the shared embeddings and matching cells across modalities."""

__all__: list[str] = []
