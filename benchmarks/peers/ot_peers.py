"""One entropic-OT solve on the planted-correspondence benchmark of bench_match_ot.py, in this process.

Runs a peer solver (POT, GeomLoss, ott-jax) with .venv-peers/bin/python, or mumatch's solver with .venv/bin/python,
on the same data (generated here from the seed), and writes a JSON result:

    python benchmarks/peers/ot_peers.py --solver pot_matchclot --n 2000 --out result.json [--argmax-out rows.npy]

Problem: x standard normal (N × 64), y = x + sigma · noise, both L2-normalised; cost = MatchCLOT's OT_matching cost
``C = (d - min d + 1) / (max d - min d + 1)`` with ``d = 1 - cos``; epsilon = 0.01 on C; uniform marginals. Peers
whose API takes a squared Euclidean cost get ``|x - y|² = 2 d`` and the epsilon that gives the same plan
(``epsilon · 2 · span`` with ``span = max d - min d + 1``; GeomLoss's ``|x - y|² / 2`` gets ``epsilon · span``),
since an additive constant in the cost does not change an entropic plan.

Reported: ``solve_s`` (the solve alone, data and cost included for solvers that need a dense cost, as a user pays
it), ``n_iter`` where the solver exposes it, ``marginal_error`` = L1 error of rows + columns of the returned plan,
recomputed here in float64, and ``top1`` = fraction of rows whose largest entry is the planted partner; for mumatch
also ``sparsify_s`` (building the sparse plan that match_ot stores) and ``solve_peak_rss_mb`` (the process's peak
before the evaluation).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time

import numpy as np

DIM = 64
SIGMA = 2.5
EPSILON = 0.01
TOL = 1e-3
TILE_ROWS = 1000
# Entries per tile when a plan is evaluated from potentials (64 MB of float64), so that the evaluation, which runs
# after the solve in the same process, stays below the solvers' own memory at every N.
EVAL_TILE_ENTRIES = 2**23


def planted(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors x_i and y_i = normalise(x_i + sigma · noise): row i of y is the partner of row i of x."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM))
    y = x + SIGMA * rng.standard_normal((n, DIM))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return x, y


def cosine_extremes(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Smallest and largest cosine similarity, tile by tile."""
    low, high = np.inf, -np.inf
    for start in range(0, x.shape[0], TILE_ROWS):
        tile = x[start : start + TILE_ROWS] @ y.T
        low, high = min(low, tile.min()), max(high, tile.max())
    return float(low), float(high)


def evaluate_potentials(x, y, log_plan_tile) -> dict:
    """Marginal error and row argmax of a plan given as a function of a row range returning log P (float64)."""
    n_rows, n_cols = x.shape[0], y.shape[0]
    rows = np.empty(n_rows)
    cols = np.zeros(n_cols)
    argmax = np.empty(n_rows, dtype=np.int64)
    step = max(1, EVAL_TILE_ENTRIES // n_cols)
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        log_plan = log_plan_tile(start, stop)
        argmax[start:stop] = log_plan.argmax(axis=1)
        plan = np.exp(log_plan)
        rows[start:stop] = plan.sum(axis=1)
        cols += plan.sum(axis=0)
    error = np.abs(rows - 1 / n_rows).sum() + np.abs(cols - 1 / n_cols).sum()
    return {"marginal_error": float(error), "argmax": argmax}


def evaluate_potentials_on_device(x, y, f, g, offset: float, scale: float, device: str) -> dict:
    """:func:`evaluate_potentials` for mumatch's potentials, in float64 torch on ``device`` (a GPU: seconds at 100k)."""
    import torch

    xt, yt = (torch.as_tensor(a, dtype=torch.float64, device=device) for a in (x, y))
    ft, gt = (torch.as_tensor(a, dtype=torch.float64, device=device) for a in (f, g))
    n_rows, n_cols = xt.shape[0], yt.shape[0]
    rows = torch.empty(n_rows, dtype=torch.float64, device=device)
    cols = torch.zeros(n_cols, dtype=torch.float64, device=device)
    argmax = torch.empty(n_rows, dtype=torch.int64, device=device)
    step = max(1, 16 * EVAL_TILE_ENTRIES // n_cols)
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        log_plan = (ft[start:stop, None] + gt[None, :] - (offset - scale * (xt[start:stop] @ yt.T))) / EPSILON
        argmax[start:stop] = log_plan.argmax(dim=1)
        plan = log_plan.exp_()
        rows[start:stop] = plan.sum(dim=1)
        cols += plan.sum(dim=0)
    error = (rows - 1 / n_rows).abs().sum() + (cols - 1 / n_cols).abs().sum()
    return {"marginal_error": float(error), "argmax": argmax.cpu().numpy()}


def evaluate_dense(plan: np.ndarray) -> dict:
    plan = np.asarray(plan, dtype=np.float64)
    n_rows, n_cols = plan.shape
    error = np.abs(plan.sum(1) - 1 / n_rows).sum() + np.abs(plan.sum(0) - 1 / n_cols).sum()
    return {"marginal_error": float(error), "argmax": plan.argmax(axis=1)}


def matchclot_cost(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """MatchCLOT's OT_matching cost from its cosine similarity matrix (float64, dense), step by step as it does."""
    sim_matrix = x @ y.T
    cost = -sim_matrix + 1
    cost -= cost.min()
    cost += 1
    cost = cost / cost.max()
    return cost


def load_mumatch_ot():
    """``mumatch.ot`` alone (torch, numpy, scipy), without the package's AnnData/scanpy/scvi-tools imports.

    The solver's memory is measured as a peer's is: with the imports it needs, not a whole analysis stack.
    """
    import importlib
    import sys
    import types
    from pathlib import Path

    source = Path(__file__).resolve().parents[2] / "src" / "mumatch"
    if "mumatch" not in sys.modules:
        stub = types.ModuleType("mumatch")
        stub.__path__ = [str(source)]
        sys.modules["mumatch"] = stub
    return importlib.import_module("mumatch.ot")


def warm_up(solver: str, device: str) -> None:
    """Start the device (CUDA context, kernels) before the clock runs: the first call on a GPU pays for it."""
    if device == "cpu":
        return
    x, y = planted(256, 1)
    if solver.startswith("mumatch"):
        load_mumatch_ot().sinkhorn(x, y, epsilon=EPSILON, tol=TOL, device=device)
    elif solver.startswith(("pot_log", "geomloss")):
        import torch

        torch.ones(1, device=device).sum().item()
    elif solver == "ott_online":
        import jax

        jax.numpy.ones(1).sum().block_until_ready()


def solve(
    solver: str,
    x: np.ndarray,
    y: np.ndarray,
    span: float,
    high: float,
    device: str = "cpu",
    memory_budget: int | None = None,
) -> dict:
    """Run one solver on ``device`` (``"cpu"``, or ``"cuda"`` for the torch solvers); timing, iterations, evaluation."""
    n = x.shape[0]
    notes = []
    if solver in ("mumatch", "mumatch_tiled", "reference"):
        mm = load_mumatch_ot()

        kwargs = {"epsilon": EPSILON, "tol": TOL, "device": device, "memory_budget": memory_budget}
        if solver == "mumatch_tiled":
            kwargs["mode"] = "tiled"
        if solver == "reference":
            kwargs.update({"dtype": "float64", "tol": 1e-6, "max_iter": 20000, "memory_budget": 8 * 2**30})
            notes.append("converged float64 reference: mumatch dense, tol 1e-6 (L1)")
        start = time.perf_counter()
        result = mm.sinkhorn(x, y, **kwargs)
        solve_s = time.perf_counter() - start
        geometry = (result.cost["offset"], result.cost["scale"])
        sparse_record = {}
        if solver != "reference":
            # What match_ot adds to the solve: the sparse plan (default: 99.9 % of each row's mass, ≤ 1000 per row).
            start = time.perf_counter()
            sparse = mm.sparsify_plan(
                x, y, result.f, result.g, result.epsilon, result.cost, device=device, memory_budget=memory_budget
            )
            sparse_record = {
                "sparsify_s": time.perf_counter() - start,
                "nnz_per_row": sparse.plan.nnz / n,
                "sparse_top1": float((sparse.plan.argmax(axis=1).A1 == np.arange(n)).mean()),
            }
            del sparse
        solve_peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if device != "cpu":
            import torch

            sparse_record["solve_gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20  # before the evaluation

        def log_plan_tile(lo, hi):
            cost = geometry[0] - geometry[1] * (x[lo:hi] @ y.T)
            return (result.f[lo:hi, None] + result.g[None, :] - cost) / EPSILON

        if device == "cpu":
            out = evaluate_potentials(x, y, log_plan_tile)
        else:
            out = evaluate_potentials_on_device(x, y, result.f, result.g, *geometry, device)
        out.update({"n_iter": result.n_iter, "mode": result.mode, "reported_error": result.marginal_error})
        out.update({**sparse_record, "solve_peak_rss_mb": solve_peak_rss_mb})
    elif solver == "pot_matchclot":
        import ot

        start = time.perf_counter()
        cost = matchclot_cost(x, y)
        a = np.ones(n) / n
        plan, log = ot.sinkhorn(a, a, reg=0.01, M=cost, numItermax=5000, log=True)
        solve_s = time.perf_counter() - start
        out = evaluate_dense(plan)
        out["n_iter"] = int(log.get("niter", -1))
        notes.append(
            "ot.sinkhorn(reg=0.01, numItermax=5000) as MatchCLOT's OT_matching calls it (default stopThr 1e-9)"
        )
    elif solver == "pot_log_torch":
        import torch

        import ot

        start = time.perf_counter()
        xt = torch.as_tensor(x, dtype=torch.float32, device=device)
        yt = torch.as_tensor(y, dtype=torch.float32, device=device)
        cost = (1 + high - xt @ yt.T) / span
        a = torch.full((n,), 1.0 / n, device=device)
        # POT stops on the L2 norm of the column error, checked every 10 iterations; L1 ≈ √n · L2 for spread errors.
        plan, log = ot.bregman.sinkhorn_log(a, a, cost, EPSILON, numItermax=5000, stopThr=TOL / math.sqrt(n), log=True)
        solve_s = time.perf_counter() - start
        out = evaluate_dense(plan.double().cpu().numpy())
        out["n_iter"] = int(log.get("niter", -1))
        notes.append("ot.bregman.sinkhorn_log, torch float32, stopThr = 1e-3/sqrt(n) on its L2 error")
    elif solver == "pot_lazy":
        import ot

        reg = EPSILON * 2 * span
        start = time.perf_counter()
        f, g, log = ot.bregman.empirical_sinkhorn(
            x, y, reg, metric="sqeuclidean", numIterMax=5000, stopThr=TOL, isLazy=True, batchSize=TILE_ROWS, log=True
        )
        solve_s = time.perf_counter() - start

        def log_plan_tile(lo, hi):
            sq = np.maximum(2 - 2 * (x[lo:hi] @ y.T), 0)
            return f[lo:hi, None] + g[None, :] - sq / reg

        out = evaluate_potentials(x, y, log_plan_tile)
        out["n_iter"] = 10 * len(log.get("err", []))
        notes.append("ot.bregman.empirical_sinkhorn(isLazy=True), float64 numpy, L1 row error <= 1e-3 every 10 its")
    elif solver in ("geomloss_tensorized", "geomloss_online"):
        import torch
        from geomloss import SamplesLoss

        backend = solver.removeprefix("geomloss_")
        eps_geom = EPSILON * span  # GeomLoss's p=2 cost is |x - y|² / 2 = d
        start = time.perf_counter()
        xt = torch.as_tensor(x, dtype=torch.float32, device=device)
        yt = torch.as_tensor(y, dtype=torch.float32, device=device)
        loss = SamplesLoss(
            "sinkhorn", p=2, blur=math.sqrt(eps_geom), scaling=0.9, debias=False, potentials=True, backend=backend
        )
        f_pot, g_pot = loss(xt, yt)
        solve_s = time.perf_counter() - start
        f_np, g_np = f_pot.double().cpu().numpy().ravel(), g_pot.double().cpu().numpy().ravel()

        def log_plan_tile(lo, hi):
            half_sq = np.maximum(1 - x[lo:hi] @ y.T, 0)
            return (f_np[lo:hi, None] + g_np[None, :] - half_sq) / eps_geom - 2 * math.log(n)

        out = evaluate_potentials(x, y, log_plan_tile)
        out["n_iter"] = -1
        notes.append(
            "SamplesLoss('sinkhorn', p=2, blur=sqrt(eps), scaling=0.9, debias=False): its own annealing, no tolerance"
        )
    elif solver == "ott_online":
        import jax

        jax.config.update("jax_enable_x64", False)
        from ott.geometry import pointcloud
        from ott.problems.linear import linear_problem
        from ott.solvers.linear import sinkhorn

        eps_ott = EPSILON * 2 * span  # ott's SqEuclidean is |x - y|² = 2 d
        start = time.perf_counter()
        geom = pointcloud.PointCloud(
            jax.numpy.asarray(x, dtype="float32"), jax.numpy.asarray(y, dtype="float32"), epsilon=eps_ott,
            batch_size=TILE_ROWS,
        )  # fmt: skip
        solver_ott = sinkhorn.Sinkhorn(threshold=TOL, norm_error=1, max_iterations=5000, inner_iterations=10)
        result = solver_ott(linear_problem.LinearProblem(geom))
        f_np = np.asarray(result.f, dtype=np.float64)
        g_np = np.asarray(result.g, dtype=np.float64)
        solve_s = time.perf_counter() - start

        def log_plan_tile(lo, hi):
            sq = np.maximum(2 - 2 * (x[lo:hi] @ y.T), 0)
            return (f_np[lo:hi, None] + g_np[None, :] - sq) / eps_ott

        out = evaluate_potentials(x, y, log_plan_tile)
        out["n_iter"] = int(result.n_iters)
        notes.append("ott PointCloud(batch_size=1000) online, Sinkhorn(threshold=1e-3, norm_error=1), float32 jax CPU")
    else:
        raise ValueError(f"unknown solver {solver!r}")
    out.update({"solve_s": solve_s, "notes": notes})
    if device != "cpu" and "torch" in sys.modules:
        import torch

        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solver", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--argmax-out", default=None)
    parser.add_argument("--device", default="cpu", help="cuda: the torch solvers on the GPU (ott-jax: jax's default)")
    parser.add_argument("--memory-budget", type=float, default=None, help="mumatch's memory_budget in GiB")
    args = parser.parse_args()
    x, y = planted(args.n, args.seed)
    low, high = cosine_extremes(x, y)
    span = high - low + 1
    warm_up(args.solver, args.device)
    budget = None if args.memory_budget is None else int(args.memory_budget * 2**30)
    result = solve(args.solver, x, y, span, high, args.device, budget)
    argmax = result.pop("argmax")
    result.update(
        {
            "solver": args.solver,
            "n": args.n,
            "seed": args.seed,
            "top1": float((argmax == np.arange(args.n)).mean()),
            "span": span,
            "device": args.device,
        }
    )
    if args.argmax_out:
        np.save(args.argmax_out, argmax)
    with open(args.out, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
