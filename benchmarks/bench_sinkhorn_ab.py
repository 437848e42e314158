"""A/B of ``mm.ot.sinkhorn`` (or of ``mm.ot.sparsify_plan``) between source trees (e.g. an earlier commit and this one).

    git worktree add /tmp/before REV
    lane 0 .venv/bin/python benchmarks/bench_sinkhorn_ab.py --src /tmp/before/src src --n 10000 \
        [--mode dense] [--threads 1] [--repeats 4] [--alternations 3] [--epsilon 0.01] [--step sparsify] \
        [--results FILE]

The benchmark's planted problem (``peers/ot_peers.py``: N unit vectors in 64 dimensions, σ = 2.5, ε = 0.01 on the
[0, 1] cosine cost unless ``--epsilon``) is solved ``--repeats`` times per process, one process per source tree, the
trees alternating ``--alternations`` times, so that both see the same state of the host. ``--step sparsify`` solves
once and times the sparse plan built from the potentials (what ``match_ot`` adds to the solve) instead. The first
call of a process (imports, first allocations) is reported apart. Prints a markdown table; ``--results`` appends
every process's record as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, sys, time, torch
sys.path.insert(0, {peers!r})
torch.set_num_threads({threads})
import mumatch.ot as ot
from ot_peers import planted
x, y = planted({n}, 0)
times = []
if {step!r} == "sparsify":
    result = ot.sinkhorn(x, y, epsilon={epsilon}, tol=1e-3, mode={mode!r})
for _ in range({repeats}):
    start = time.perf_counter()
    if {step!r} == "sparsify":
        sparse = ot.sparsify_plan(x, y, result.f, result.g, result.epsilon, result.cost)
    else:
        result = ot.sinkhorn(x, y, epsilon={epsilon}, tol=1e-3, mode={mode!r})
    times.append(time.perf_counter() - start)
record = {{"times": times, "n_iter": result.n_iter, "error": result.marginal_error}}
if {step!r} == "sparsify":
    record["nnz_per_row"] = sparse.plan.nnz / {n}
print("__RESULT__" + json.dumps(record))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", nargs="+", required=True, help="source trees (folders holding mumatch/)")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--mode", choices=("auto", "dense", "tiled"), default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--alternations", type=int, default=3)
    parser.add_argument("--epsilon", type=float, default=0.01)
    parser.add_argument("--step", choices=("solve", "sparsify"), default="solve")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    code = CHILD.format(
        peers=str(ROOT / "benchmarks" / "peers"),
        threads=args.threads,
        n=args.n,
        repeats=args.repeats,
        mode=args.mode,
        epsilon=args.epsilon,
        step=args.step,
    )
    records = []
    for alternation in range(args.alternations):
        for src in args.src:
            env = {**os.environ, "PYTHONPATH": str(Path(src).resolve())}
            completed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
            lines = [line for line in completed.stdout.splitlines() if line.startswith("__RESULT__")]
            if not lines:
                sys.exit(f"{src} failed:\n{completed.stderr[-3000:]}")
            record = {"src": src, "alternation": alternation, "n": args.n, "mode": args.mode, "threads": args.threads}
            record.update({"epsilon": args.epsilon, "step": args.step})
            record.update(json.loads(lines[-1].removeprefix("__RESULT__")))
            records.append(record)
            if args.results:
                with args.results.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
    rows = []
    for src in args.src:
        mine = [record for record in records if record["src"] == src]
        later = [time for record in mine for time in record["times"][1:]]
        rows.append(
            {
                "source": src,
                f"first {args.step} (s)": ", ".join(f"{record['times'][0]:.3f}" for record in mine),
                "later, median (s)": f"{statistics.median(later):.3f}" if later else "",
                "later, range (s)": f"{min(later):.3f}-{max(later):.3f}" if later else "",
                "iterations": mine[0]["n_iter"],
                "marginal error": f"{mine[0]['error']:.2e}",
                **({"kept per row": f"{mine[0]['nnz_per_row']:.1f}"} if args.step == "sparsify" else {}),
            }
        )
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
