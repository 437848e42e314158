"""Mutual nearest neighbours: the matching baseline of CLUE's and Seurat's kind."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from .._checks import check_positive
from ._cost import (
    _buffer,
    check_points,
    prepare_cost,
    resolve_device,
    resolve_dtype,
    resolve_memory_budget,
    tile_rows,
)
from ._plan import SparsePlan, sparse_plan_stats

# Neighbours searched on each side.
DEFAULT_N_NEIGHBORS = 10
# Temperature of the weights of a row's links (on the [0, 1] cost), MatchCLOT's epsilon.
DEFAULT_EPSILON = 0.01


def mutual_knn(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    n_neighbors: int = DEFAULT_N_NEIGHBORS,
    epsilon: float = DEFAULT_EPSILON,
    cost: str = "cosine",
    dtype: str = "float32",
    device: str = "auto",
    memory_budget: int | None = None,
) -> SparsePlan:
    """Mutual nearest-neighbour matching.

    Row ``i`` is linked to column ``j`` when each is among the other's ``n_neighbors`` nearest points (on the cost
    of :func:`mumatch.ot.sinkhorn`); a row's links share its mass in proportion to ``exp(-cost / epsilon)``. A row
    with no mutual neighbour keeps its single nearest column, so that every row is matched.

    Parameters
    ----------
    x, y
        The two point clouds (``N × d`` and ``M × d``).
    n_neighbors
        Neighbours searched on each side.
    epsilon
        Temperature of the link weights (> 0).
    cost
        ``"cosine"`` or ``"sqeuclidean"``.
    dtype, device, memory_budget
        As in :func:`mumatch.ot.sinkhorn`.

    Returns
    -------
    The plan and per-point certainty, see :class:`mumatch.ot.SparsePlan`.
    """
    x, y = check_points(x, y)
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int | np.integer) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be an integer >= 1, got {n_neighbors!r}")
    check_positive(epsilon, "epsilon")
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    memory_budget = resolve_memory_budget(memory_budget, torch_device)
    forward = prepare_cost(x, y, cost, dtype=torch_dtype, device=torch_device, memory_budget=memory_budget)
    backward = prepare_cost(y, x, cost, dtype=torch_dtype, device=torch_device, memory_budget=memory_budget)
    n_rows, n_cols = forward.shape
    near_xy, neg_cost_xy = _nearest(forward, min(n_neighbors, n_cols), memory_budget)
    near_yx, _ = _nearest(backward, min(n_neighbors, n_rows), memory_budget)
    rows = np.repeat(np.arange(n_rows), near_xy.shape[1])
    cols = near_xy.ravel()
    back = sp.csr_matrix((np.ones(near_yx.size), (np.repeat(np.arange(n_cols), near_yx.shape[1]), near_yx.ravel())))
    back = sp.csr_matrix(back, shape=(n_cols, n_rows))
    mutual = np.asarray(back[cols, rows]).ravel() > 0
    has_mutual = np.bincount(rows[mutual], minlength=n_rows) > 0
    fallback = ~has_mutual[rows] & (np.tile(np.arange(near_xy.shape[1]), n_rows) == 0)
    keep = mutual | fallback
    # Relative to each row's best kept column (every row keeps one), so that its weights cannot all underflow: the
    # nearest column need not be a mutual neighbour, and a link far behind it has exp(-Δcost / epsilon) = 0.
    best_kept = np.where(keep.reshape(neg_cost_xy.shape), neg_cost_xy, -np.inf).max(axis=1, keepdims=True)
    weights = np.exp((neg_cost_xy - best_kept).ravel()[keep] / epsilon)
    plan = sp.csr_matrix((weights, (rows[keep], cols[keep])), shape=(n_rows, n_cols))
    # Each row's weights are relative to its own nearest column: a column's certainty is read from the rows'
    # normalised weights (the plan that is returned), not from weights that no two rows share a scale for.
    row_sums = np.asarray(plan.sum(axis=1)).ravel()
    return sparse_plan_stats(sp.diags(1.0 / row_sums) @ plan)


def _nearest(geometry, k: int, memory_budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and negated costs of the ``k`` columns of lowest cost for every row, nearest first."""
    n_rows, n_cols = geometry.shape
    step = tile_rows(n_cols, geometry.x.element_size(), memory_budget, n_buffers=1)
    found, values = [], []
    buffer = None
    with torch.no_grad():
        for start in range(0, n_rows, step):
            stop = min(start + step, n_rows)
            buffer = _buffer(buffer, stop - start, n_cols, geometry.x)
            tile = geometry.neg_cost_tile(start, stop, out=buffer)
            top = torch.topk(tile, k, dim=1, sorted=True)
            found.append(top.indices.cpu().numpy())
            values.append(top.values.double().cpu().numpy())
    return np.concatenate(found), np.concatenate(values)
