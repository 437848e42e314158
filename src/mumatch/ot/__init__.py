"""Optimal-transport solvers on embeddings, with no AnnData in sight."""

from ._exact import exact_matching
from ._knn import mutual_knn
from ._plan import SparsePlan, plan_tile, sparse_plan_stats, sparsify_plan
from ._sinkhorn import SinkhornResult, sinkhorn

__all__: list[str] = [
    "SinkhornResult",
    "SparsePlan",
    "exact_matching",
    "mutual_knn",
    "plan_tile",
    "sinkhorn",
    "sparse_plan_stats",
    "sparsify_plan",
]
