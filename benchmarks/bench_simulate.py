"""Time and peak memory of mm.datasets.simulate_paired at atlas scale.

Usage: python benchmarks/bench_simulate.py [N ...]   (default: 10000 50000 100000)
Prints a markdown table; copy it into docs/benchmarks.md.
"""

from __future__ import annotations

import sys

import pandas as pd

from _measure import measure

sizes = [int(n) for n in sys.argv[1:]] or [10_000, 50_000, 100_000]
rows = []
for n_cells in sizes:
    result = measure(
        f"""
        import mumatch as mm
        t0 = time.perf_counter()
        mdata = mm.datasets.simulate_paired({n_cells}, ("rna", "atac"), n_genes=20_000, n_peaks=100_000, n_batches=4)
        result = {{"simulate_s": time.perf_counter() - t0,
                   "nnz_rna_M": mdata["rna"].X.nnz / 1e6, "nnz_atac_M": mdata["atac"].X.nnz / 1e6}}
        """
    )
    rows.append(
        {
            "cells": n_cells,
            "features": "20k genes + 100k peaks",
            "simulate (s)": round(result["simulate_s"], 1),
            "peak RSS (GB)": round(result["peak_rss_gb"], 2),
            "non-zeros RNA (M)": round(result["nnz_rna_M"], 1),
            "non-zeros ATAC (M)": round(result["nnz_atac_M"], 1),
        }
    )
    print(rows[-1], file=sys.stderr)
print(pd.DataFrame(rows).to_markdown(index=False))
