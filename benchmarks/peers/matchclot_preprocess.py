"""Peer preprocessing recipes on a multiome MuData, timed: MatchCLOT's (default) or the plain ecosystem one.

Runs in .venv-peers only. Our benchmark writes the input with `mm.datasets.simulate_paired(...)` and `mdata.write`:

    .venv-peers/bin/python benchmarks/peers/matchclot_preprocess.py --input sim.h5mu --out result.json \
        [--recipe matchclot|ecosystem] [--n-cells N] [--layer counts] [--batch-key batch]

Recipes (each modality on all its cells, train and test together: transductive):
- `matchclot`: its `lsiTransformer` (TF-IDF, L1 normalisation, log1p(x * 1e4), TruncatedSVD with n + 1 components,
  first dropped, rows standardised) with its tuned sizes (GEX 192, ATAC 256 components; `defaults_GEX2ATAC`), then
  Harmony with harmony-pytorch (its `harmony` helper) on the batch key, per modality.
- `ecosystem`: what a user would write with scverse tools: muon's `atac.pp.tfidf` + `atac.tl.lsi` (ARPACK svds) with
  the same numbers of components, then harmonypy's `run_harmony` as scanpy's `sc.external.pp.harmony_integrate`
  runs it (called directly: scanpy 1.11.5's wrapper fails on harmonypy 2.x's output shape), per modality.

Reports wall time (reading excluded: `read_time_s` is separate), per-stage times and this process's peak RSS
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, which includes the data as read; `rss_after_read_mb` gives that baseline).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd
import psutil

# Library chatter (prints at import and run time: pykeops via POT, matchclot, harmony, POT) goes to stderr; the JSON
# result is the only thing written to the real stdout (write_json uses sys.__stdout__).
sys.stdout = sys.stderr
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _neurips import peak_rss_mb, write_json  # noqa: E402

MODALITY_COMPONENTS = {"rna": "N_LSI_COMPONENTS_GEX", "atac": "N_LSI_COMPONENTS_ATAC"}


def current_rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def matchclot_recipe(adata, n_components: int, batch_key: str, stages: dict, name: str) -> np.ndarray:
    import torch
    from harmony import harmonize
    from matchclot.preprocessing.preprocess import lsiTransformer

    start = time.perf_counter()
    transformer = lsiTransformer(n_components=n_components, drop_first=True)
    embedding = transformer.fit_transform(adata)
    # All-zero cells give NaN rows in its row standardisation; the pipeline driver zeroes them too.
    embedding = embedding.fillna(0.0)
    stages[f"{name}_lsi_s"] = time.perf_counter() - start
    start = time.perf_counter()
    # Its `harmony` helper's call, with n_jobs = torch's thread count instead of its default -1 (all physical cores):
    # the same unless OMP_NUM_THREADS pins fewer threads (multithreaded harmony-pytorch is ~30x slower under load).
    labels = pd.DataFrame({"batch": adata.obs[batch_key].astype(str).to_numpy()})
    corrected = harmonize(
        embedding.to_numpy(dtype=np.float64), labels, batch_key="batch", use_gpu=True, n_jobs=torch.get_num_threads()
    )
    stages[f"{name}_harmony_s"] = time.perf_counter() - start
    return np.asarray(corrected)


def ecosystem_recipe(adata, n_components: int, batch_key: str, stages: dict, name: str) -> np.ndarray:
    import harmonypy
    import muon as mu

    start = time.perf_counter()
    mu.atac.pp.tfidf(adata, scale_factor=1e4)
    mu.atac.tl.lsi(adata, n_comps=n_components)
    stages[f"{name}_lsi_s"] = time.perf_counter() - start
    start = time.perf_counter()
    # What sc.external.pp.harmony_integrate(adata, key=batch_key, basis="X_lsi") runs. Called directly because
    # scanpy 1.11.5's wrapper transposes the result of harmonypy >= 2 (cells x components already) and fails on the
    # shape check; the computation is the same.
    corrected = harmonypy.run_harmony(adata.obsm["X_lsi"], adata.obs, batch_key).Z_corr
    corrected = np.asarray(corrected)
    if corrected.shape[0] != adata.n_obs:
        corrected = corrected.T
    stages[f"{name}_harmony_s"] = time.perf_counter() - start
    return corrected


def run(args: argparse.Namespace) -> dict:
    from matchclot.utils.hyperparameters import defaults_GEX2ATAC

    rss_at_start = current_rss_mb()
    start = time.perf_counter()
    mdata = md.read_h5mu(args.input)
    read_time = time.perf_counter() - start
    mods = [mod for mod in ("rna", "atac") if mod in mdata.mod]
    if not mods:
        raise ValueError(f"{args.input} has neither an 'rna' nor an 'atac' modality (has {list(mdata.mod)})")
    adatas = {}
    for mod in mods:
        adata = mdata[mod]
        if args.n_cells is not None:
            adata = adata[: args.n_cells]
        if args.layer is not None:
            if args.layer not in adata.layers:
                raise KeyError(f"layer {args.layer!r} not in mdata['{mod}'].layers; pass --layer")
            adata = adata.copy()
            adata.X = adata.layers[args.layer]
            del adata.layers[args.layer]
        else:
            adata = adata.copy()
        if args.batch_key not in adata.obs:
            raise KeyError(f"{args.batch_key!r} not in mdata['{mod}'].obs; pass --batch-key")
        adatas[mod] = adata
    del mdata
    rss_after_read = current_rss_mb()

    stages: dict[str, float] = {}
    shapes = {}
    recipe = matchclot_recipe if args.recipe == "matchclot" else ecosystem_recipe
    start, cpu_start = time.perf_counter(), time.process_time()
    for mod, adata in adatas.items():
        n_components = defaults_GEX2ATAC[MODALITY_COMPONENTS[mod]]
        embedding = recipe(adata, n_components, args.batch_key, stages, mod)
        shapes[mod] = {
            "n_cells": int(adata.n_obs),
            "n_features": int(adata.n_vars),
            "nnz": int(adata.X.nnz) if hasattr(adata.X, "nnz") else None,
            "n_components": int(embedding.shape[1]),
            "finite": bool(np.isfinite(embedding).all()),
            "n_batches": int(pd.Series(adata.obs[args.batch_key]).nunique()),
        }
    wall_time, cpu_time = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "method": "MatchCLOT preprocessing" if args.recipe == "matchclot" else "ecosystem (muon LSI + harmonypy)",
        "recipe": args.recipe,
        "input": str(args.input),
        "n_cells": args.n_cells if args.n_cells is not None else max(s["n_cells"] for s in shapes.values()),
        "modalities": shapes,
        "read_time_s": read_time,
        "wall_time_s": wall_time,
        "cpu_time_s": cpu_time,
        "stages_s": stages,
        "peak_rss_mb": peak_rss_mb(),
        "rss_at_start_mb": rss_at_start,
        "rss_after_read_mb": rss_after_read,
        "layer": args.layer,
        "batch_key": args.batch_key,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, type=Path, help=".h5mu with 'rna' and/or 'atac' modalities")
    parser.add_argument("--out", type=Path, default=None, help="JSON result path (default: stdout)")
    parser.add_argument("--recipe", choices=["matchclot", "ecosystem"], default="matchclot")
    parser.add_argument("--n-cells", type=int, default=None, help="use the first N cells of each modality")
    parser.add_argument("--layer", default="counts", help="counts layer fed to TF-IDF (empty string: .X)")
    parser.add_argument("--batch-key", default="batch")
    args = parser.parse_args(argv)
    args.layer = args.layer or None
    result = run(args)
    write_json(result, args.out)


if __name__ == "__main__":
    main()
