"""Plans from dual potentials: a dense tile on demand, or a sparse CSR built one row tile at a time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ._cost import DEFAULT_MEMORY_BUDGET, _buffer, check_points, prepare_cost, resolve_device, resolve_dtype, tile_rows

# The competition accepted at most 1000 non-zeros per row of a prediction.
MAX_PER_ROW = 1000
# By default a row keeps its largest entries until they hold this fraction of the row's mass.
ROW_MASS = 0.999


@dataclass
class SparsePlan:
    """A sparse plan with rows normalised to 1, and per-point certainty.

    Attributes
    ----------
    plan
        ``N × M`` CSR, float32; each non-empty row sums to 1.
    row_confidence, col_confidence
        Largest weight of each row (column) of the full plan once normalised to 1; NaN for unmatched points.
    row_entropy, col_entropy
        Entropy (nats) of each row (column) of the full plan once normalised to 1; NaN for unmatched points.
    row_mass_kept
        Fraction of each row's mass held by the kept entries.
    """

    plan: sp.csr_matrix
    row_confidence: np.ndarray
    row_entropy: np.ndarray
    col_confidence: np.ndarray
    col_entropy: np.ndarray
    row_mass_kept: np.ndarray


def plan_tile(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    f: np.ndarray,
    g: np.ndarray,
    epsilon: float,
    cost: dict,
    rows: slice | None = None,
) -> np.ndarray:
    """Rows of the plan ``exp((f + g - C) / epsilon)`` recomputed from the embeddings and the potentials.

    Parameters
    ----------
    x, y
        The embeddings the plan was solved on.
    f, g
        Dual potentials (:class:`mumatch.ot.SinkhornResult`).
    epsilon
        The entropic regularisation of the solve.
    cost
        ``SinkhornResult.cost``: the cost's kind and constants.
    rows
        Which rows (all by default).

    Returns
    -------
    The dense rows of the plan, float64.
    """
    x, y = check_points(x, y)
    geometry = prepare_cost(x, y, cost["kind"], dtype=torch.float64, device=torch.device("cpu"), params=cost)
    rows = rows if rows is not None else slice(0, geometry.shape[0])
    start, stop, _ = rows.indices(geometry.shape[0])
    with torch.no_grad():
        log_plan = _log_plan_tile(geometry, torch.as_tensor(f), torch.as_tensor(g), epsilon, start, stop, None)
    return log_plan.exp().numpy()


def sparsify_plan(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    f: np.ndarray,
    g: np.ndarray,
    epsilon: float,
    cost: dict,
    *,
    top_k: int | None = None,
    mass: float = ROW_MASS,
    max_per_row: int = MAX_PER_ROW,
    dtype: str = "float32",
    device: str = "auto",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> SparsePlan:
    """Sparse plan from the potentials, built in row tiles (the ``N × M`` plan never exists).

    Each row keeps its ``top_k`` largest entries or, by default, the smallest set of largest entries holding at least
    ``mass`` of the row's mass, at most ``max_per_row``; kept rows are normalised to sum to 1. Confidence and entropy
    are computed on the full plan's rows and columns in the same pass.

    Parameters
    ----------
    x, y, f, g, epsilon, cost
        As in :func:`plan_tile`.
    top_k
        Entries kept per row; ``None`` keeps by ``mass``.
    mass
        Fraction of each row's mass to keep when ``top_k`` is None, in (0, 1].
    max_per_row
        Cap on the entries kept per row when ``top_k`` is None.
    dtype, device, memory_budget
        As in :func:`mumatch.ot.sinkhorn`.

    Returns
    -------
    The sparse plan and per-point certainty, see :class:`SparsePlan`.
    """
    x, y = check_points(x, y)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    if not 0 < mass <= 1:
        raise ValueError(f"mass must be in (0, 1], got {mass!r}")
    if isinstance(max_per_row, bool) or not isinstance(max_per_row, int | np.integer) or max_per_row < 1:
        raise ValueError(f"max_per_row must be an integer >= 1, got {max_per_row!r}")
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    geometry = prepare_cost(x, y, cost["kind"], dtype=torch_dtype, device=torch_device, params=cost)
    n_rows, n_cols = geometry.shape
    k = min(top_k if top_k is not None else max_per_row, n_cols)
    f_t = torch.as_tensor(np.asarray(f), dtype=torch_dtype, device=torch_device)
    g_t = torch.as_tensor(np.asarray(g), dtype=torch_dtype, device=torch_device)
    step = tile_rows(n_cols, geometry.x.element_size(), memory_budget, n_buffers=3)

    row_confidence = np.empty(n_rows)
    row_entropy = np.empty(n_rows)
    row_mass_kept = np.empty(n_rows)
    col_max = torch.full((n_cols,), -torch.inf, dtype=torch.float64, device=torch_device)
    col_sums = torch.zeros(n_cols, dtype=torch.float64, device=torch_device)
    col_weighted = torch.zeros(n_cols, dtype=torch.float64, device=torch_device)
    counts, indices, weights = [], [], []
    buffer = None
    with torch.no_grad():
        for start in range(0, n_rows, step):
            stop = min(start + step, n_rows)
            buffer = _buffer(buffer, stop - start, n_cols, geometry.x)
            log_plan = _log_plan_tile(geometry, f_t, g_t, epsilon, start, stop, buffer)
            row_max = log_plan.amax(dim=1)
            shifted = torch.exp(log_plan - row_max[:, None])
            row_sums = shifted.sum(dim=1)
            row_confidence[start:stop] = (1.0 / row_sums).double().cpu().numpy()
            entropy = row_sums.log() - (shifted * (log_plan - row_max[:, None])).sum(dim=1) / row_sums
            row_entropy[start:stop] = entropy.double().cpu().numpy()
            # The plan's own entries, for the column statistics.
            shifted.mul_(torch.exp(row_max)[:, None])
            col_sums += shifted.sum(dim=0).double()
            col_weighted += (shifted * log_plan).sum(dim=0).double()
            col_max = torch.maximum(col_max, log_plan.amax(dim=0).double())
            del shifted

            top_values, top_index = torch.topk(log_plan, k, dim=1, sorted=True)
            top_weights = torch.exp(top_values - row_max[:, None]) / row_sums[:, None]
            if top_k is None:
                cumulative = top_weights.cumsum(dim=1)
                keep = (cumulative < mass).sum(dim=1) + 1
                keep = keep.clamp_max(k)
            else:
                keep = torch.full((stop - start,), k, dtype=torch.long, device=torch_device)
            mask = torch.arange(k, device=torch_device)[None, :] < keep[:, None]
            kept = torch.where(mask, top_weights, torch.zeros_like(top_weights))
            kept_sums = kept.sum(dim=1)
            row_mass_kept[start:stop] = kept_sums.double().cpu().numpy()
            normalised = kept / kept_sums[:, None]
            counts.append(keep.cpu().numpy())
            indices.append(top_index[mask].cpu().numpy())
            weights.append(normalised[mask].float().cpu().numpy())

    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
    plan = sp.csr_matrix(
        (np.concatenate(weights), np.concatenate(indices).astype(np.int32), indptr), shape=(n_rows, n_cols)
    )
    col_sums_np = col_sums.cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        col_confidence = np.exp(col_max.cpu().numpy()) / col_sums_np
        col_entropy = np.log(col_sums_np) - col_weighted.cpu().numpy() / col_sums_np
    unmatched = ~(col_sums_np > 0)
    col_confidence[unmatched] = np.nan
    col_entropy[unmatched] = np.nan
    return SparsePlan(plan, row_confidence, row_entropy, col_confidence, col_entropy, row_mass_kept)


def sparse_plan_stats(plan: sp.spmatrix) -> SparsePlan:
    """Normalise the rows of a non-negative sparse plan and compute its certainty from the stored entries."""
    plan = sp.csr_matrix(plan, dtype=np.float64)
    row_sums = np.asarray(plan.sum(axis=1)).ravel()
    col_sums = np.asarray(plan.sum(axis=0)).ravel()
    row_confidence, row_entropy = _sparse_axis_stats(plan, row_sums)
    col_confidence, col_entropy = _sparse_axis_stats(sp.csr_matrix(plan.T), col_sums)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(row_sums > 0, 1.0 / row_sums, 0.0)
    normalised = sp.csr_matrix(sp.diags(scale) @ plan, dtype=np.float32)
    normalised.eliminate_zeros()
    kept = np.where(row_sums > 0, 1.0, np.nan)
    return SparsePlan(normalised, row_confidence, row_entropy, col_confidence, col_entropy, kept)


def _sparse_axis_stats(matrix: sp.csr_matrix, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest normalised weight and entropy of every row of a CSR matrix; NaN for empty rows."""
    n_rows = matrix.shape[0]
    confidence = np.full(n_rows, np.nan)
    entropy = np.full(n_rows, np.nan)
    row_of = np.repeat(np.arange(n_rows), np.diff(matrix.indptr))
    filled = sums > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        p = matrix.data / sums[row_of]
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    entropy_all = np.bincount(row_of, weights=terms, minlength=n_rows)
    max_all = np.zeros(n_rows)
    np.maximum.at(max_all, row_of, p)
    confidence[filled] = max_all[filled]
    entropy[filled] = entropy_all[filled]
    return confidence, entropy


def _log_plan_tile(
    geometry, f: torch.Tensor, g: torch.Tensor, epsilon: float, start: int, stop: int, out: torch.Tensor | None
) -> torch.Tensor:
    """``(f + g - C) / epsilon`` for rows ``start:stop``."""
    tile = geometry.neg_cost_tile(start, stop, out=out)
    tile.add_(g.to(tile.dtype)[None, :]).add_(f.to(tile.dtype)[start:stop, None]).div_(epsilon)
    return tile
