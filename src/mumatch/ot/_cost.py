"""Costs between two point clouds, kept as embeddings and evaluated in row tiles.

Every supported cost is affine in the inner products of the (prepared) embeddings,

``C[i, j] = offset + row[i] + col[j] - scale * <x_i, y_j>``,

so that a tile of rows of the cost costs one matrix product and the N × M matrix never needs to exist.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Cost = Literal["cosine", "sqeuclidean"]
COSTS: tuple[str, ...] = ("cosine", "sqeuclidean")
DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Budget for N × M work arrays (the dense kernel, or one row tile) when none is given (``memory_budget=None``): a
# quarter of the memory available on the device, at most AUTO_BUDGET_CAP. A stored kernel is worth its memory: at
# N = M = 20k (1.6 GB in float32) the dense solve took 9.2 s against 22 s tiled (one thread, same core, same load),
# because the tiled solver recomputes the product and the exp at every iteration. The cap keeps a dense kernel to
# ~23k × 23k in float32 (a few GB of peak memory at most); beyond, the tiled solver's memory stays O(strip × M).
AUTO_BUDGET_CAP = 2 * 2**30
AUTO_BUDGET_FLOOR = 64 * 2**20
# The budget when the available memory cannot be read (no psutil, no sysconf): a dense 10k × 10k float32 kernel
# (400 MB) still fits.
DEFAULT_MEMORY_BUDGET = 512 * 2**20
# Tiled passes (the solver's and the sparsification's) work on strips of rows cut into column blocks: the product,
# the exp and the row sums of a block (256 × 2048 float32, 2 MB) run in cache, and only the strip (256 × M) goes to
# memory, to be read once more (column sums, topk). Measured at N = M = 100k, dim 64, one thread (AMD EPYC, AVX2,
# 1 MB L2), seconds per solver iteration: the product is 18 (72 GFLOP/s, near the core's peak whatever the tiling)
# and the exp 10 in cache; the former 512 MB tiles added a row max (2.4), a shift and an exp out of cache, and two
# matrix-vector products (3.3) over memory; the blocked strip costs 29 for product + exp + row sums plus 2 for the
# column sums. At 20k the tiled solver went from 1.85 to 1.43 s per iteration.
STRIP_ROWS = 256
BLOCK_COLS = 2048
# The dense kernel is built and iterated on in row blocks of about this size, which stay in cache (L2/L3) between
# the operations on them: building the kernel then reads and writes it once instead of once per operation, and an
# iteration's two matrix-vector products (K v, then Kᵀ u) read it once instead of twice.
DENSE_BLOCK_BYTES = 4 * 2**20
# On a GPU each operation is a kernel launch of ~10 µs: blocks sized for a CPU core's cache make every pass
# launch-bound (100k cells: ~19k blocks of 256 × 2048 per pass, 13.8 s for the solve on an H100), so there strips
# and blocks span whole rows, as many as the memory budget holds, and the dense kernel is worked on in blocks of
# this size.
ACCELERATOR_BLOCK_BYTES = 256 * 2**20
# The dense solver's first pass writes the cost's product into the kernel's fresh memory in blocks of this size, on
# every device. A product of many rows splits its output between the threads in large parts far apart, each thread
# faulting in its own pages; cache-sized blocks (DENSE_BLOCK_BYTES) had both threads faulting in pages of the same few
# megabytes at a time, which was slower (10k × 10k on two CPU threads: 0.34 s against 0.49 s for 4 MB blocks, medians
# of six fresh processes). The row maxima and minimum are then read from memory, which costs little beside the
# product.
PRODUCT_BLOCK_BYTES = 256 * 2**20
# Tiled passes shift each row by an estimate of its log row sum (the solver: that of the previous iteration; near
# convergence the shifted row sums are ~1) instead of its max, which would cost a pass over the strip. A strip whose
# shifted row sums leave this range (the first iteration of a stage, a large change of g) is redone with the exact
# row max.
SHIFTED_SUM_RANGE = {torch.float32: (1e-20, 1e30), torch.float64: (1e-200, 1e200)}
# Arrays from this size up are mapped with their pages populated at once (see empty_array).
POPULATE_BYTES = 16 * 2**20
# Kernel exponents are computed in base 2 (scaled by log2(e), folded into the affine constants of the cost) and
# exponentiated with exp2: torch's CPU exp2 is 1.6-2x faster than its exp (AVX2, float32, 1M entries in cache:
# 1.2-1.5 against 2.4 ms), with the same 1-ulp accuracy. In the solvers the scaled exponent is rounded once, as
# before; the sparse plan's statistics scale an already rounded exponent (one more rounding, ~|x| * 6e-8).
LOG2E = 1.4426950408889634


@dataclass
class PointCloudCost:
    """A cost between two point clouds, evaluated tile by tile.

    Attributes
    ----------
    x, y
        The prepared embeddings (rows are unit vectors for the cosine cost).
    kind
        ``"cosine"`` or ``"sqeuclidean"``.
    offset, scale
        The affine constants of the cost (see the module docstring).
    row, col
        Per-point terms (zero for the cosine cost).
    """

    x: torch.Tensor
    y: torch.Tensor
    kind: str
    offset: float
    scale: float
    row: torch.Tensor
    col: torch.Tensor
    # When set, ``(kappa, c0)`` with ``-C = kappa * raw + c0`` for the raw product left in the caller's buffer, and
    # each row's largest raw entry (kappa > 0: the row's smallest cost), found in the same pass.
    raw_affine: tuple[float, float] | None = None
    raw_row_max: torch.Tensor | None = None
    # sqeuclidean: the points are ``(x / magnitude - centre) / radius`` (see _centred_unit_scale), recorded so that
    # a stored cost is rebuilt exactly for any subset of the points.
    frame: tuple[float, np.ndarray, float] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, M)``."""
        return self.x.shape[0], self.y.shape[0]

    def neg_cost_tile(self, start: int, stop: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """``-C[start:stop, :]`` written into ``out`` (allocated when None)."""
        out = torch.matmul(self.x[start:stop], self.y.T, out=out)
        # The cosine cost has no per-point terms, and before its rescaling no scale or offset: skip those passes.
        if self.scale != 1.0:
            out.mul_(self.scale)
        if self.kind != "cosine":
            out.sub_(self.col[None, :])
            out.sub_(self.row[start:stop, None])
        if self.offset != 0.0:
            out.sub_(self.offset)
        return out

    def shifted_tile(
        self, start: int, stop: int, inv_epsilon: float, col_shift: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(col_shift[j] - C[i, j]) / epsilon`` for rows ``start:stop``, up to a per-row constant.

        The missing per-row constant is ``-(row[i] + offset) / epsilon`` (see :meth:`row_constant`); leaving it out
        lets one fused matrix product (``addmm``) write the whole tile.
        """
        bias = ((col_shift - self.col) * inv_epsilon)[None, :]
        return torch.addmm(bias, self.x[start:stop], self.y.T, alpha=self.scale * inv_epsilon, out=out)

    def shifted_block(
        self, rows: slice, cols: slice, alpha: float, column_bias: torch.Tensor, out: torch.Tensor
    ) -> torch.Tensor:
        """``column_bias[cols] + alpha * <x_i, y_j>`` for one block of rows and columns, written into ``out``.

        With ``alpha = scale / epsilon`` and ``column_bias = (col_shift - col) / epsilon`` this is the block of
        :meth:`shifted_tile`.
        """
        return torch.addmm(column_bias[None, cols], self.x[rows], self.y[cols].T, alpha=alpha, out=out)

    def row_constant(self, start: int, stop: int, inv_epsilon: float) -> torch.Tensor:
        """The per-row term ``-(row[i] + offset) / epsilon`` left out by :meth:`shifted_tile`."""
        return -(self.row[start:stop] + self.offset) * inv_epsilon

    def params(self) -> dict[str, float | str | np.ndarray]:
        """What is needed, with the embeddings (or any subset of their points), to rebuild the cost exactly."""
        params = {"kind": self.kind, "offset": float(self.offset), "scale": float(self.scale)}
        if self.frame is not None:
            magnitude, centre, radius = self.frame
            params.update(magnitude=float(magnitude), centre=np.asarray(centre, dtype=np.float64), radius=float(radius))
        return params


def float64_array(values: object) -> np.ndarray:
    """``values`` as a float64 numpy array; torch tensors (on any device, requiring grad or not) are copied out."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
    return np.asarray(values, dtype=np.float64)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` picks CUDA when available, else the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or such a device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    is_name = isinstance(device, str) and (device in ("cpu", "cuda") or device.startswith("cuda:"))
    try:
        resolved = torch.device(device) if is_name or isinstance(device, torch.device) else None
    except RuntimeError:  # a malformed index, e.g. "cuda:x"
        resolved = None
    # Other device types (mps, meta, ...) would fail later inside torch: the cosine cost works in float64, which
    # MPS lacks.
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but torch finds no CUDA device; pass device='auto' or 'cpu'")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ValueError(
            f"device={device!r} was asked for but torch finds {torch.cuda.device_count()} CUDA device(s), numbered "
            "from 0; pass device='cuda' for the current one"
        )
    return resolved


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"`` (default) or ``"float64"``."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return DTYPES[dtype]


def check_points(x: object, y: object) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
    """Raise a ValueError unless ``x`` and ``y`` are finite 2-d arrays of the same width with at least one row."""
    checked = []
    for name, values in (("x", x), ("y", y)):
        if not isinstance(values, torch.Tensor):
            # Contiguous: torch cannot share the memory of a numpy view with negative strides (x[::-1]).
            values = np.ascontiguousarray(values, dtype=np.float64)
        if values.ndim != 2:
            raise ValueError(f"'{name}' must be a 2-d array (points × dimensions), got shape {tuple(values.shape)}")
        if values.shape[0] == 0:
            raise ValueError(f"'{name}' has no points")
        if values.shape[1] == 0:
            raise ValueError(f"'{name}' has no dimensions (shape {tuple(values.shape)}); pass an embedding")
        finite = torch.isfinite(values).all().item() if isinstance(values, torch.Tensor) else np.isfinite(values).all()
        if not finite:
            raise ValueError(f"'{name}' contains NaN or infinite values; clean or recompute the embedding")
        checked.append(values)
    if checked[0].shape[1] != checked[1].shape[1]:
        raise ValueError(
            f"'x' and 'y' must have the same number of dimensions for a {COSTS} cost, got "
            f"{checked[0].shape[1]} and {checked[1].shape[1]}; embed both modalities in one space first"
        )
    return checked[0], checked[1]


def available_memory(device: torch.device) -> int | None:
    """Bytes of memory available now on ``device`` (CUDA: free device memory), or None when it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil
    except ImportError:
        pass
    else:
        return int(psutil.virtual_memory().available)
    try:
        # Free pages only (not the reclaimable page cache): an underestimate, which errs on the safe side.
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def resolve_memory_budget(memory_budget: int | None, device: torch.device) -> int:
    """The bytes allowed for ``N × M`` work arrays.

    ``memory_budget`` itself (checked), or for None a quarter of the memory available on ``device``, between 64 MiB
    and 2 GiB (512 MiB when the available memory cannot be read).
    """
    if memory_budget is None:
        available = available_memory(device)
        if available is None:
            return DEFAULT_MEMORY_BUDGET
        return int(min(AUTO_BUDGET_CAP, max(AUTO_BUDGET_FLOOR, available // 4)))
    valid = isinstance(memory_budget, int | float | np.integer | np.floating) and not isinstance(memory_budget, bool)
    if not valid or not np.isfinite(memory_budget) or memory_budget < 1:
        raise ValueError(
            f"memory_budget must be a number of bytes > 0, or None for a quarter of the available memory; "
            f"got {memory_budget!r}"
        )
    return int(memory_budget)


def tile_rows(n_cols: int, itemsize: int, memory_budget: int, n_buffers: int = 2) -> int:
    """How many rows of an ``n_cols``-wide array fit ``n_buffers`` times in the memory budget."""
    return int(max(1, min(memory_budget // max(1, n_buffers * n_cols * itemsize), 2**31 - 1)))


def strip_layout(
    shape: tuple[int, int],
    itemsize: int,
    memory_budget: int,
    device: torch.device,
    n_buffers: int = 1,
    extra_row_bytes: int = 0,
) -> tuple[int, int]:
    """Rows per strip and columns per block of the passes that recompute the cost from the embeddings.

    On the CPU, strips of :data:`STRIP_ROWS` rows in blocks of :data:`BLOCK_COLS` columns that stay in cache. On a
    GPU, where each operation costs a kernel launch, whole rows: as many as fit the memory budget with ``n_buffers``
    strip-sized arrays and ``extra_row_bytes`` of other temporaries per row, and never more than the ``shape[0]``
    rows there are.
    """
    n_rows, n_cols = shape
    if device.type == "cpu":
        return min(STRIP_ROWS, tile_rows(n_cols, itemsize, memory_budget, n_buffers=1)), min(BLOCK_COLS, n_cols)
    row_bytes = n_buffers * n_cols * itemsize + extra_row_bytes
    return int(max(1, min(memory_budget // max(1, row_bytes), n_rows))), n_cols


def dense_block_rows(n_cols: int, itemsize: int, device: torch.device) -> int:
    """Rows per block of the passes over a stored kernel.

    Blocks of :data:`DENSE_BLOCK_BYTES` on the CPU (they stay in cache between the operations on them), of
    :data:`ACCELERATOR_BLOCK_BYTES` on a GPU.
    """
    block_bytes = DENSE_BLOCK_BYTES if device.type == "cpu" else ACCELERATOR_BLOCK_BYTES
    return max(1, block_bytes // (n_cols * itemsize))


def prepare_cost(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    cost: str,
    *,
    dtype: torch.dtype,
    device: torch.device,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    params: dict | None = None,
    product_out: torch.Tensor | None = None,
) -> PointCloudCost:
    """Build the cost between ``x`` and ``y`` rescaled to [0, 1].

    ``"cosine"`` follows MatchCLOT's ``OT_matching``: with the cosine distance ``d = 1 - cos``, the cost is
    ``(d - min d + 1) / (max d - min d + 1)`` (shift so that the smallest entry is 1, then divide by the largest),
    which lies in (0, 1] and keeps epsilon comparable with MatchCLOT's ``reg=0.01``. ``"sqeuclidean"`` is the squared
    Euclidean distance divided by its largest entry, computed on both clouds moved to their common centre and unit
    scale (which leaves it unchanged, and keeps float32 from losing far-off or tiny clouds to rounding). The
    extremes are found in one tiled pass over the products; ``params`` (from :meth:`PointCloudCost.params`) skips
    that pass and reproduces a stored cost exactly (for the same points or any subset of them). With
    ``product_out`` (an ``N × M`` buffer), that pass is one tile written into it and ``raw_affine`` says how to turn
    it into ``-C``, so that a dense solver need not compute the product twice.
    """
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    x = torch.as_tensor(x).detach()  # the cost is never differentiated: tensors that require grad are fine
    y = torch.as_tensor(y).detach()
    frame = None
    if cost == "sqeuclidean" and (params is None or "magnitude" in params):
        # A stored cost without a frame (written before frames were recorded) is on the points as given.
        if params is not None:
            frame = (float(params["magnitude"]), np.asarray(params["centre"], np.float64), float(params["radius"]))
            if frame[1].shape != (x.shape[1],):
                raise ValueError(
                    f"the stored cost's centre has {frame[1].size} dimensions, the points {x.shape[1]}: pass the "
                    "embeddings the cost was computed on"
                )
        x, y, frame = _centred_unit_scale(x.to(device=device), y.to(device=device), frame)
    if cost == "cosine":
        # Directions taken in float64 after dividing each point by its largest coordinate: the cosine does not see
        # a point's scale, but a float32 norm of values ~1e19 overflows (and of ~1e-22 underflows) to a zero vector.
        x = _unit_rows(x.to(device=device, dtype=torch.float64))
        y = _unit_rows(y.to(device=device, dtype=torch.float64))
    x = x.to(device=device, dtype=dtype)
    y = y.to(device=device, dtype=dtype)
    zeros_x = torch.zeros(x.shape[0], dtype=dtype, device=device)
    zeros_y = torch.zeros(y.shape[0], dtype=dtype, device=device)
    if cost == "cosine":
        # The rows are unit vectors (_unit_rows); zero vectors (e.g. cells with no counts) have no direction and
        # stay zero: they get cosine 0 with everything.
        geometry = PointCloudCost(x, y, cost, 0.0, 1.0, zeros_x, zeros_y)  # -C = <x, y> until rescaled
        if params is None:
            low, high, row_max = _tile_extremes(geometry, memory_budget, product_out)  # of the cosine similarity
            span = high - low + 1.0
            params = {"offset": (1.0 + high) / span, "scale": 1.0 / span}
            if product_out is not None:
                geometry.raw_affine = (params["scale"], -params["offset"])
                geometry.raw_row_max = row_max
    else:
        sq_x = (x * x).sum(1)
        sq_y = (y * y).sum(1)
        geometry = PointCloudCost(x, y, cost, 0.0, 2.0, sq_x, sq_y)
        if params is None:
            low, _, row_max = _tile_extremes(geometry, memory_budget, product_out)  # -max of the squared distance
            largest = max(-low, 0.0)
            # |x|² + |y|² - 2<x, y> carries rounding of order eps · (|x|² + |y|²): a largest distance below that is
            # zero (all points coincide), and dividing by it would blow the rounding up to the whole cost.
            noise = 64 * torch.finfo(dtype).eps * float(sq_x.max() + sq_y.max())
            largest = largest if largest > noise else 1.0
            params = {"offset": 0.0, "scale": 2.0 / largest}
            if product_out is not None:
                geometry.raw_affine = (1.0 / largest, 0.0)
                geometry.raw_row_max = row_max
        norm = 2.0 / params["scale"]
        geometry.row = sq_x / norm
        geometry.col = sq_y / norm
        geometry.frame = frame
    geometry.offset = float(params["offset"])
    geometry.scale = float(params["scale"])
    return geometry


def _unit_rows(points: torch.Tensor) -> torch.Tensor:
    """Each row divided by its largest absolute coordinate, then by its norm (zero rows stay zero)."""
    tiny = torch.finfo(points.dtype).tiny
    # Two reductions instead of abs(): no temporary as large as the points (the caller's, which stay unchanged).
    largest = torch.maximum(points.amax(dim=1, keepdim=True), -points.amin(dim=1, keepdim=True))
    points = points / largest.clamp_min(tiny)
    return points.div_(points.norm(dim=1, keepdim=True).clamp_min(tiny))


def _centred_unit_scale(
    x: torch.Tensor, y: torch.Tensor, frame: tuple[float, np.ndarray, float] | None = None
) -> tuple[torch.Tensor, torch.Tensor, tuple[float, np.ndarray, float]]:
    """Both clouds as ``(x / magnitude - centre) / radius`` in float64: at their common centre, largest norm 1.

    The squared-Euclidean cost is divided by its largest entry, so neither a common translation nor a common scale
    changes it; but ``|x|² + |y|² - 2<x, y>`` of clouds far from the origin loses the distances to rounding (an
    offset of 1000 on unit-spread data in float32 made every point look alike), and tiny values underflow. Dividing
    by the largest absolute value first keeps sums and norms of values near float64's limit from overflowing.
    ``frame`` (``(magnitude, centre, radius)``, from a stored cost) is applied instead of computed; it is returned.
    """
    x, y = x.to(torch.float64), y.to(torch.float64)
    if frame is None:
        magnitude = float(torch.maximum(x.abs().max(), y.abs().max())) or 1.0
        unit_x, unit_y = x / magnitude, y / magnitude
        centre = (unit_x.sum(0) + unit_y.sum(0)) / (x.shape[0] + y.shape[0])
        radius = float(torch.maximum((unit_x - centre).norm(dim=1).max(), (unit_y - centre).norm(dim=1).max()))
        frame = (magnitude, centre.cpu().numpy(), radius or 1.0)
    magnitude, centre, radius = frame
    shift = torch.as_tensor(centre, dtype=torch.float64, device=x.device)
    return (x / magnitude - shift) / radius, (y / magnitude - shift) / radius, frame


def _tile_extremes(
    geometry: PointCloudCost, memory_budget: int, product_out: torch.Tensor | None = None
) -> tuple[float, float, torch.Tensor | None]:
    """Smallest and largest entry of ``-C`` before rescaling, by row tiles.

    With ``product_out``, ``-C`` is written into it and each row's largest entry is returned too (else None).
    """
    n_rows, n_cols = geometry.shape
    if product_out is not None:
        step = max(1, PRODUCT_BLOCK_BYTES // (n_cols * geometry.x.element_size()))
        row_max = torch.empty(n_rows, dtype=product_out.dtype, device=product_out.device)
        lows = []
        for start in range(0, n_rows, step):
            rows = slice(start, min(start + step, n_rows))
            tile = geometry.neg_cost_tile(rows.start, rows.stop, out=product_out[rows])
            # Two reductions, not torch.aminmax(dim=1): that one is 10x slower on CPU (measured, torch 2.13).
            torch.amax(tile, dim=1, out=row_max[rows])
            lows.append(tile.amin())
        return torch.stack(lows).min().item(), row_max.max().item(), row_max
    # Blocks of a strip of rows, each reduced while in cache on the CPU (see strip_layout).
    step, width = strip_layout(geometry.shape, geometry.x.element_size(), memory_budget, geometry.x.device)
    buffer = torch.empty(step * width, dtype=geometry.x.dtype, device=geometry.x.device)
    column_bias = -geometry.col
    low = torch.tensor(torch.inf, dtype=buffer.dtype, device=buffer.device)
    high = -low
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        row_bias = (geometry.row[start:stop] + geometry.offset)[:, None]
        for j0 in range(0, n_cols, width):
            j1 = min(j0 + width, n_cols)
            block = buffer[: (stop - start) * (j1 - j0)].view(stop - start, j1 - j0)
            geometry.shifted_block(slice(start, stop), slice(j0, j1), geometry.scale, column_bias, out=block)
            block_low, block_high = torch.aminmax(block.sub_(row_bias))
            low, high = torch.minimum(block_low, low), torch.maximum(block_high, high)
    return float(low), float(high), None


def empty_array(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised array; on Linux CPUs with one torch thread, large ones are mapped with their pages populated.

    A fresh 400 MB kernel is a fifth of a 10k solve in page faults. Measured (seconds to allocate and write it once):
    on one thread, first-touch faults 0.20-0.21 (torch's allocator, 4 kB pages) and 0.35-0.53 (numpy, which asks for
    transparent huge pages: the kernel compacts memory to find them), against 0.15-0.16 for a mapping populated in
    one system call (``MAP_POPULATE``), whatever the memory's fragmentation. That system call runs on one core: with
    two threads, first-touch faults taken by both writers cost 0.11 against its 0.15, and the whole 10k solve on two
    threads takes 0.57 s instead of 0.63 (medians of four).
    """
    numpy_dtype = np.float32 if dtype == torch.float32 else np.float64
    n_bytes = int(np.prod(shape)) * np.dtype(numpy_dtype).itemsize
    populate = device.type == "cpu" and n_bytes >= POPULATE_BYTES and hasattr(mmap, "MAP_POPULATE")
    if populate and torch.get_num_threads() == 1:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
        mapping = mmap.mmap(-1, n_bytes, flags=flags)
        # numpy keeps the mapping alive as long as the array (and the tensor sharing its memory) lives.
        return torch.from_numpy(np.frombuffer(mapping, dtype=numpy_dtype).reshape(shape))
    return torch.empty(shape, dtype=dtype, device=device)


def _buffer(buffer: torch.Tensor | None, n_rows: int, n_cols: int, like: torch.Tensor) -> torch.Tensor:
    """A ``n_rows × n_cols`` work array, reusing ``buffer``'s memory when it is large enough."""
    if buffer is None or buffer.numel() < n_rows * n_cols:
        return empty_array((n_rows, n_cols), like.dtype, like.device)
    return buffer.view(-1)[: n_rows * n_cols].view(n_rows, n_cols)
