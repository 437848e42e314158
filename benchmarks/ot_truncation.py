"""Would a truncated (sparse) kernel pay on the planted benchmark? Density, lost mass and matrix-vector time.

    .venv/bin/python benchmarks/ot_truncation.py [--sizes 2000 5000 10000] [--epsilons 0.01 0.001] [--threads 2]
    .venv/bin/python benchmarks/ot_truncation.py --solve [--sizes ...] [--modes dense tiled] [--threads 2]

Schmitzer (2019, "Stabilized sparse scaling algorithms for entropy regularized transport") keeps, at each
epsilon-scaling stage, only the kernel entries whose log-plan under the current potentials is within ``T`` of the
largest (``(f_i + g_j - C_ij) / epsilon > -T`` after the row maximum is subtracted), and iterates on that sparse
kernel. This script measures, on bench_match_ot.py's problem (dim 64, sigma 2.5, MatchCLOT's [0, 1] cosine cost),
what that truncation keeps and loses against the converged float64 plan (mumatch's dense solver to an L1 error of
1e-5):

- ``final``: entries kept by the converged potentials themselves (the best case);
- ``previous stage``: entries kept by the potentials converged at ``4 · epsilon`` (what a scaling scheme has when it
  truncates for the next stage), scored by the mass of the final plan that falls outside them.

Then one Sinkhorn iteration's work (``K v`` and ``Kᵀ u``) on the dense float32 kernel against a CSR kernel (and the
CSR of its transpose) with the pattern that keeps all but 1e-4 of the mass, in torch with ``--threads`` threads.
Prints a markdown table.

``--solve`` times ``mm.ot.sinkhorn`` at the pipeline's epsilon (0.001, tol 1e-3) with its truncated stages
(``truncate=True``, the default) and without, in the same process: seconds (median of ``--repeats``), iterations,
truncated stages, the L1 marginal error recomputed in float64 from the potentials, and how many rows' argmax agree.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from ot_peers import planted  # noqa: E402

import mumatch as mm  # noqa: E402

THRESHOLDS = (5, 8, 10, 12, 15, 20, 25)
LOST_TARGET = 1e-4
ROW_TILE = 1000
REPEATS = 5


def log_plan(
    x: np.ndarray, y: np.ndarray, result: mm.ot.SinkhornResult, rows: slice, product: np.ndarray | None = None
) -> np.ndarray:
    """``(f + g - C) / epsilon`` of ``rows``, float64 (``product``: ``x[rows] @ y.T`` when already computed)."""
    product = x[rows] @ y.T if product is None else product
    negative_cost = result.cost["scale"] * product - result.cost["offset"]
    return (result.f[rows, None] + result.g[None, :] + negative_cost) / result.epsilon


def truncation_profile(
    x: np.ndarray, y: np.ndarray, final: mm.ot.SinkhornResult, guide: mm.ot.SinkhornResult
) -> list[dict]:
    """Per threshold: kept fraction, largest row count and the final plan's mass outside the kept entries."""
    kept = {t: 0 for t in THRESHOLDS}
    widest = {t: 0 for t in THRESHOLDS}
    lost = {t: 0.0 for t in THRESHOLDS}
    total = 0.0
    for start in range(0, x.shape[0], ROW_TILE):
        rows = slice(start, min(start + ROW_TILE, x.shape[0]))
        product = x[rows] @ y.T
        plan = np.exp(log_plan(x, y, final, rows, product))
        # The guide's potentials at the final epsilon (its own plan is exp((f + g - C) / (4 epsilon))); the cost's
        # offset is the same for every entry and leaves each row's threshold where it is.
        guide_log = (guide.f[rows, None] + guide.g[None, :] + guide.cost["scale"] * product) / final.epsilon
        guide_log -= guide_log.max(axis=1, keepdims=True)
        total += plan.sum()
        for t in THRESHOLDS:
            keep = guide_log > -t
            kept[t] += int(keep.sum())
            widest[t] = max(widest[t], int(keep.sum(axis=1).max()))
            lost[t] += float(plan[~keep].sum())
    size = x.shape[0] * y.shape[0]
    return [
        {"threshold": t, "density": kept[t] / size, "widest_row": widest[t], "lost": lost[t] / total}
        for t in THRESHOLDS
    ]


def iteration_times(
    x: np.ndarray, y: np.ndarray, final: mm.ot.SinkhornResult, threshold: float
) -> tuple[float, float, float]:
    """Seconds for ``K v`` + ``Kᵀ u`` on the dense float32 kernel and on its truncation at ``threshold``; density."""
    log_k = np.concatenate(
        [log_plan(x, y, final, slice(s, min(s + ROW_TILE, x.shape[0]))) for s in range(0, x.shape[0], ROW_TILE)]
    )
    log_k -= log_k.max(axis=1, keepdims=True)
    dense = torch.from_numpy(np.exp(log_k).astype(np.float32))
    keep = torch.from_numpy(log_k > -threshold)
    del log_k
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        sparse = (dense * keep).to_sparse_csr()
        sparse_t = (dense * keep).T.contiguous().to_sparse_csr()
    density = float(keep.float().mean())
    v = torch.rand(y.shape[0])
    u = torch.rand(x.shape[0])

    def clock(step) -> float:
        step()
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    dense_s = clock(lambda: (torch.mv(dense, v), torch.mv(dense.T, u)))
    sparse_s = clock(lambda: (torch.mv(sparse, v), torch.mv(sparse_t, u)))
    return dense_s, sparse_s, density


def marginal_error(x: np.ndarray, y: np.ndarray, result: mm.ot.SinkhornResult) -> tuple[float, np.ndarray]:
    """L1 error of rows and columns of the plan recomputed in float64, and each row's argmax."""
    rows, cols, argmax = np.empty(x.shape[0]), np.zeros(y.shape[0]), np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], ROW_TILE):
        tile = slice(start, min(start + ROW_TILE, x.shape[0]))
        log_p = log_plan(x, y, result, tile)
        argmax[tile] = log_p.argmax(axis=1)
        plan = np.exp(log_p)
        rows[tile] = plan.sum(axis=1)
        cols += plan.sum(axis=0)
    return float(np.abs(rows - 1 / x.shape[0]).sum() + np.abs(cols - 1 / y.shape[0]).sum()), argmax


def solve_table(sizes: list[int], modes: list[str], repeats: int, seed: int) -> None:
    """Truncated stages against the whole kernel at the pipeline's epsilon."""
    print("| N | mode | truncate | time (s) | iterations | truncated stages | marginal error (L1) | argmax agreement |")
    print("|--:|:--|:--|--:|--:|--:|--:|--:|")
    for n in sizes:
        x, y = planted(n, seed)
        for mode in modes:
            outcomes = {}
            for truncate in (True, False):
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    result = mm.ot.sinkhorn(x, y, epsilon=0.001, max_iter=5000, mode=mode, truncate=truncate)
                    times.append(time.perf_counter() - start)
                error, argmax = marginal_error(x, y, result)
                outcomes[truncate] = (float(np.median(times)), result, error, argmax)
            agreement = float((outcomes[True][3] == outcomes[False][3]).mean())
            for truncate, (seconds, result, error, _) in outcomes.items():
                print(
                    f"| {n} | {result.mode} | {truncate} | {seconds:.3g} | {result.n_iter} | {result.truncated_stages} "
                    f"| {error:.2g} | {agreement:.4f} |",
                    flush=True,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 10000])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.01, 0.001])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--solve", action="store_true", help="time the solver with and without truncated stages")
    parser.add_argument("--modes", nargs="+", default=["dense", "tiled"], choices=["dense", "tiled", "auto"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.solve:
        solve_table(args.sizes, args.modes, args.repeats, args.seed)
        return
    print(
        "| N | ε | T | kept (final potentials) | mass lost (final) | kept (previous stage's potentials) | widest row "
        "| mass lost (previous stage) | K v + Kᵀ u dense (ms) | same, CSR (ms) |"
    )
    print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|", flush=True)
    for n in args.sizes:
        x, y = planted(n, args.seed)
        for epsilon in args.epsilons:
            # A start well above epsilon, as float32's default.
            solve = dict(dtype="float64", tol=1e-5, max_iter=20_000, mode="dense", memory_budget=2**34)
            final = mm.ot.sinkhorn(x, y, epsilon=epsilon, epsilon_start=max(epsilon, 0.0125), **solve)
            guide = mm.ot.sinkhorn(x, y, epsilon=4 * epsilon, epsilon_start=max(4 * epsilon, 0.0125), **solve)
            profile = truncation_profile(x, y, final, guide)
            best = truncation_profile(x, y, final, final)
            enough = next((p["threshold"] for p in profile if p["lost"] <= LOST_TARGET), None)
            timing = iteration_times(x, y, final, enough) if enough is not None else None
            for p, b in zip(profile, best, strict=True):
                timed = timing is not None and p["threshold"] == enough
                dense_ms = f"{1e3 * timing[0]:.1f}" if timed else ""
                sparse_ms = f"{1e3 * timing[1]:.1f}" if timed else ""
                print(
                    f"| {n} | {epsilon:g} | {p['threshold']} | {b['density']:.4f} | {b['lost']:.1e} "
                    f"| {p['density']:.4f} | {p['widest_row']} | {p['lost']:.1e} | {dense_ms} | {sparse_ms} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
