"""A truncated cost: the entries a plan can still put mass on, kept in a sparse layout (Schmitzer 2019).

At small epsilon an entropic plan lives on a few entries per row: on the planted benchmark at epsilon = 0.001 and
N = 10k, the entries within 20 (in units of epsilon) of their row's largest log-plan are 0.07 % of the matrix (38 per
row at most), and outside them lies 1e-9 of the mass (`benchmarks/ot_truncation.py`). Potentials converged at the
previous epsilon-scaling stage already locate those entries: the ones they keep at the next stage miss 1e-14 of
its plan's mass. An iteration on the kept entries is then a sparse matrix-vector product instead of a pass over the
whole N × M kernel.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from ._cost import PointCloudCost, strip_layout

# Entries whose log-plan (f_i + g_j - C_ij) / epsilon is more than this below its row's largest are dropped: each
# weighs < e^-20 = 2e-9 of the row's largest entry, so a row of M entries loses < M · 2e-9 of its mass.
TRUNCATION = 20.0
# Bytes held per kept entry at the peak (its cost, row and column, the kernel values of both orientations, the
# transposed order and the temporaries of a rebuild; measured: 92 B in float32, 102 B in float64), and the share of
# the memory budget the kept entries may take: a dense solver's kernel stays allocated beside them (for a stage
# finished on the whole kernel).
BYTES_PER_ENTRY = 112
BUDGET_SHARE = 0.25
# The kept entries are counted over this fraction of the rows before the rest is read: a projection over the memory
# budget stops the pass early.
PROBE_FRACTION = 0.05


@dataclass
class TruncatedCost:
    """The kept entries of ``-C``, row by row (CSR), with the order that lists them column by column."""

    shape: tuple[int, int]
    crow: torch.Tensor  # (N + 1,) offsets of each row's entries
    row: torch.Tensor  # (nnz,) row of each entry
    col: torch.Tensor  # (nnz,) column of each entry
    neg_cost: torch.Tensor  # (nnz,) -C of each entry (the rescaled cost)
    order: torch.Tensor  # (nnz,) the entries sorted by column (stable)
    t_crow: torch.Tensor  # (M + 1,) offsets of each column's entries in that order
    t_col: torch.Tensor  # (nnz,) the row of each entry in that order

    @property
    def nnz(self) -> int:
        """Kept entries."""
        return int(self.col.numel())

    def restrict(self, g: torch.Tensor, epsilon: float, threshold: float | None = None) -> TruncatedCost | None:
        """The kept entries that :func:`truncate_cost` would keep for ``g`` and ``epsilon``, found among these.

        For the next, smaller epsilon of a scaling schedule: its entries lie among those kept for the previous one
        (whatever they miss is found by the final check on the whole cost). None when a column keeps none.
        """
        threshold = TRUNCATION if threshold is None else threshold
        shifted = g[self.col] + self.neg_cost
        row_max = torch.segment_reduce(shifted, "max", offsets=self.crow)
        keep = shifted >= row_max[self.row] - threshold * epsilon
        return _from_entries(self.shape, self.row[keep], self.col[keep], self.neg_cost[keep], sorted_by_row=True)

    def kernels(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The sparse matrix with ``values`` on the kept entries, and its transpose, both CSR."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            kernel = torch.sparse_csr_tensor(self.crow, self.col, values, self.shape, check_invariants=False)
            transposed = torch.sparse_csr_tensor(
                self.t_crow, self.t_col, values[self.order], self.shape[::-1], check_invariants=False
            )
        return kernel, transposed


def truncate_cost(
    geometry: PointCloudCost,
    g: torch.Tensor,
    epsilon: float,
    memory_budget: int,
    threshold: float | None = None,
) -> TruncatedCost | None:
    """The entries with ``(g_j - C_ij) / epsilon`` within ``threshold`` of their row's largest, in one tiled pass.

    ``g`` is a column potential that locates the plan (the previous epsilon-scaling stage's); a row potential would
    shift a whole row and does not change which of its entries are kept. Returns None when the kept entries would
    not fit their share of ``memory_budget`` (:data:`BUDGET_SHARE`; projected from the first rows, so that the pass
    stops early), or when a column keeps none (``g`` does not locate its plan).
    """
    threshold = TRUNCATION if threshold is None else threshold
    n_rows, n_cols = geometry.shape
    device = geometry.x.device
    strip_rows, width = strip_layout(geometry.shape, geometry.x.element_size(), memory_budget, device)
    buffer = torch.empty(strip_rows * n_cols, dtype=geometry.x.dtype, device=device)
    column_ranges = [(j, min(j + width, n_cols)) for j in range(0, n_cols, width)]
    column_bias = g - geometry.col
    max_entries = int(BUDGET_SHARE * memory_budget) // BYTES_PER_ENTRY
    probe_rows = max(1, int(PROBE_FRACTION * n_rows))
    rows_out, cols_out, values_out = [], [], []
    kept = 0
    for start in range(0, n_rows, strip_rows):
        stop = min(start + strip_rows, n_rows)
        rows, height = slice(start, stop), stop - start
        blocks = []
        row_max = None
        for j0, j1 in column_ranges:
            block = buffer[height * j0 : height * j1].view(height, j1 - j0)
            # g_j - C_ij up to the row's constant, which the row threshold does not see.
            geometry.shifted_block(rows, slice(j0, j1), geometry.scale, column_bias, out=block)
            block_max = block.amax(dim=1)
            row_max = block_max if row_max is None else torch.maximum(row_max, block_max)
            blocks.append(block)
        floor = (row_max - threshold * epsilon)[:, None]
        row_constant = geometry.row[rows] + geometry.offset
        for (j0, _), block in zip(column_ranges, blocks, strict=True):
            local_rows, local_cols = torch.nonzero(block >= floor, as_tuple=True)
            cols = local_cols + j0
            values_out.append(block[local_rows, local_cols] - g[cols] - row_constant[local_rows])
            rows_out.append(local_rows + start)
            cols_out.append(cols)
            kept += local_rows.numel()
        if kept > max_entries or (stop >= probe_rows and kept * n_rows > max_entries * stop):
            return None
    del buffer, blocks
    row, col, neg_cost = torch.cat(rows_out), torch.cat(cols_out), torch.cat(values_out)
    del rows_out, cols_out, values_out  # their concatenations replace them before the sorted copies are made
    # Entries were found strip by strip and block by block, not row by row.
    return _from_entries(geometry.shape, row, col, neg_cost, sorted_by_row=False)


def _from_entries(
    shape: tuple[int, int], row: torch.Tensor, col: torch.Tensor, neg_cost: torch.Tensor, *, sorted_by_row: bool
) -> TruncatedCost | None:
    """The :class:`TruncatedCost` of these entries; None when a column has none."""
    n_rows, n_cols = shape
    column_counts = torch.bincount(col, minlength=n_cols)
    if bool((column_counts == 0).any()):
        return None
    if not sorted_by_row:
        by_row = torch.argsort(row * n_cols + col)
        row, col, neg_cost = row[by_row], col[by_row], neg_cost[by_row]
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=row.device)
    crow[1:] = torch.bincount(row, minlength=n_rows).cumsum(0)
    order = torch.argsort(col, stable=True)
    t_crow = torch.zeros(n_cols + 1, dtype=torch.int64, device=row.device)
    t_crow[1:] = column_counts.cumsum(0)
    return TruncatedCost(shape, crow, row, col, neg_cost, order, t_crow, row[order])
