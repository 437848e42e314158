"""Assertions shared by the tests."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch
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


def _seed_global_generators() -> None:
    random.seed(5)
    np.random.seed(5)  # noqa: NPY002 (the global generator is the point)
    torch.manual_seed(5)


def _global_draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(1))  # noqa: NPY002


def assert_global_random_state_kept(function: Callable[[], object]) -> None:
    """``function()`` leaves Python's, numpy's and torch's global generators, and Lightning's seed variables, alone."""
    names = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")
    environment = {name: os.environ.get(name) for name in names}
    _seed_global_generators()
    expected = _global_draws()
    _seed_global_generators()
    function()
    assert _global_draws() == expected
    assert {name: os.environ.get(name) for name in names} == environment
