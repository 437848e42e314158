"""One embedding from several: the concatenation whose cosine similarity is the mean of the members'."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def concatenate_members(parts: Sequence[np.ndarray], *, normalise: bool = True) -> np.ndarray:
    """Concatenate the members' embeddings of the same cells, each L2-normalised and scaled by ``1/√n``.

    The cosine similarity of two cells in the result is then the mean of their cosine similarities in the members
    (and, without ``normalise``, the squared distance the mean of the members' squared distances). Keeps the
    members' floating-point type.
    """
    scale = 1.0 / np.sqrt(len(parts))
    scaled = []
    for part in parts:
        if normalise:
            part = part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), np.finfo(part.dtype).tiny)
        scaled.append(part * part.dtype.type(scale))
    return np.hstack(scaled)
