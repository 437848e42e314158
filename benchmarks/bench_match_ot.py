"""Entropic OT on a planted correspondence: mumatch's solver against the peers a user could pick instead.

    lane 1 .venv/bin/python benchmarks/bench_match_ot.py --sizes 2000 10000 [--solvers ...] [--threads 1]
        [--results FILE] [--table-only]

Every solve runs in its own process (benchmarks/peers/ot_peers.py; peers with .venv-peers' Python, ours with
.venv's) with ``--threads`` BLAS/torch threads (1 by default: run the whole script in a benchmark lane, which pins it
to one core); its peak RSS comes from ``os.wait4`` on that child. ``--lock auto`` also takes
``/tmp/mumatch-heavy.lock`` around heavy solves (the lanes make that unnecessary, so it is off by default).
Results are appended to a JSON-lines file, so sizes can be run in several sittings; the markdown table is printed
from all of them that ran with the same thread count (records before the flag existed ran with 2 threads). Top-1
agreement is with the row argmax of a converged float64 plan (``reference``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peers import HEAVY_LOCK, PEERS_PYTHON, THREAD_VARIABLES, _wait  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "benchmarks" / "peers" / "ot_peers.py"
OURS = ("mumatch", "mumatch_tiled", "reference")
PEERS = ("pot_matchclot", "pot_log_torch", "pot_lazy", "geomloss_tensorized", "geomloss_online", "ott_online")
DEFAULT_THREADS = 1
RESULTS = ROOT / "benchmarks" / "results" / "match_ot.jsonl"
ARGMAX_DIR = ROOT / "benchmarks" / "results" / "match_ot_argmax"
# Peers are skipped where an estimate from their measured 10k rows (1 thread; time and memory grow as N²) exceeds
# 30 minutes or 24 GB: at 10k, POT as MatchCLOT calls it took 51 s and 4.3 GB, POT log-domain (torch) 173 s and
# 2.0 GB, POT lazy 195 s, GeomLoss tensorized 80 s and 1.8 GB, GeomLoss online (KeOps) 574 s, ott-jax online 44 s.
PEER_AT_10K = {  # (seconds, GB) at N = 10k; None: not the limiting resource
    "pot_matchclot": (51, 4.3),
    "pot_log_torch": (173, 2.0),
    "pot_lazy": (195, None),
    "geomloss_tensorized": (80, 1.8),
    "geomloss_online": (574, None),
    "ott_online": (44, None),
}


def peer_skip(solver: str, n: int) -> str | bool:
    """Why a peer is skipped at size ``n`` (False: it runs)."""
    seconds, gigabytes = PEER_AT_10K[solver]
    growth = (n / 10_000) ** 2
    if gigabytes is not None and gigabytes * growth > 24:
        return f"skipped: ~{gigabytes * growth:.0f} GB estimated from the 10k row (> 24 GB)"
    if seconds * growth > 1800:
        return f"skipped: ~{seconds * growth / 60:.0f} min estimated from the 10k row (> 30 min)"
    return False


SKIP = {
    **{solver: (lambda n, solver=solver: peer_skip(solver, n)) for solver in PEER_AT_10K},
    "reference": lambda n: n > 20_000 and "skipped: dense float64 reference > 3 GB",
    "mumatch_tiled": lambda n: n > 20_000 and "(mumatch is tiled at this size)",
}


def is_heavy(solver: str, n: int) -> bool:
    """Runs over ~1 minute or ~2 GB on this machine (they wait for the shared heavy-job lock)."""
    return n >= 20_000 or (solver not in OURS and n >= 10_000) or solver == "pot_lazy"


def run_one(solver: str, n: int, timeout: float, lock: str = "never", threads: int = DEFAULT_THREADS) -> dict:
    """One solve in its own process; returns the driver's JSON plus peak RSS and wall time."""
    python = sys.executable if solver in OURS else str(PEERS_PYTHON)
    ARGMAX_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mumatch_ot_") as directory:
        out = Path(directory) / "result.json"
        argmax = ARGMAX_DIR / f"{solver}_{n}.npy"
        command = [python, str(DRIVER), "--solver", solver, "--n", str(n)]
        if lock == "always" or (lock == "auto" and is_heavy(solver, n)):
            command = ["flock", str(HEAVY_LOCK), *command]
        command += ["--out", str(out), "--argmax-out", str(argmax)]
        env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(threads))}
        start = time.perf_counter()
        with (Path(directory) / "stderr").open("wb") as stderr:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT, env=env)
            returncode, peak_rss_mb, timed_out = _wait(process, timeout)
        wall = time.perf_counter() - start
        if returncode != 0 or not out.exists():
            tail = (Path(directory) / "stderr").read_text(errors="replace")[-600:]
            reason = f"timed out after {timeout:.0f} s" if timed_out else f"failed: {tail.strip().splitlines()[-1:]}"
            return {"solver": solver, "n": n, "error": reason, "peak_rss_mb": peak_rss_mb, "wall_s": wall}
        result = json.loads(out.read_text())
    result.update({"peak_rss_mb": peak_rss_mb, "wall_s": wall})
    return result


def exp_throughput(threads: int, n_entries: int = 50_000_000) -> float:
    """Measured float32 ``exp`` evaluations per second (in place, torch, ``threads`` threads)."""
    torch.set_num_threads(threads)
    values = torch.rand(n_entries)
    values.exp_()
    start = time.perf_counter()
    for _ in range(3):
        values.neg_().exp_()
    return 3 * n_entries / (time.perf_counter() - start)


def agreement(solver: str, n: int) -> float | None:
    """Fraction of rows whose argmax equals the reference plan's."""
    reference = ARGMAX_DIR / f"reference_{n}.npy"
    mine = ARGMAX_DIR / f"{solver}_{n}.npy"
    if not reference.exists() or not mine.exists():
        return None
    return float((np.load(reference) == np.load(mine)).mean())


def table(results: list[dict], throughput: float | None) -> str:
    """The markdown table of all results (latest per solver and size)."""
    latest = {(r["solver"], r["n"]): r for r in results}
    lines = [
        "| N | solver | time (s) | + sparse plan (s) | peak RSS (MB) | iterations | marginal error (L1) | top-1 | "
        "top-1 agreement with reference | time / iteration (s) | log-domain bound / iteration (s) | "
        "time / iteration ÷ bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (solver, n), r in sorted(latest.items(), key=lambda item: (item[0][1], (OURS + PEERS).index(item[0][0]))):
        bound = 2 * n * n / throughput if throughput else None
        bound_cell = f"{bound:.3g}" if bound else ""
        if "error" in r or "skipped" in r:
            lines.append(f"| {n} | {solver} | {r.get('error') or r.get('skipped')} | | | | | | | | {bound_cell} | |")
            continue
        iterations = r.get("n_iter", -1)
        per_iteration = r["solve_s"] / iterations if iterations and iterations > 0 else None
        fraction = f"{per_iteration / bound:.2g}" if per_iteration and bound else ""
        agree = agreement(solver, n)
        sparsify = f"{r['sparsify_s']:.3g}" if "sparsify_s" in r else ""
        lines.append(
            f"| {n} | {solver}{' (' + r['mode'] + ')' if 'mode' in r else ''} | {r['solve_s']:.3g} | {sparsify} | "
            f"{r['peak_rss_mb']:.0f} | {iterations if iterations >= 0 else 'n/a'} | {r['marginal_error']:.2g} | "
            f"{r['top1']:.4f} | {'' if agree is None else f'{agree:.4f}'} | "
            f"{'' if per_iteration is None else f'{per_iteration:.3g}'} | {bound_cell} | {fraction} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 10_000, 20_000, 50_000, 100_000])
    parser.add_argument("--solvers", nargs="+", default=list(OURS + PEERS))
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--lock", choices=["auto", "always", "never"], default="never")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="BLAS/torch threads of every solve")
    args = parser.parse_args()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for n in args.sizes:
            # The reference first, so that agreement can be computed.
            for solver in sorted(args.solvers, key=lambda s: s != "reference"):
                skip = SKIP.get(solver, lambda n: False)(n)
                if skip:
                    record = {"solver": solver, "n": n, "skipped": skip}
                else:
                    record = run_one(solver, n, args.timeout, args.lock, args.threads)
                record["threads"] = args.threads
                print(json.dumps(record), flush=True)
                with args.results.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
    results = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    results = [r for r in results if r.get("threads", 2) == args.threads]
    throughput = exp_throughput(args.threads)
    print(f"\nexp throughput (float32, {args.threads} threads): {throughput / 1e6:.0f} M/s\n")
    print(table(results, throughput))


if __name__ == "__main__":
    main()
