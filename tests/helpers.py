"""Assertions shared by the tests."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from mudata import MuData


def snapshot(mdata: MuData) -> dict:
    """A comparable summary of everything a function could write into a MuData."""
    state = {"obsp": sorted(mdata.obsp), "uns": sorted(mdata.uns), "obs": list(mdata.obs.columns)}
    for name, adata in mdata.mod.items():
        state[name] = {
            "obsm": sorted(adata.obsm),
            "obs": list(adata.obs.columns),
            "uns": sorted(adata.uns),
            "layers": sorted(adata.layers),
            "X": adata.X.sum() if adata.X is not None else None,
            "shape": adata.shape,
        }
    return state


def assert_unchanged(before: dict, mdata: MuData) -> None:
    assert snapshot(mdata) == before


def dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
