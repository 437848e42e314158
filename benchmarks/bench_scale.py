"""Scale of the whole pipeline on simulated multiome data: wall time and peak memory per stage.

    python benchmarks/bench_scale.py [--sizes 10000 50000 100000] [--threads 2] [--max-epochs N]

Each size runs in a fresh process (under /tmp/mumatch-heavy.lock): ``simulate_paired`` RNA + ATAC (half the cells
paired for training, half unpaired, 3 batches, 2,000 genes, 10,000 peaks), then the stages of ``mumatch run``:
``lsi_harmony`` → ``train_clip`` (one model per held-out training batch) → ``match_ot``, run by the pipeline's own
stage functions (the random baseline, a dense test × test block, is left out). Prints a markdown table: seconds per
stage, peak RSS after each stage (the process's high-water mark so far), models and epochs trained, minibatch size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
N_GENES, N_PEAKS, N_BATCHES = 2000, 10000, 3


def worker(n_cells: int, max_epochs: int | None) -> dict:
    """The pipeline's stages on ``n_cells`` simulated cells; seconds and peak RSS (GB) after each."""
    import logging
    import resource
    import time
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import mudata

    mudata.set_options(pull_on_update=False)
    import mumatch as mm
    from mumatch import _pipeline as pipeline

    record: dict = {"cells": n_cells}

    def stage(name: str, function) -> None:
        start = time.perf_counter()
        function()
        record[f"{name} s"] = round(time.perf_counter() - start, 1)
        record[f"{name} peak GB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)

    holder: dict = {}
    stage(
        "simulate",
        lambda: holder.update(
            mdata=mm.datasets.simulate_paired(
                n_cells, ("rna", "atac"), n_batches=N_BATCHES, n_genes=N_GENES, n_peaks=N_PEAKS, seed=0
            )
        ),
    )
    mdata = holder["mdata"]
    if max_epochs:
        pipeline.TRAIN_OPTIONS = {"max_epochs": max_epochs}
    result = pipeline.PipelineResult()
    for name, function in pipeline.stages("rna", "atac", seed=0):
        if name != "random baseline":
            stage(name, lambda function=function: function(mdata, result))
    record["models"] = len(mdata.uns["X_clip"]["models"])
    record["epochs"] = sum(int(model["epochs"]) for model in mdata.uns["X_clip"]["models"].values())
    record["batch size"] = int(mdata.uns["X_clip"]["models"]["0"]["batch_size"])
    record["match score"] = round(mm.metrics.match_score(mdata, key=pipeline.CLIP_KEY, mod1="rna", mod2="atac"), 4)
    record["random score"] = round(1 / mm._layout.unpaired_mask(mdata, "atac", "rna").sum(), 6)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[10000, 50000, 100000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, default=None, help="cap training (default: CLIP's early stopping)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per size")
    args = parser.parse_args()
    if args.worker:
        print("__RESULT__" + json.dumps(worker(args.worker, args.max_epochs)))
        return
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(args.threads))}
    rows = []
    for n_cells in args.sizes:
        command = ["flock", "/tmp/mumatch-heavy.lock", sys.executable, str(Path(__file__)), "--worker", str(n_cells)]
        if args.max_epochs:
            command += ["--max-epochs", str(args.max_epochs)]
        try:
            completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rows.append({"cells": n_cells, "error": f"over {args.timeout:.0f} s"})
            continue
        lines = [line for line in completed.stdout.splitlines() if line.startswith("__RESULT__")]
        if not lines:
            rows.append({"cells": n_cells, "error": completed.stderr.strip().splitlines()[-1][:200]})
            continue
        rows.append(json.loads(lines[-1].removeprefix("__RESULT__")))
        print(f"done {n_cells}", file=sys.stderr)
    print(f"### Pipeline at scale (simulated RNA + ATAC, {args.threads} threads)\n")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
