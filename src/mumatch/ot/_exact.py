"""Hard one-to-one matching by the linear assignment problem."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import linear_sum_assignment

from ._cost import check_points, prepare_cost
from ._plan import SparsePlan, sparse_plan_stats

# linear_sum_assignment needs the dense cost (8 bytes per entry) and O(n^3) time: 5000 × 5000 is 200 MB and about
# a minute on one core.
MAX_EXACT_SIZE = 5000


def exact_matching(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    cost: str = "cosine",
    max_size: int = MAX_EXACT_SIZE,
) -> SparsePlan:
    """Minimum-cost one-to-one matching (:func:`scipy.optimize.linear_sum_assignment`) on the rescaled cost.

    Parameters
    ----------
    x, y
        The two point clouds (``N × d`` and ``M × d``).
    cost
        ``"cosine"`` or ``"sqeuclidean"``, rescaled as in :func:`mumatch.ot.sinkhorn`.
    max_size
        Refuse problems with more than ``max_size`` points on either side.

    Returns
    -------
    A plan with one entry of weight 1 per matched row (``min(N, M)`` rows are matched; the others stay empty and get
    NaN certainty).
    """
    x, y = check_points(x, y)
    if max(x.shape[0], y.shape[0]) > max_size:
        raise ValueError(
            f"exact matching of {x.shape[0]} × {y.shape[0]} points exceeds max_size={max_size} (it needs the dense "
            "cost and cubic time); use entropic OT (match_ot's method='sinkhorn'), split the cells into smaller blocks "
            "(match_ot's batch_key or cells), or, calling exact_matching directly, raise max_size"
        )
    geometry = prepare_cost(x, y, cost, dtype=torch.float64, device=torch.device("cpu"))
    with torch.no_grad():
        neg_cost = geometry.neg_cost_tile(0, x.shape[0]).numpy()
    rows, cols = linear_sum_assignment(neg_cost, maximize=True)
    plan = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(x.shape[0], y.shape[0]))
    return sparse_plan_stats(plan)
