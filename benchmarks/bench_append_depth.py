"""Cost of ``mm.pp.append_depth`` at atlas scale: time and the growth of peak RSS, on simulated counts.

    .venv/bin/python benchmarks/bench_append_depth.py [--cells 50000] [--genes 20000] [--peaks 100000]

Simulated RNA + ATAC counts (``simulate_paired``, two batches) and a random 192-column stand-in for ``X_lsi_harmony``
in each modality (append_depth reads only its width and column SDs), then one ``append_depth`` over both modalities.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=50_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--peaks", type=int, default=100_000)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import mumatch as mm

    mdata = mm.datasets.simulate_paired(
        args.cells, ("rna", "atac"), n_batches=2, n_genes=args.genes, n_peaks=args.peaks, seed=0
    )
    rng = np.random.default_rng(0)
    for mod in mdata.mod:
        mdata[mod].obsm["X_lsi_harmony"] = rng.normal(size=(mdata[mod].n_obs, 192)).astype(np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    mm.pp.append_depth(mdata)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    nnz = sum(mdata[mod].layers["counts"].nnz for mod in mdata.mod)
    print("| cells | stored counts (both modalities) | append_depth (s) | peak RSS before (MB) | growth (MB) |")
    print("|--:|--:|--:|--:|--:|")
    print(f"| {args.cells:,} | {nnz:,} | {seconds:.2f} | {before:,.0f} | {after - before:,.0f} |")


if __name__ == "__main__":
    main()
