"""Entropic optimal transport between two point clouds: a stabilised, memory-bounded Sinkhorn solver.

Two regimes, chosen by the memory budget:

- **dense**: the stabilised kernel ``K = exp((f ⊕ g - C) / ε)`` is stored once and iterated on with two matrix-vector
  products per iteration (``u = a / K v``, ``v = b / Kᵀ u``). When the scalings ``u, v`` leave ``[e^-L, e^L]`` they
  are absorbed into the potentials ``f, g`` and the kernel is rebuilt (Schmitzer 2019, "Stabilized sparse scaling
  algorithms for entropy regularized transport problems", SIAM J. Sci. Comput. 41(3)). An iteration is a pass over
  memory, no ``exp``: tens of times faster than a log-domain iteration, which evaluates an ``exp`` per entry.
- **tiled**: when ``N × M`` does not fit the budget, every iteration recomputes the cost in strips of rows from the
  embeddings (one matrix product per cache-sized block), updates ``f`` exactly with a row logsumexp shifted by the
  previous iteration's potentials and accumulates the column sums of the plan in the same pass, so one pass over
  the strips is one full Sinkhorn iteration and nothing ``N × M`` is ever stored.

A kernel rebuild is itself one exact log-domain row update: every row of the kernel is divided by its largest entry
(so it holds a 1 and no division by zero can occur) and the row's mass goes into the row scaling. Epsilon-scaling
(annealing epsilon geometrically from a value where the kernel's exponents fit float32's range) keeps columns from
underflowing at small epsilon. On the CPU, the stages after the first iterate on a **truncated** kernel: the few
entries per row the previous stage's potentials leave the plan, stored sparse (``_truncation.py``), with the dense
solver's steps; the answer is then checked, and if need be finished, on the whole kernel (:func:`_run_stages`).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .._checks import check_positive
from ._cost import (
    LOG2E,
    SHIFTED_SUM_RANGE,
    PointCloudCost,
    _buffer,
    check_points,
    dense_block_rows,
    empty_array,
    float64_array,
    prepare_cost,
    resolve_device,
    resolve_dtype,
    resolve_memory_budget,
    strip_layout,
)
from ._parallel import map_row_ranges, sum_in_order
from ._truncation import TruncatedCost, truncate_cost

# Largest |log| of a scaling before it is absorbed into the potentials: e^30 keeps every product of kernel entries
# (≤ 1) and scalings far inside float32's range (e^88), e^200 does the same for float64.
ABSORB_LOG_BOUND = {torch.float32: 30.0, torch.float64: 200.0}
# Largest kernel exponent (cost range / epsilon) the first epsilon-scaling stage may have: exp(-50) is a normal
# float32, so no row or column of the first kernel underflows to zero. float64 could start at 500, but a start that
# far above a small target converges in fewer iterations and truncates the stages after it: at epsilon 0.001, 67 →
# 42 iterations and 0.40 → 0.13 s (2k), 56 → 38 and 1.33 → 0.50 s (5k); at 0.01 both start at the target.
EXPONENT_LIMIT = {torch.float32: 50.0, torch.float64: 50.0}
# Epsilon is divided by 4 at each scaling stage (Schmitzer 2019 uses factors of 2 to 4).
EPSILON_DECAY = 0.25
# Anderson acceleration of the balanced iterations (Walker & Ni 2011, "Anderson acceleration for fixed-point
# iterations", SIAM J. Numer. Anal. 49(4)): the next column potential is the combination of the last few Sinkhorn
# updates whose residuals cancel best (a least-squares problem of this many columns, O(M) work per iteration).
# Iterations to an L1 error of 1e-3 on the benchmark's problem (bench_match_ot.py), plain / over-relaxed (w = 1.4,
# the former default) / Anderson of depth 2, 3, 5: 35 / 22 / 12, 11, 11 at N = 2k; 17 / 10 / 8, 8, 8 at 10k. An
# accelerated step that raises the marginal error is replaced by the plain Sinkhorn step it stood for (plain Sinkhorn
# always converges) and the history starts again. Unbalanced solves iterate plainly.
ANDERSON_DEPTH = 4
# Below this many times the rounding level of the iterates, a change of the residual is noise (see _AndersonMixer).
NOISE_FACTOR = 4.0
# Column sums of a tiled pass below this are rounding (their strips' entries underflowed): recomputed exactly (see
# _TiledSolver.log_column_sums). float32's smallest normal is 1.2e-38; a sum of a few denormal entries is below 1e-30.
RELIABLE_SUM = {torch.float32: 1e-30, torch.float64: 1e-290}
# Intermediate stages stop at this marginal error (or at the final tolerance when that is looser).
STAGE_TOL = 1e-2
# Truncations of the final stage's kernel whose check on the whole cost may fail (the first, then one around the
# potentials it reached) before that stage is finished on the whole kernel; a stalled one goes there at once.
TRUNCATION_ATTEMPTS = 2
# A stage on a truncated kernel that lowers its error by less than this fraction over this many iterations has
# stalled (see _SparseSolver): 10 % per 50 iterations lets the slow tails of healthy solves go on (float64 to a tight
# tol, unbalanced solves without Anderson acceleration took 200-250 iterations to halve it).
STALL_WINDOW = 50
STALL_PROGRESS = 0.1
# The final truncated stage solves to this fraction of tol, so that the dropped entries' mass (~1e-7 of it) and the
# check's rounding leave the whole cost's error within tol (solved to tol itself, a check at 1.002e-3 against 1e-3
# failed); a wider margin costs iterations in slow tails (0.5: a float64 solve to tol 1e-5 ran out of 600).
CHECK_MARGIN = 0.9


@dataclass
class SinkhornResult:
    """Dual potentials and diagnostics of an entropic OT solve.

    The plan is ``P[i, j] = exp((f[i] + g[j] - C[i, j]) / epsilon)``, with ``C`` the rescaled cost described by
    ``cost`` (see :func:`mumatch.ot.plan_tile` and :func:`mumatch.ot.sparsify_plan`).

    Attributes
    ----------
    f, g
        Dual potentials of the rows (N,) and columns (M,), float64.
    epsilon
        The entropic regularisation reached.
    tau
        KL relaxation of the marginals, ``None`` for balanced OT.
    cost
        Kind and affine constants of the rescaled cost.
    n_iter
        Sinkhorn iterations, all stages together (and, after ``mode="auto"`` solved again without the stored
        kernel, both attempts together, as ``time_s`` and ``n_rebuilds``).
    marginal_error
        L1 error of the column marginals after an exact row update, i.e. of the whole plan's marginals (balanced:
        against ``b``; relaxed: against their fixed-point values ``b · exp(-(g - ε log b) / tau)``, as the rows'
        are ``a · exp(-(f - ε log a) / tau)``, relative to their mass). In float32 at epsilon ≤ 1e-4 the plan
        recomputed from the returned potentials can be ~30 % further from the marginals than reported (the
        kernel's rounding); pass ``dtype="float64"`` there.
    converged
        Whether ``marginal_error <= tol``.
    time_s
        Wall time of the solve.
    mode
        ``"dense"`` or ``"tiled"``.
    n_rebuilds
        Kernel rebuilds (absorptions and stage changes) in dense mode; passes over the tiles in tiled mode. Truncated
        stages add their own rebuilds and their passes over the tiles (finding the entries, checking the answer).
    epsilon_schedule
        The epsilon of every stage.
    truncated_stages
        Stage solves run on a truncated kernel (see ``truncate`` in :func:`sinkhorn`).
    """

    f: np.ndarray
    g: np.ndarray
    epsilon: float
    tau: float | None
    cost: dict
    n_iter: int
    marginal_error: float
    converged: bool
    time_s: float
    mode: str
    n_rebuilds: int
    epsilon_schedule: list[float] = field(default_factory=list)
    truncated_stages: int = 0

    def diagnostics(self) -> dict:
        """Scalar diagnostics, ready for ``.uns``."""
        return {
            "n_iter": int(self.n_iter),
            "marginal_error": float(self.marginal_error),
            "converged": bool(self.converged),
            "time_s": float(self.time_s),
            "mode": self.mode,
            "n_rebuilds": int(self.n_rebuilds),
            "epsilon_schedule": np.asarray(self.epsilon_schedule, dtype=np.float64),
            "truncated_stages": int(self.truncated_stages),
        }


def epsilon_schedule(epsilon: float, cost_range: float, dtype: torch.dtype, epsilon_start: float | None) -> list[float]:
    """Stages of epsilon-scaling, ending at ``epsilon``.

    The first stage is ``epsilon_start`` or, by default, the smallest epsilon at which the kernel's exponents
    ``cost_range / epsilon`` stay within :data:`EXPONENT_LIMIT`; epsilon is then divided by 4 per stage. Stages less
    than 1.5 × ``epsilon`` are dropped, so that a problem that is already safe runs one stage.
    """
    start = epsilon_start if epsilon_start is not None else cost_range / EXPONENT_LIMIT[dtype]
    stages = []
    current = start
    while current > 1.5 * epsilon:
        stages.append(current)
        current *= EPSILON_DECAY
    return [*stages, epsilon]


def sinkhorn(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    epsilon: float = 0.01,
    cost: str = "cosine",
    a: np.ndarray | None = None,
    b: np.ndarray | None = None,
    tau: float | None = None,
    tol: float = 1e-3,
    max_iter: int = 1000,
    epsilon_start: float | None = None,
    mode: str = "auto",
    dtype: str = "float32",
    device: str = "auto",
    memory_budget: int | None = None,
    truncate: bool = True,
) -> SinkhornResult:
    """Entropic optimal transport between two point clouds.

    Solves ``min_P <P, C> + epsilon * KL(P | a ⊗ b)`` with marginals ``a`` and ``b`` (or, with ``tau``, marginals
    relaxed by ``tau * KL(P1 | a) + tau * KL(Pᵀ1 | b)``), for the cost ``C`` between ``x`` and ``y`` rescaled to
    [0, 1]. The plan is ``exp((f + g - C) / epsilon)`` (the potentials include ``epsilon · log a`` and
    ``epsilon · log b``).

    Parameters
    ----------
    x
        First point cloud, ``N × d``.
    y
        Second point cloud, ``M × d``.
    epsilon
        Entropic regularisation (on the [0, 1] cost); must be > 0. 0.01 is MatchCLOT's ``reg``.
    cost
        ``"cosine"`` (``1 - cos`` rescaled as MatchCLOT does: shifted so that its minimum is 1, then divided by its
        maximum) or ``"sqeuclidean"`` (divided by its maximum).
    a, b
        Marginals (positive, summing to 1); uniform by default.
    tau
        Strength of the KL relaxation of the marginals (unbalanced OT); ``None`` enforces them (balanced).
    tol
        Stop when the L1 marginal error (see :attr:`SinkhornResult.marginal_error`) is ≤ ``tol``.
    max_iter
        Most Sinkhorn iterations, all stages together.
    epsilon_start
        First epsilon of the epsilon-scaling schedule; ``None`` starts where the kernel's exponents reach 50, the
        smallest epsilon safe in float32, which means no scaling at MatchCLOT's epsilon (the schedule used is
        returned in :attr:`SinkhornResult.epsilon_schedule`).
    mode
        ``"dense"`` stores the ``N × M`` kernel, ``"tiled"`` never does, ``"auto"`` stores it when it fits
        ``memory_budget``, and solves again without it (with a ``RuntimeWarning``) when the stored kernel cannot
        hold the plan (an unbalanced plan of almost no mass, small ``tau``).
    dtype
        ``"float32"`` (default) or ``"float64"``.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (a string or a
        :class:`torch.device`).
    memory_budget
        Bytes for ``N × M`` work arrays: the dense kernel, or one row tile. ``None`` (default): a quarter of the
        memory available on the device, at most 2 GiB, so that the kernel is stored up to ~23k × 23k cells in
        float32 (a stored kernel makes each iteration a pass over memory instead of a product and an ``exp``).
    truncate
        Solve the epsilon-scaling stages after the first on a truncated kernel (on the CPU): the entries the previous
        stage's potentials place within ``e^-20`` of their row's largest, stored sparse when they fit a quarter of
        ``memory_budget`` (on top of a dense kernel, which stays allocated; Schmitzer 2019). The final answer is
        checked on the whole cost and finished there when the dropped entries matter or a stage stalls. At small
        epsilon this makes most iterations sparse matrix-vector products (planted benchmark, 10k × 10k, epsilon
        0.001: 0.07 % of the entries). ``False`` iterates on the whole kernel.

    Returns
    -------
    The potentials and diagnostics, see :class:`SinkhornResult`.

    Examples
    --------
    >>> import numpy as np
    >>> import mumatch as mm
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(100, 8))
    >>> result = mm.ot.sinkhorn(x, x + 0.1 * rng.normal(size=x.shape), epsilon=0.01)
    >>> result.converged
    True
    """
    x, y = check_points(x, y)
    check_positive(epsilon, "epsilon")
    check_positive(tol, "tol")
    check_positive(tau, "tau", allow_none=True)
    check_positive(epsilon_start, "epsilon_start", allow_none=True)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int | np.integer) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not isinstance(truncate, bool | np.bool_):
        raise ValueError(f"truncate must be True or False, got {truncate!r}")
    if mode not in ("auto", "dense", "tiled"):
        raise ValueError(f"mode must be 'auto', 'dense' or 'tiled', got {mode!r}")
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    memory_budget = resolve_memory_budget(memory_budget, torch_device)
    n_rows, n_cols = x.shape[0], y.shape[0]
    log_a = _log_marginal(a, n_rows, "a", torch_dtype, torch_device)
    log_b = _log_marginal(b, n_cols, "b", torch_dtype, torch_device)

    start_time = time.perf_counter()
    itemsize = torch.finfo(torch_dtype).bits // 8
    dense = mode == "dense" or (mode == "auto" and n_rows * n_cols * itemsize <= memory_budget)
    problem = _Problem(
        x,
        y,
        cost,
        log_a,
        log_b,
        tau,
        tol,
        max_iter,
        epsilon,
        epsilon_start,
        truncate,
        torch_dtype,
        torch_device,
        memory_budget,
    )
    geometry, schedule, state = _solve(problem, dense)
    if dense and mode == "auto" and not _finite(state):
        # A stored kernel cannot hold a plan of almost no mass (an unbalanced plan with a small tau: ~1e-55, below
        # float32's range); the tiled passes recompute such sums in the log domain.
        warnings.warn(
            f"the stored {dtype} kernel could not hold the plan (its potentials left the range); solved again "
            "without storing it (mode='tiled')",
            RuntimeWarning,
            stacklevel=2,
        )
        dense = False
        dense_state = state
        geometry, schedule, state = _solve(problem, dense)
        # time_s covers both attempts: so do the counts.
        state = (*state[:2], state[2] + dense_state[2], state[3], state[4] + dense_state[4], state[5])
    f, g, n_iter, error, n_rebuilds, truncated_stages = state
    if not _finite(state):
        # Finite embeddings can still overflow the cost (e.g. squared distances of values ~1e20 in float32), and an
        # unbalanced plan can carry almost no mass (small tau: ~1e-55, below float32's range).
        remedy = "pass dtype='float64' (or mode='tiled' for such a plan)" if dense else "pass dtype='float64'"
        raise FloatingPointError(
            f"the Sinkhorn potentials are not finite: the {cost} cost or the plan's mass left {dtype}'s range (an "
            f"unbalanced plan with a small tau can carry almost no mass); rescale the embeddings (e.g. standardise "
            f"them), or {remedy}"
        )
    return SinkhornResult(
        f=f.double().cpu().numpy(),
        g=g.double().cpu().numpy(),
        epsilon=float(epsilon),
        tau=None if tau is None else float(tau),
        cost=geometry.params(),
        n_iter=n_iter,
        marginal_error=error,
        converged=bool(error <= tol),
        time_s=time.perf_counter() - start_time,
        mode="dense" if dense else "tiled",
        n_rebuilds=n_rebuilds,
        epsilon_schedule=schedule,
        truncated_stages=truncated_stages,
    )


@dataclass(frozen=True)
class _Problem:
    """What :func:`sinkhorn` was asked to solve, checked and resolved."""

    x: np.ndarray | torch.Tensor
    y: np.ndarray | torch.Tensor
    cost: str
    log_a: torch.Tensor
    log_b: torch.Tensor
    tau: float | None
    tol: float
    max_iter: int
    epsilon: float
    epsilon_start: float | None
    truncate: bool
    dtype: torch.dtype
    device: torch.device
    memory_budget: int


def _solve(problem: _Problem, dense: bool) -> tuple[PointCloudCost, list[float], tuple]:
    """One solve of :func:`sinkhorn`'s problem, on a stored kernel or not: the cost, schedule and state."""
    with torch.no_grad():
        # In dense mode the kernel's memory first receives the product that the cost's rescaling needs.
        kernel = empty_array((problem.x.shape[0], problem.y.shape[0]), problem.dtype, problem.device) if dense else None
        geometry = prepare_cost(
            problem.x,
            problem.y,
            problem.cost,
            dtype=problem.dtype,
            device=problem.device,
            memory_budget=problem.memory_budget,
            product_out=kernel,
        )
        cost_range = 1.0 - geometry.scale if problem.cost == "cosine" else 1.0  # the cosine cost lies in [scale, 1]
        schedule = epsilon_schedule(problem.epsilon, cost_range, problem.dtype, problem.epsilon_start)
        solver_class = _DenseSolver if dense else _TiledSolver
        solver = solver_class(geometry, problem.log_a, problem.log_b, problem.tau, problem.memory_budget)
        # On a GPU a pass over the whole kernel costs little; the truncated stages are for the CPU.
        truncate = problem.truncate and problem.device.type == "cpu"
        state = _run_stages(solver, kernel, schedule, problem.tol, problem.max_iter, truncate)
        del kernel, solver
    return geometry, schedule, state


def _finite(state: tuple) -> bool:
    """Whether a solve's potentials are finite."""
    f, g = state[:2]
    return bool(torch.isfinite(f).all() and torch.isfinite(g).all())


def anderson_coefficients(differences: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Least-squares coefficients γ minimising ‖residual − differences·γ‖, tolerant of nearly collinear columns.

    On the CPU, LAPACK's rank-revealing QR driver (``gelsy``) solves it. CUDA's ``lstsq`` only has ``gels``, which
    needs full column rank, so there the tall system is reduced by a QR on the device to its small triangular one
    (depth × depth), which the SVD driver ``gelsd`` solves on the CPU: the same minimiser, and no N-long copy per
    iteration.
    """
    if differences.device.type == "cpu":
        return torch.linalg.lstsq(differences, residual, driver="gelsy").solution
    return _least_squares_after_qr(differences, residual)


def _least_squares_after_qr(differences: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """:func:`anderson_coefficients` off the CPU: QR where the data are, the small triangular solve on the CPU."""
    q, r = torch.linalg.qr(differences)
    projected = q.mT @ residual
    # The rank cutoff LAPACK would use on the tall system (eps · its larger side), not that of the small one. The
    # triangle's singular values decide the rank, not a pivoted QR of it: gelsy's pivoting on two nearly equal
    # columns once dropped a third, independent one in the test suite (under load), missing the minimum by 3e-5.
    rcond = torch.finfo(differences.dtype).eps * max(differences.shape)
    solution = torch.linalg.lstsq(r.cpu(), projected.cpu(), rcond=rcond, driver="gelsd").solution
    return solution.to(differences.device)


class _AndersonMixer:
    """Anderson acceleration (type II) of a fixed-point iteration ``x ← F(x)`` over the last ``depth`` steps.

    :meth:`next` gets an iterate and its image and returns the next iterate: the image itself until two steps are
    known, then the combination ``Σ α_k F(x_k)`` (``Σ α_k = 1``) whose residuals ``Σ α_k (F(x_k) - x_k)`` have the
    least L2 norm. Sinkhorn's column update commutes with adding a constant to every potential, so the combination
    is well defined on the potentials themselves. With ``shift_invariant`` (a map that commutes with adding a
    constant, as Sinkhorn's), the combination's component along that constant is left to the plain step.
    :attr:`accelerated` says whether the last returned iterate was a combination (``False``: the plain image).
    """

    def __init__(self, depth: int, shift_invariant: bool = False) -> None:
        self.depth = depth
        self.shift_invariant = shift_invariant
        self.iterates: list[torch.Tensor] = []
        self.images: list[torch.Tensor] = []
        self.accelerated = False

    def reset(self) -> None:
        """Forget the history: the next step is a plain fixed-point step."""
        self.iterates, self.images = [], []

    def next(self, iterate: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """The next iterate after ``iterate``, whose image under the fixed-point map is ``image``."""
        self.accelerated = False
        if self.depth == 0:
            return image
        if not bool(torch.isfinite(image).all()):
            self.reset()  # LAPACK refuses non-finite input; the caller sees the plain step
            return image
        self.iterates.append(iterate.double())
        self.images.append(image.double())
        if len(self.iterates) > self.depth + 1:
            self.iterates.pop(0)
            self.images.pop(0)
        if len(self.iterates) < 2:
            return image
        images = torch.stack(self.images, dim=1)
        residuals = images - torch.stack(self.iterates, dim=1)
        differences = residuals.diff(dim=1)
        # Once the last step changed the residual by no more than the rounding of the iterates, the least squares
        # fits rounding noise (coefficients ~ residual / noise, an arbitrary extrapolation): take the plain step.
        rounding = torch.finfo(image.dtype).eps * math.sqrt(image.numel()) * float(images.abs().max())
        if float(torch.linalg.vector_norm(differences[:, -1])) <= NOISE_FACTOR * rounding:
            return image
        gamma = anderson_coefficients(differences, residuals[:, -1:])
        extrapolation = (images.diff(dim=1) @ gamma)[:, 0]
        if self.shift_invariant:
            # The residuals cannot see a constant added to every potential (the plan does not change), so nothing
            # bounds the extrapolation along that direction: drop it, or the potentials drift until float32 cannot
            # resolve f + g - C at small epsilon.
            extrapolation = extrapolation - extrapolation.mean()
        mixed = images[:, -1] - extrapolation
        if not bool(torch.isfinite(mixed).all()):
            self.reset()
            return image
        self.accelerated = True
        return mixed.to(image.dtype)


class _Solver:
    """What the dense and the tiled solvers share: marginals and relaxation."""

    def __init__(
        self,
        geometry: PointCloudCost,
        log_a: torch.Tensor,
        log_b: torch.Tensor,
        tau: float | None,
        memory_budget: int,
    ) -> None:
        self.geometry = geometry
        self.log_a = log_a
        self.a = log_a.exp()
        self.log_b = log_b
        self.b = log_b.exp()
        self.tau = tau
        self.memory_budget = memory_budget
        self.dtype = geometry.x.dtype
        self.tiny = torch.finfo(self.dtype).tiny
        self.buffer: torch.Tensor | None = None
        self.log_sums: torch.Tensor | None = None  # the tiled solver's log row sums of its last pass

    def ones(self, size: int, like: torch.Tensor) -> torch.Tensor:
        """A cached vector of ones."""
        if getattr(self, "_ones", None) is None or self._ones.numel() != size:
            self._ones = torch.ones(size, dtype=like.dtype, device=like.device)
        return self._ones

    def column_error(self, column_sums: torch.Tensor, g: torch.Tensor, epsilon: float) -> float:
        """L1 distance of the plan's column sums to the solution's for the column potential ``g``, relative to its mass.

        Balanced, the columns must sum to ``b`` (mass 1). Relaxed, with the plan ``exp((f + g - C) / ε)`` of the
        problem ``<P, C> + ε KL(P | a ⊗ b) + τ KL(P1 | a) + τ KL(Pᵀ1 | b)``, the fixed point has columns summing
        to ``b · exp(-(g - ε log b) / τ)`` (rows: ``a · exp(-(f - ε log a) / τ)``). The distance to this target,
        not the change of the columns in one iteration (small long before convergence when ``τ / (τ + ε)`` is near
        1), says how far the plan is from the solution; relative to the target's mass, so that ``tol`` means the
        same whether a relaxed plan keeps most of the mass or little of it.
        """
        b = self.b.to(column_sums.dtype)
        if self.tau is None:
            return (column_sums - b).abs().sum().item()
        # In float64 and relative to the largest target: with a small tau, (g - ε log b) / τ leaves float32's range
        # and exp of it would make the error inf / inf = NaN.
        log_target = self.log_b.double() - (g.double() - epsilon * self.log_b.double()) / self.tau
        shift = log_target.max()
        target = torch.exp(log_target - shift)
        distance = (column_sums.double() * torch.exp(-shift) - target).abs().sum() / target.sum()
        return distance.item()

    def exponent(self, epsilon: float) -> float:
        """The exponent of the scaling updates: 1 when balanced, ``tau / (tau + epsilon)`` when relaxed."""
        return 1.0 if self.tau is None else self.tau / (self.tau + epsilon)


class _TiledSolver(_Solver):
    """One pass over the row strips per iteration; nothing ``N × M`` is kept."""

    def run(self, schedule: list[float], tol: float, max_iter: int, g_start: torch.Tensor | None = None) -> tuple:
        """Run every stage from ``g_start`` (zero by default); return ``(f, g, n_iter, error, n_passes)``."""
        n_rows, n_cols = self.geometry.shape
        f = torch.zeros(n_rows, dtype=self.dtype, device=self.geometry.x.device)
        g = torch.zeros(n_cols, dtype=self.dtype, device=self.geometry.x.device) if g_start is None else g_start
        n_iter, error = 0, math.inf
        log_b64 = self.log_b.double()
        bound = ABSORB_LOG_BOUND[self.dtype]
        for stage, epsilon in enumerate(schedule):
            final = stage == len(schedule) - 1
            stage_tol = tol if final else max(tol, STAGE_TOL)
            lam = self.exponent(epsilon)
            mixer = _AndersonMixer(ANDERSON_DEPTH if self.tau is None else 0, shift_invariant=True)
            exact = True  # the previous potentials belong to another epsilon: no shift to reuse
            previous_error, plain_g = math.inf, None
            # The last iteration is the final epsilon's, and it ends on a row pass: the potentials returned belong
            # to that epsilon, f is exact for g and the error is theirs.
            while n_iter < (max_iter if final else max_iter - 1):
                f, column_sums = self.row_pass(f, g, epsilon, exact=exact)
                exact = False
                n_iter += 1
                # Underflowed columns recomputed (see log_column_sums), for the error as for the update.
                log_sums = self.log_column_sums(column_sums, f, g, epsilon)
                # The rows are exact for f: the columns' distance to their target is the plan's (see column_error).
                error = self.column_error(log_sums.exp(), g.double(), epsilon)
                if error <= stage_tol or n_iter >= max_iter:
                    break
                if error > previous_error:
                    mixer.reset()  # the last step made things worse: the next one is plain
                    if plain_g is not None:
                        # That step was accelerated: take the plain step it replaced instead.
                        g, plain_g = plain_g, None
                        continue
                previous_error = error
                # g ← ε log b - λ ε LSE_i((f - C) / ε), with LSE_i = log(column sum) - g / ε.
                if self.tau is None:
                    g_sinkhorn = epsilon * (log_b64 - log_sums) + g.double()
                else:
                    g_sinkhorn = epsilon * log_b64 + lam * (g.double() - epsilon * log_sums)
                g_next = mixer.next(g.double(), g_sinkhorn)
                plain_g = g_sinkhorn.to(self.dtype) if mixer.accelerated else None
                if plain_g is not None:
                    # An extrapolation beyond both the plain step's reach and the absorption bound is not trusted
                    # (it would be wasted, and at max_iter returned): take the plain step.
                    reach = max(bound * epsilon, (g_sinkhorn - g.double()).abs().max().item())
                    if (g_next - g.double()).abs().max().item() > reach:
                        mixer.reset()
                        g_next, plain_g = g_sinkhorn, None
                g = g_next.to(self.dtype)
        return f, g, n_iter, error, n_iter

    def log_column_sums(
        self, column_sums: torch.Tensor, f: torch.Tensor, g: torch.Tensor, epsilon: float
    ) -> torch.Tensor:
        """``log`` of the plan's column sums (float64); those a pass left below :data:`RELIABLE_SUM` are recomputed.

        A strip's entries are ``exp`` of exponents shifted by each row's own scale, so a column far from every row
        sums to zero or to a denormal in float32. Its log then says nothing (clamped, it moved ``g`` by
        ``-ε log 1e-300``, and an unbalanced solve's next row scale overflowed to inf and NaN). Those columns get
        their exact log-domain sum ``g / ε + LSE_i((f - C) / ε)``, a product with only their points.
        """
        unreliable = torch.nonzero(column_sums < RELIABLE_SUM[self.dtype]).flatten()
        log_sums = column_sums.clamp_min(torch.finfo(torch.float64).tiny).log()
        if unreliable.numel() == 0:
            return log_sums
        geometry = self.geometry
        columns = replace(geometry, y=geometry.y[unreliable], col=geometry.col[unreliable])
        n_rows = geometry.shape[0]
        # A tile's product, its float64 copy and the exponents: ~32 bytes per entry in float32.
        step = max(1, self.memory_budget // (4 * unreliable.numel() * (geometry.x.element_size() + 24)))
        exponents = torch.full((unreliable.numel(),), -math.inf, dtype=torch.float64, device=f.device)
        for start in range(0, n_rows, step):
            stop = min(start + step, n_rows)
            tile = columns.neg_cost_tile(start, stop).double().add_(f[start:stop, None].double())
            exponents = torch.logaddexp(exponents, torch.logsumexp(tile / epsilon, dim=0))
        log_sums[unreliable] = exponents + g[unreliable].double() / epsilon
        return log_sums

    def row_pass(
        self, f: torch.Tensor, g: torch.Tensor, epsilon: float, *, exact: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-domain row update of ``f`` and the column sums of the resulting plan.

        Strip by strip, each row is shifted by its log row sum of the previous pass unless ``exact``, or unless that
        shift leaves the row sums out of :data:`SHIFTED_SUM_RANGE`: then by its exact max. Returns the new ``f`` and
        the column sums.
        """
        geometry = self.geometry
        n_rows, n_cols = geometry.shape
        lam = self.exponent(epsilon)
        inv_epsilon = 1.0 / epsilon
        # The strips' exponents are in base 2 (see LOG2E); shifts and log sums are in natural units.
        alpha = geometry.scale * inv_epsilon * LOG2E
        column_bias = (g - geometry.col) * (inv_epsilon * LOG2E)
        itemsize = geometry.x.element_size()
        strip_rows, width = strip_layout(geometry.shape, itemsize, self.memory_budget, geometry.x.device)
        self.buffer = _buffer(self.buffer, strip_rows, n_cols, geometry.x).view(-1)
        column_ranges = [(j, min(j + width, n_cols)) for j in range(0, n_cols, width)]
        previous_log_sums = self.log_sums
        self.log_sums = torch.empty_like(f)
        low, high = SHIFTED_SUM_RANGE[self.dtype]
        f_new = torch.empty_like(f)
        strip_column_sums = torch.empty(n_cols, dtype=self.dtype, device=f.device)
        column_sums = torch.zeros(n_cols, dtype=torch.float64, device=f.device)
        for start in range(0, n_rows, strip_rows):
            stop = min(start + strip_rows, n_rows)
            rows, height = slice(start, stop), stop - start
            blocks = [self.buffer[height * j0 : height * j1].view(height, j1 - j0) for j0, j1 in column_ranges]
            row_constant = geometry.row_constant(start, stop, inv_epsilon)
            shift, row_sums = None, None
            if not exact and previous_log_sums is not None:
                shift = previous_log_sums[rows] - row_constant
                row_sums = self._exp_strip(blocks, column_ranges, rows, alpha, column_bias, shift)
            if shift is None or not bool(((row_sums >= low) & (row_sums <= high)).all()):
                shift = self._row_max(blocks, column_ranges, rows, alpha, column_bias)
                row_sums = self._exp_strip(blocks, column_ranges, rows, alpha, column_bias, shift, computed=True)
            row_shift = shift + row_constant
            self.log_sums[rows] = row_shift + row_sums.log()
            f_tile = epsilon * (self.log_a[rows] - lam * self.log_sums[rows])
            f_new[rows] = f_tile
            # exp(row_shift + f / epsilon) turns the strip into the stabilised kernel exp((f + g - C) / epsilon).
            row_scale = torch.exp(row_shift + f_tile * inv_epsilon)
            for (j0, j1), block in zip(column_ranges, blocks, strict=True):
                torch.mv(block.T, row_scale, out=strip_column_sums[j0:j1])
            column_sums += strip_column_sums
        return f_new, column_sums

    def _row_max(
        self, blocks: list[torch.Tensor], column_ranges: list, rows: slice, alpha: float, column_bias: torch.Tensor
    ) -> torch.Tensor:
        """Write the strip's shifted cost (base 2) into ``blocks`` and return each row's max (natural units)."""
        row_max = None
        for (j0, j1), block in zip(column_ranges, blocks, strict=True):
            self.geometry.shifted_block(rows, slice(j0, j1), alpha, column_bias, out=block)
            block_max = block.amax(dim=1)
            row_max = block_max if row_max is None else torch.maximum(row_max, block_max)
        return row_max / LOG2E

    def _exp_strip(
        self,
        blocks: list[torch.Tensor],
        column_ranges: list,
        rows: slice,
        alpha: float,
        column_bias: torch.Tensor,
        shift: torch.Tensor,
        computed: bool = False,
    ) -> torch.Tensor:
        """``exp(shifted cost - shift)`` into ``blocks`` (recomputed unless ``computed``); return the row sums.

        ``alpha`` and ``column_bias`` give the exponents in base 2, ``shift`` is in natural units.
        """
        row_sums = torch.zeros(blocks[0].shape[0], dtype=self.dtype, device=shift.device)
        ones = self.ones(max(j1 - j0 for j0, j1 in column_ranges), shift)
        shift = shift * LOG2E
        for (j0, j1), block in zip(column_ranges, blocks, strict=True):
            if not computed:
                self.geometry.shifted_block(rows, slice(j0, j1), alpha, column_bias, out=block)
            block.sub_(shift[:, None]).exp2_()
            # A matrix-vector product sums rows several times faster than tensor.sum on CPU (measured).
            row_sums += torch.mv(block, ones[: j1 - j0])
        return row_sums


class _DenseSolver(_Solver):
    """The stabilised kernel is stored; iterations are matrix-vector products."""

    def row_pass(
        self,
        g: torch.Tensor,
        epsilon: float,
        store: torch.Tensor,
        raw: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Build the kernel for ``g`` in ``store``, one row block at a time, with an exact log-domain row update.

        Each row of ``store`` becomes ``exp((g - C) / epsilon)`` divided by its largest entry, i.e. the stabilised
        kernel ``exp((f + g - C) / epsilon)`` of the returned potentials ``f``; the returned ``log u`` is the row
        scaling that makes the rows of the plan exact (``f + epsilon · log u`` is the updated potential), and the
        column sums are those of the plan ``diag(u) K``. With ``raw``, ``store`` already holds the product of the
        cost's first pass (``geometry.raw_affine`` and ``raw_row_max``) and ``g`` is zero.
        """
        n_rows, n_cols = self.geometry.shape
        lam = self.exponent(epsilon)
        f = torch.empty(n_rows, dtype=self.dtype, device=g.device)
        log_u = torch.empty_like(f)
        inv_epsilon = 1.0 / epsilon
        ones = self.ones(n_cols, g)
        step = self.block_rows()

        def rows_of(first: int, last: int) -> torch.Tensor:
            column_sums = torch.zeros(n_cols, dtype=torch.float64, device=g.device)
            for start in range(first, last, step):
                stop = min(start + step, last)
                tile = store[start:stop]
                # (g - C) / epsilon up to a per-row constant, minus each row's max: the exponents of the stable row
                # logsumexp. The first pass over the product knows the row maxima: two passes over the tile, not
                # four. The exponents are in base 2 (see LOG2E); row_shift is in natural units.
                if raw:
                    kappa, c0 = self.geometry.raw_affine
                    raw_max = self.geometry.raw_row_max[start:stop]
                    scale = kappa * inv_epsilon
                    # One pass, not sub_ then mul_.
                    torch.add((-scale * LOG2E * raw_max)[:, None], tile, alpha=scale * LOG2E, out=tile)
                    row_shift = raw_max * scale + c0 * inv_epsilon
                else:
                    self.geometry.shifted_tile(start, stop, inv_epsilon * LOG2E, g, out=tile)
                    row_max = tile.amax(dim=1)
                    tile.sub_(row_max[:, None])
                    row_shift = row_max / LOG2E + self.geometry.row_constant(start, stop, inv_epsilon)
                tile.exp2_()
                # A matrix-vector product sums rows several times faster than tensor.sum on CPU (measured).
                log_sums = row_shift + torch.mv(tile, ones).log()
                # The kernel keeps the potential -epsilon · row_shift; the exact update lives in the row scaling.
                f[start:stop] = -epsilon * row_shift
                log_u[start:stop] = self.log_a[start:stop] - lam * log_sums + row_shift
                column_sums += torch.mv(tile.T, log_u[start:stop].exp()).double()
            return column_sums

        column_sums = sum_in_order(map_row_ranges(rows_of, n_rows, step, g.device))
        return f, log_u, column_sums

    def block_rows(self) -> int:
        """Rows of the kernel per block (see :func:`dense_block_rows`)."""
        return dense_block_rows(self.geometry.shape[1], self.geometry.x.element_size(), self.geometry.x.device)

    def scaling_pass(
        self, kernel: torch.Tensor, v: torch.Tensor, f: torch.Tensor, epsilon: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The row update ``log u`` for the column scaling ``v`` and ``Kᵀ u`` of that ``u``, block by block.

        ``K v`` of a block and ``Kᵀ u`` of the same block are computed while it is in cache, so that an iteration
        reads the kernel once: 40 ms instead of 2 × 23 ms per iteration at N = 10k (measured, one thread).
        """
        lam = self.exponent(epsilon)
        kernel_v = torch.empty_like(f)
        u = torch.empty_like(f)
        step = self.block_rows()

        def rows_of(first: int, last: int) -> torch.Tensor:
            kernel_t_u = torch.zeros_like(v)
            for start in range(first, last, step):
                block = kernel[start : min(start + step, last)]
                rows = slice(start, start + block.shape[0])
                block_v = torch.mv(block, v, out=kernel_v[rows]).clamp_min_(self.tiny)
                # With potentials absorbed, the relaxed update is a · (K v)^-λ · exp((λ - 1) f / ε) (λ = 1:
                # balanced). Balanced, u = a / K v directly: a block's few small operations cost as much as its
                # products at 10k.
                if lam == 1.0:
                    torch.div(self.a[rows], block_v, out=u[rows])
                else:
                    torch.exp(self.log_a[rows] - lam * block_v.log() + (lam - 1.0) * f[rows] / epsilon, out=u[rows])
                kernel_t_u.addmv_(block.T, u[rows])
            return kernel_t_u

        kernel_t_u = sum_in_order(map_row_ranges(rows_of, kernel.shape[0], step, kernel.device))
        log_u = u.log()
        return log_u, kernel_t_u

    def stalled(self, n_iter: int, error: float) -> bool:
        """Whether to give up on the stage (never: Sinkhorn on the whole kernel converges)."""
        return False

    def run(
        self,
        schedule: list[float],
        tol: float,
        max_iter: int,
        kernel: torch.Tensor | TruncatedCost,
        g_start: torch.Tensor | None = None,
    ) -> tuple:
        """Run every stage in ``kernel``'s memory from ``g_start``; return ``(f, g, n_iter, error, n_rebuilds)``.

        The iterate is the column scaling ``log v`` on top of the absorbed potentials; one pass over the kernel
        gives the exact row scaling ``u`` for it and ``Kᵀ u``, hence the column error and the next Sinkhorn update.
        """
        n_rows, n_cols = self.geometry.shape
        device = self.geometry.x.device
        # The kernel's memory holds the cost's product until the first build from zero potentials.
        raw = self.geometry.raw_affine is not None and g_start is None
        f = torch.zeros(n_rows, dtype=self.dtype, device=device)
        g = torch.zeros(n_cols, dtype=self.dtype, device=device) if g_start is None else g_start
        bound = ABSORB_LOG_BOUND[self.dtype]
        n_iter, n_rebuilds, error = 0, 0, math.inf
        for stage, epsilon in enumerate(schedule):
            stage_tol = tol if stage == len(schedule) - 1 else max(tol, STAGE_TOL)
            lam = self.exponent(epsilon)
            mixer = _AndersonMixer(ANDERSON_DEPTH if self.tau is None else 0, shift_invariant=True)
            log_u = log_v = None
            rebuilt = True
            previous_error = math.inf
            plain_log_v = None  # the plain Sinkhorn step that an accelerated iterate replaced
            # The final stage's best iterate, returned if max_iter cuts the solve short after a worse step.
            final = stage == len(schedule) - 1
            best_error, best_state = math.inf, None
            while True:
                if log_v is None:
                    # (Re)build: the potentials absorb the scalings and the rows become exact for v = 1.
                    f, log_u, column_sums = self.row_pass(g, epsilon, store=kernel, raw=raw)
                    raw = False
                    n_rebuilds += 1
                    kernel_t_u = column_sums.to(self.dtype)
                    log_v = torch.zeros(n_cols, dtype=self.dtype, device=device)
                    mixer.reset()
                    previous_error, plain_log_v = math.inf, None
                    rebuilt = True
                column_marginal = log_v.exp() * kernel_t_u  # the plan's column sums; its rows are exact for f
                error = self.column_error(column_marginal, g + epsilon * log_v, epsilon)
                if not bool(torch.isfinite(torch.stack([f.sum(), g.sum(), log_u.sum(), log_v.sum()])).all()):
                    # The kernel cannot represent this plan (a sum left the range): iterating cannot bring it back,
                    # so the caller learns it now, not after max_iter (sinkhorn then solves it tiled or raises).
                    return f + epsilon * log_u, g + epsilon * log_v, n_iter, error, n_rebuilds
                if final and self.tau is None and error < best_error:
                    best_error, best_state = error, (f, g, log_u, log_v)
                if error <= stage_tol or n_iter >= max_iter or self.stalled(n_iter, error):
                    if error > best_error:
                        # Cut short after a step that made things worse (an accelerated one, before its retraction).
                        (f, g, log_u, log_v), error = best_state, best_error
                    break
                if error > previous_error:
                    mixer.reset()  # the last step made things worse: the next one is plain
                if plain_log_v is not None and error > previous_error:
                    # That step was accelerated: take the plain step it replaced instead.
                    next_log_v, plain_log_v = plain_log_v, None
                else:
                    previous_error = error
                    # The Sinkhorn column update; relaxed: b · (Kᵀu)^-λ · exp((λ - 1) g / ε) (λ = 1: balanced).
                    update = self.log_b - lam * kernel_t_u.clamp_min(self.tiny).log() + (lam - 1.0) * g / epsilon
                    next_log_v = mixer.next(log_v, update)
                    plain_log_v = update if mixer.accelerated else None
                    if plain_log_v is not None and next_log_v.abs().max().item() > bound:
                        mixer.reset()  # an extrapolation this far is not trusted: take the plain step
                        next_log_v, plain_log_v = update, None
                # Absorb large scalings, but take at least one step on a new kernel (progress on extreme columns).
                if not rebuilt and max(log_u.abs().max().item(), next_log_v.abs().max().item()) > bound:
                    g = g + epsilon * next_log_v
                    if self.tau is None:
                        g = g - g.mean()  # the plan does not see a common constant; keep the potentials small
                    log_v = None
                    continue
                log_v = next_log_v
                log_u, kernel_t_u = self.scaling_pass(kernel, log_v.exp(), f, epsilon)
                n_iter += 1
                rebuilt = False
            f, g = f + epsilon * log_u, g + epsilon * log_v
        return f, g, n_iter, error, n_rebuilds


class _SparseSolver(_DenseSolver):
    """The dense solver's iterations on a truncated kernel (:class:`TruncatedCost`): sparse matrix-vector products.

    A truncated kernel can lack a coupling with the required marginals (a column whose few kept rows all prefer other
    columns), and then Sinkhorn stalls: a stage whose error fell by less than :data:`STALL_PROGRESS` over
    :data:`STALL_WINDOW` iterations is given up, to be finished on the whole kernel (slow but steady progress, as in
    the tail of a float64 solve to a tight ``tol`` or an unbalanced one, goes on).
    """

    def run(self, *args, **kwargs) -> tuple:
        """:meth:`_DenseSolver.run`, watching for a stall."""
        self._checkpoint = (0, math.inf)
        return super().run(*args, **kwargs)

    def stalled(self, n_iter: int, error: float) -> bool:
        """Whether the error fell by less than :data:`STALL_PROGRESS` over the last :data:`STALL_WINDOW` iterations."""
        since, reference = self._checkpoint
        if n_iter - since < STALL_WINDOW:
            return False
        self._checkpoint = (n_iter, error)
        return error > (1.0 - STALL_PROGRESS) * reference

    def row_pass(
        self, g: torch.Tensor, epsilon: float, store: TruncatedCost, raw: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`_DenseSolver.row_pass`, on the kept entries: the kernel for ``g``, rows divided by their max."""
        lam = self.exponent(epsilon)
        exponents = (g[store.col] + store.neg_cost) / epsilon
        row_max = torch.segment_reduce(exponents, "max", offsets=store.crow)
        values = (exponents - row_max[store.row]).exp_()
        log_sums = row_max + torch.segment_reduce(values, "sum", offsets=store.crow).log()
        self.kernel, self.kernel_t = store.kernels(values)
        f = -epsilon * row_max
        log_u = self.log_a - lam * log_sums + row_max
        column_sums = torch.mv(self.kernel_t, log_u.exp()).double()
        return f, log_u, column_sums

    def scaling_pass(
        self, kernel: TruncatedCost, v: torch.Tensor, f: torch.Tensor, epsilon: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`_DenseSolver.scaling_pass`, with the kernel of the last :meth:`row_pass`."""
        lam = self.exponent(epsilon)
        kernel_v = torch.mv(self.kernel, v).clamp_min_(self.tiny)
        if lam == 1.0:
            u = self.a / kernel_v
        else:
            u = torch.exp(self.log_a - lam * kernel_v.log() + (lam - 1.0) * f / epsilon)
        return u.log(), torch.mv(self.kernel_t, u)


def _run_stages(
    primary: _DenseSolver | _TiledSolver,
    kernel: torch.Tensor | None,
    schedule: list[float],
    tol: float,
    max_iter: int,
    truncate: bool,
) -> tuple:
    """Solve every stage; those after the first on a truncated kernel where it fits the memory budget.

    Returns ``(f, g, n_iter, error, n_rebuilds, truncated_stages)``. A truncated stage starts from the previous
    stage's potentials, which also choose its entries (:func:`truncate_cost`). The final stage's answer is checked
    by one exact row update on the whole cost (a tiled pass): if the dropped entries put the marginals above
    ``tol``, the kernel is truncated again around the current potentials (at most :data:`TRUNCATION_ATTEMPTS` times),
    then the stage is finished on the whole kernel.
    """

    def full(stages: list[float], stage_tol: float, budget: int, g_start: torch.Tensor | None) -> tuple:
        if isinstance(primary, _DenseSolver):
            return primary.run(stages, stage_tol, budget, kernel, g_start=g_start)
        return primary.run(stages, stage_tol, budget, g_start=g_start)

    if not truncate or len(schedule) == 1:
        return (*full(schedule, tol, max_iter, None), 0)
    args = (primary.geometry, primary.log_a, primary.log_b, primary.tau, primary.memory_budget)
    sparse, exact = _SparseSolver(*args), _TiledSolver(*args)
    f, g, n_iter, error, n_rebuilds = full(schedule[:1], max(tol, STAGE_TOL), max_iter, None)
    truncated_stages = 0
    pattern = None
    for stage, epsilon in enumerate(schedule[1:], start=1):
        final = stage == len(schedule) - 1
        stage_tol = tol if final else max(tol, STAGE_TOL)
        sparse_tol = CHECK_MARGIN * tol if final else stage_tol
        solved = False
        g_stage = g  # where the whole kernel starts from if the truncated ones fail
        for attempt in range(TRUNCATION_ATTEMPTS if final else 1):
            if n_iter >= max_iter:
                break
            # The previous stage's entries hold the next one's; a failed check looks at the whole cost again.
            pattern = pattern.restrict(g, epsilon) if pattern is not None and attempt == 0 else None
            if pattern is None:
                pattern = truncate_cost(primary.geometry, g, epsilon, primary.memory_budget)
                n_rebuilds += 1
            if pattern is None:
                break
            f, g_sparse, stage_iter, error, stage_rebuilds = sparse.run(
                [epsilon], sparse_tol, max_iter - n_iter, pattern, g
            )
            n_iter, n_rebuilds = n_iter + stage_iter, n_rebuilds + stage_rebuilds
            truncated_stages += 1
            if not error <= sparse_tol and n_iter < max_iter:  # NaN too: a truncated kernel that lost the plan
                # Stalled. When the whole cost is as far from its marginals at these potentials, the truncation is
                # not what holds the stage back: the whole kernel goes on from them, else from the stage's start.
                _, column_sums = exact.row_pass(f, g_sparse, epsilon, exact=True)
                n_rebuilds += 1
                if exact.column_error(column_sums, g_sparse.double(), epsilon) <= 2.0 * error:
                    g_stage = g_sparse
                break
            g = g_stage = g_sparse
            if not final:
                solved = True
                break
            # The truncated problem is solved; the whole one's rows and columns say whether it is the answer.
            f, column_sums = exact.row_pass(f, g, epsilon, exact=True)
            error = exact.column_error(column_sums, g.double(), epsilon)
            n_rebuilds += 1
            if error <= tol:
                solved = True
                break
        if solved:
            continue
        if n_iter >= max_iter:
            # Out of iterations: the potentials still end on an exact row update at the final epsilon.
            f, column_sums = exact.row_pass(f, g, schedule[-1], exact=True)
            error = exact.column_error(column_sums, g.double(), schedule[-1])
            return f, g, n_iter, error, n_rebuilds + 1, truncated_stages
        f, g, stage_iter, error, stage_rebuilds = full([epsilon], stage_tol, max_iter - n_iter, g_stage)
        n_iter, n_rebuilds = n_iter + stage_iter, n_rebuilds + stage_rebuilds
    return f, g, n_iter, error, n_rebuilds, truncated_stages


def _log_marginal(
    weights: np.ndarray | None, size: int, argument: str, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The log of a marginal (uniform when None), checked to be positive and to sum to 1."""
    if weights is None:
        return torch.full((size,), -math.log(size), dtype=dtype, device=device)
    values = float64_array(weights)
    if values.shape != (size,):
        raise ValueError(f"'{argument}' must have one weight per point ({size}), got shape {values.shape}")
    if not np.isfinite(values).all() or (values <= 0).any():
        raise ValueError(f"'{argument}' must hold finite weights > 0")
    if not np.isclose(values.sum(), 1.0, rtol=1e-6):
        raise ValueError(f"'{argument}' must sum to 1, got {values.sum()!r}; divide it by its sum")
    return torch.as_tensor(np.log(values), dtype=dtype, device=device)
