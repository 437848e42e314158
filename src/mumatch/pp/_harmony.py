"""Harmony batch correction of an embedding (harmonypy's C++ backend), and when to skip it."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from .._layout import MISSING_BATCH, label_strings

CELLS_PER_CLUSTER = 30  # harmonypy's default number of clusters is min(n_cells / 30, 100)
MAX_CLUSTERS = 100


class HarmonyBatches(NamedTuple):
    """What :func:`harmony_batches` decided: the labels to correct (None: skip Harmony) and why."""

    labels: pd.Series | None
    reason: str
    # Whether skipping deserves a warning: not for batch_key=None (asked for) or one batch (nothing to correct).
    warn: bool = False


def harmony_batches(obs: pd.DataFrame, batch_key: str | None) -> HarmonyBatches:
    """The batch labels Harmony should correct, or None and the reason to skip it.

    Harmony needs a label for every cell and at least two levels. A modality where some cells have no label is left
    uncorrected rather than partly corrected: moving the labelled cells while the others stay put would put the two
    groups in different coordinates, and guessing that the unlabelled cells form one batch would be an assumption
    (in the NeurIPS 2021 data they come from a site whose batches are hidden).
    """
    if batch_key is None:
        return HarmonyBatches(None, "batch_key=None")
    if batch_key not in obs:
        # Data without batches (or with them in one modality only) is common: the default batch_key must work.
        return HarmonyBatches(None, f"no '{batch_key}' column in its .obs", warn=True)
    # Named as match_ot and the models name them: the text "nan" is no batch, 1.0 is batch "1".
    labels = label_strings(obs[batch_key])
    n_missing = int((labels == MISSING_BATCH).sum())
    if n_missing:
        return HarmonyBatches(None, f"{n_missing} of {labels.size} cells have no '{batch_key}' label", warn=True)
    n_levels = labels.nunique()
    if n_levels < 2:
        return HarmonyBatches(None, f"'{batch_key}' has a single level")
    return HarmonyBatches(labels, f"{n_levels} batches in '{batch_key}'")


def run_harmony(embedding: np.ndarray, batches: pd.Series, *, random_state: int = 0) -> np.ndarray:
    """Harmony-corrected copy of ``embedding`` (cells × components, float32)."""
    import harmonypy  # imported on use: it loads a C++ extension and configures a logger

    n_clusters = int(max(1, min(round(embedding.shape[0] / CELLS_PER_CLUSTER), MAX_CLUSTERS)))
    meta = pd.DataFrame({"batch": pd.Categorical(batches.to_numpy())})
    # harmonypy guesses the orientation from the shape and takes a square matrix as components × cells, so a
    # cells × components input with as many cells as components would be corrected along the wrong axis: hand it the
    # orientation that every version reads the same way.
    result = harmonypy.run_harmony(
        np.ascontiguousarray(embedding.T), meta, "batch", nclust=n_clusters, verbose=False, random_state=random_state
    )
    corrected = np.asarray(result.Z_corr)
    if _returns_components_by_cells(harmonypy):
        corrected = corrected.T
    return np.ascontiguousarray(corrected, dtype=np.float32)


def _returns_components_by_cells(harmonypy: object) -> bool:
    """Whether this harmonypy (< 2) returns its corrected matrix as components × cells (2.x: cells × components)."""
    major = str(getattr(harmonypy, "__version__", "2")).split(".")[0]
    return major.isdigit() and int(major) < 2
