"""Harmony batch correction of an embedding (harmonypy's C++ backend), and when to skip it."""

from __future__ import annotations

import numpy as np
import pandas as pd

CELLS_PER_CLUSTER = 30  # harmonypy's default number of clusters is min(n_cells / 30, 100)
MAX_CLUSTERS = 100


def harmony_batches(obs: pd.DataFrame, batch_key: str | None) -> tuple[pd.Series | None, str]:
    """The batch labels Harmony should correct, or None and the reason to skip it.

    Harmony needs a label for every cell and at least two levels. A modality where some cells have no label is left
    uncorrected rather than partly corrected: moving the labelled cells while the others stay put would put the two
    groups in different coordinates, and guessing that the unlabelled cells form one batch would be an assumption
    (in the NeurIPS 2021 data they come from a site whose batches are hidden).
    """
    if batch_key is None:
        return None, "batch_key=None"
    labels = obs[batch_key]
    n_missing = int(labels.isna().sum())
    if n_missing:
        return None, f"{n_missing} of {labels.size} cells have no '{batch_key}' label"
    n_levels = labels.astype(str).nunique()
    if n_levels < 2:
        return None, f"'{batch_key}' has a single level"
    return labels.astype(str), f"{n_levels} batches in '{batch_key}'"


def run_harmony(embedding: np.ndarray, batches: pd.Series, *, random_state: int = 0) -> np.ndarray:
    """Harmony-corrected copy of ``embedding`` (cells × components, float32)."""
    import harmonypy  # imported on use: it loads a C++ extension and configures a logger

    n_clusters = int(max(1, min(round(embedding.shape[0] / CELLS_PER_CLUSTER), MAX_CLUSTERS)))
    meta = pd.DataFrame({"batch": pd.Categorical(batches.to_numpy())})
    result = harmonypy.run_harmony(
        embedding, meta, "batch", nclust=n_clusters, verbose=False, random_state=random_state
    )
    corrected = np.asarray(result.Z_corr)
    if corrected.shape != embedding.shape:  # harmonypy < 2 returns components × cells
        corrected = corrected.T
    return np.ascontiguousarray(corrected, dtype=np.float32)
