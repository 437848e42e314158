"""CLUE rows of the pipeline benchmark: mumatch's CLUE (+ OT or SNN matching, ablations, CLIP ensemble) vs scglue.

    .venv/bin/python benchmarks/bench_clue.py --sets cite multiome pbmc10k --seeds 0 1 2 \
        --variants full no_cross no_mse no_adversarial --out benchmarks/results/clue [--scglue DIR]

Each (set, seed, variant) runs in its own process (peak RSS is that process's own) with one torch thread. A run does,
on the transductive MuData, what ``mumatch run`` does (:mod:`mumatch._pipeline`): unlabelled test cells take the batch
of the other modality's test cells, ``mm.pp.lsi_harmony`` → ``mm.tl.train_clue`` (the variant's loss weights) →
matching of the test cells with ``mm.tl.match_ot`` at the pipeline's ε (``MATCH_EPSILON``, ``MATCH_MAX_ITER``) and
by shared-nearest-neighbour (SNN) matching, the CLUE competition entry's rule → match score, top-1, top-5 (rows: test
cells of mod1) and FOSCTTM (on the embedding). The ``full`` variant trains a seed ensemble of CLUE models sized as
the pipeline sizes CLIP's (``seed_ensemble_size``) and scores its first model alone and the ensemble; it also trains
CLIP as the pipeline does (``ensemble_choice``) and scores the ensemble ``match_ot(use_rep=["X_clip", "X_clue"])``
(mean of the two cosine similarities). The ablation variants train one model (compare with ``CLUE (1 model)``).
scglue's results (JSON files from ``benchmarks/peers/scglue_clue.py``) in ``--scglue`` are tabulated beside ours.
Prints a markdown table; one JSON per run is kept in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SETS = {
    "cite": "bundled BMMC CITE starter",
    "multiome": "bundled BMMC multiome starter",
    "pbmc10k": "pbmc10k_cite",
}
PEER_FOLDERS = {
    "cite": "neurips2021_starter/cite",
    "multiome": "neurips2021_starter/multiome",
    "pbmc10k": "pbmc10k_cite",
}
VARIANTS = {
    "full": {},
    "no_cross": {"lam_cross": 0.0},
    "no_mse": {"lam_mse": 0.0},
    "no_adversarial": {"lam_adversarial": 0.0},
}
# --extra-variant's variants, handed to each run's process.
EXTRA_VARIANTS = "CLUE_BENCH_EXTRA_VARIANTS"
# The CLUE competition entry's SNN matching used one neighbour.
SNN_K = 1
# Test-cell embeddings of every run, for matching them again without retraining.
EMBEDDINGS = Path(os.environ.get("CLUE_BENCH_EMBEDDINGS", "/tmp/clue_bench/embeddings"))


def load(name: str):
    import mumatch as mm

    if name in ("cite", "multiome"):
        return mm.datasets.bmmc_starter(name)
    return mm.datasets.read_neurips2021(DATA / PEER_FOLDERS[name])


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def snn_plan(embedding1: np.ndarray, embedding2: np.ndarray, k: int = SNN_K) -> sp.csr_matrix:
    """Shared-nearest-neighbour matching: Jaccard index of the k-NN sets (self included) in the joint embedding.

    A cell of either modality has as neighbourhood itself and its ``k`` nearest cells (cosine) among both
    modalities' test cells; a pair (i, j) across modalities scores the Jaccard index of their neighbourhoods. A row
    with no shared neighbour falls back to its nearest cell of the other modality. Rows are normalised.
    """
    from sklearn.neighbors import NearestNeighbors

    joint = unit(np.vstack([embedding1, embedding2]))
    n1, n_all = embedding1.shape[0], joint.shape[0]
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(joint).kneighbors(joint, return_distance=False)
    rows = np.repeat(np.arange(n_all), k + 1)
    adjacency = sp.csr_matrix((np.ones(rows.size), (rows, neighbours.ravel())), shape=(n_all, n_all))
    adjacency.data[:] = 1.0
    shared = (adjacency[:n1] @ adjacency[n1:].T).tocsr()
    shared.data = shared.data / (2 * (k + 1) - shared.data)
    nearest = NearestNeighbors(n_neighbors=1).fit(unit(embedding2)).kneighbors(unit(embedding1), return_distance=False)
    empty = np.flatnonzero(shared.getnnz(axis=1) == 0)
    fallback = sp.csr_matrix((np.full(empty.size, 1e-6), (empty, nearest[empty, 0])), shape=shared.shape)
    plan = (shared + fallback).tocsr()
    return sp.diags(1.0 / np.asarray(plan.sum(axis=1)).ravel()) @ plan


def scores(plan, truth: np.ndarray, similarity: np.ndarray) -> dict[str, float]:
    """Match score, top-1/5 on the plan, FOSCTTM on the similarity (as the peer drivers score)."""
    sys.path.insert(0, str(REPO / "benchmarks" / "peers"))
    from _neurips import score

    result = score(plan, truth, similarity=similarity)
    return {name: float(result[name]) for name in ("match_score", "top1", "top5", "foscttm")}


def run_one(
    name: str,
    seed: int,
    variant: str,
    max_epochs: int | None = None,
    patience: int | None = None,
    raw_subspaces: bool = False,
) -> dict:
    """One run in this process: preprocessing, training, matching, scores."""
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    import mudata

    mudata.set_options(pull_on_update=False)
    import mumatch as mm
    from mumatch import _pipeline
    from mumatch._layout import extract_block, paired_positions, unpaired_mask

    mdata = load(name)
    mod1, mod2 = list(mdata.mod)[:2]
    start = time.perf_counter()
    _pipeline.fill_unpaired_batches(mdata, mod1, mod2)
    mm.pp.lsi_harmony(mdata, [mod1, mod2], random_state=seed)
    preprocess_s = time.perf_counter() - start
    n_paired = int(paired_positions(mdata, mod1, mod2)[0].size)
    n_models = _pipeline.seed_ensemble_size(n_paired) if variant == "full" else 1
    models = mm.tl.train_clue(
        mdata,
        [mod1, mod2],
        model_kwargs=VARIANTS[variant],
        normalize_subspaces=not raw_subspaces,
        ensemble=n_models,
        key_added="X_clue_ensemble",
        random_state=seed,
        max_epochs=max_epochs,
        progress_bar=False,
        # patience 0 trains on every cell for max_epochs epochs, without validation or early stopping.
        **({} if patience is None else {"patience": patience} if patience else {"validation_fraction": 0.0}),
    )
    balanced = mdata.uns["X_clue_ensemble"]["params"]["normalize_subspaces"]  # the first model as train_clue writes it
    for mod in (mod1, mod2):
        mdata[mod].obsm["X_clue"] = models[0].get_latent_representation(mdata, mod, normalize_subspaces=balanced)
    reps = {"CLUE (1 model)": "X_clue"}
    timings = {"CLUE (1 model)": models[0].train_info["train_s"]}
    if n_models > 1:
        reps[f"CLUE ({n_models} models)"] = "X_clue_ensemble"
        timings[f"CLUE ({n_models} models)"] = sum(model.train_info["train_s"] for model in models)
    if variant == "full":
        start = time.perf_counter()
        ensemble = _pipeline.ensemble_choice(mdata, mod1, mod2)
        mm.pp.append_depth(mdata, [mod1, mod2], key_added=_pipeline.CLIP_REP)
        mm.tl.train_clip(
            mdata, mod1, mod2, use_rep=_pipeline.CLIP_REP, ensemble=ensemble, random_state=seed, progress_bar=False
        )
        timings["CLIP (pipeline)"] = time.perf_counter() - start
        reps["CLIP (pipeline)"] = "X_clip"
        clue_key = list(reps)[1] if n_models > 1 else "CLUE (1 model)"
        reps[f"CLIP + {clue_key}"] = ["X_clip", reps[clue_key]]
        timings[f"CLIP + {clue_key}"] = timings["CLIP (pipeline)"] + timings[clue_key]

    index1 = np.flatnonzero(unpaired_mask(mdata, mod1, mod2))
    index2 = np.flatnonzero(unpaired_mask(mdata, mod2, mod1))
    truth = extract_block(mdata, mdata.obsp["match_true"], mod1, mod2, index1, index2).indices

    def pair(key: str) -> tuple[np.ndarray, np.ndarray]:
        return mdata[mod1].obsm[key][index1], mdata[mod2].obsm[key][index2]

    def similarity(rep: str | list[str]) -> np.ndarray:
        keys = [rep] if isinstance(rep, str) else rep
        return np.mean([unit(pair(key)[0]) @ unit(pair(key)[1]).T for key in keys], axis=0)

    rows = []
    for label, rep in reps.items():
        sim = similarity(rep)
        start = time.perf_counter()
        options = {"epsilon": _pipeline.MATCH_EPSILON, "max_iter": _pipeline.MATCH_MAX_ITER}
        mm.tl.match_ot(mdata, mod1, mod2, use_rep=rep, key_added="plan", **options)
        match_s = time.perf_counter() - start
        plan = extract_block(mdata, mdata.obsp["plan"], mod1, mod2, index1, index2)
        matching = f"match_ot (eps {_pipeline.MATCH_EPSILON:g})"
        rows.append({"embedding": label, "matching": matching, "match_s": match_s, **scores(plan, truth, sim)})
        if isinstance(rep, str) and label.startswith("CLUE"):
            start = time.perf_counter()
            plan = snn_plan(*pair(rep))
            match_s = time.perf_counter() - start
            rows.append(
                {"embedding": label, "matching": f"SNN (k={SNN_K})", "match_s": match_s, **scores(plan, truth, sim)}
            )
    for row in rows:
        row["train_s"] = timings[row["embedding"]]
    EMBEDDINGS.mkdir(parents=True, exist_ok=True)
    stored = {rep for rep in reps.values() if isinstance(rep, str)}
    np.savez_compressed(
        EMBEDDINGS / f"{name}_{variant}_{seed}.npz",
        truth=truth,
        **{f"{key}_{side}": part for key in stored for side, part in zip("12", pair(key), strict=True)},
    )
    return {
        "set": name,
        "seed": seed,
        "variant": variant,
        "preprocess_s": preprocess_s,
        "n_models": n_models,
        "epochs": [model.train_info["epochs"] for model in models],
        "best_epochs": [model.train_info["best_epoch"] for model in models],
        "max_epochs": models[0].train_info["max_epochs"],
        "rows": rows,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "n_test": int(index1.size),
    }


def scglue_rows(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*.json")):  # results of benchmarks/peers/scglue_clue.py, any file name
        result = json.loads(path.read_text())
        if "schedule_fraction" not in result:
            continue
        data = str(result["data"])
        name = next((key for key, sub in PEER_FOLDERS.items() if data.rstrip("/").endswith(sub)), data)
        rows.append(
            {
                "set": name,
                "method": f"scglue CLUE (schedule x{result['schedule_fraction']:g}) + SNN",
                "seed": result["seed"],
                "match_score": result["match_score"],
                "top1": result["top1"],
                "top5": result["top5"],
                "foscttm": result["foscttm"],
                "train_s": result["train_time_s"],
                "peak_rss_gb": result["peak_rss_mb"] / 1024,
            }
        )
    return rows


def table(results: list[dict], peers: list[dict]) -> pd.DataFrame:
    records = []
    for result in results:
        for row in result["rows"]:
            label = f"{row['embedding']} + {row['matching']}"
            if result["variant"] != "full":
                label = f"CLUE {result['variant'].replace('_', ' ')} + {row['matching']}"
            records.append(
                {
                    "set": result["set"],
                    "method": label,
                    "seed": result["seed"],
                    **{key: row[key] for key in ("match_score", "top1", "top5", "foscttm", "train_s")},
                    "peak_rss_gb": result["peak_rss_gb"],
                }
            )
    frame = pd.DataFrame(records + peers)
    metrics = ["match_score", "top1", "top5", "foscttm", "train_s", "peak_rss_gb"]
    grouped = frame.groupby(["set", "method"], sort=False)
    summary = grouped[metrics].mean()
    summary["seeds"] = grouped["seed"].nunique()
    summary["match_score_sd"] = grouped["match_score"].std().fillna(0.0)
    return summary.round(4).reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=["full"], help=f"of {list(VARIANTS)} and --extra-variant's")
    parser.add_argument(
        "--extra-variant",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "JSON"),
        help="another variant: one model with these CLUE hyperparameters, e.g. drop5 '{\"dropout\": 0.5}'",
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "clue")
    parser.add_argument("--scglue", type=Path, default=None, help="folder with scglue_clue.py JSON results")
    parser.add_argument("--table-only", action="store_true", help="tabulate the JSON files already in --out")
    parser.add_argument("--max-epochs", type=int, default=None, help="cap on CLUE's epochs (default: its own)")
    parser.add_argument(
        "--patience",
        type=int,
        default=None,
        help="CLUE's early-stopping patience (default: its own; 0: no validation, train max-epochs)",
    )
    parser.add_argument(
        "--raw-subspaces",
        action="store_true",
        help="CLUE embeddings as raw posterior means (normalize_subspaces=False), as before that option existed",
    )
    parser.add_argument(
        "--one", nargs=6, metavar=("SET", "SEED", "VARIANT", "MAX_EPOCHS", "PATIENCE", "RAW"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    extra = {name: json.loads(kwargs) for name, kwargs in args.extra_variant}
    extra.update(json.loads(os.environ.get(EXTRA_VARIANTS, "{}")))  # what the parent was given
    VARIANTS.update(extra)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}: choose from {list(VARIANTS)} or add --extra-variant")
    if args.one:
        name, seed, variant, max_epochs, patience, raw = args.one
        max_epochs = int(max_epochs) if max_epochs != "None" else None
        patience = int(patience) if patience != "None" else None
        result = run_one(name, int(seed), variant, max_epochs, patience, raw_subspaces=raw == "True")
        print("__RESULT__" + json.dumps(result))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for name in args.sets:
            for variant in args.variants:
                for seed in args.seeds:
                    path = args.out / f"{name}_{variant}_{seed}.json"
                    if path.exists():
                        continue
                    completed = subprocess.run(
                        [
                            sys.executable,
                            __file__,
                            "--one",
                            name,
                            str(seed),
                            variant,
                            str(args.max_epochs),
                            str(args.patience),
                            str(args.raw_subspaces),
                        ],
                        capture_output=True,
                        text=True,
                        env={**os.environ, EXTRA_VARIANTS: json.dumps(extra)},
                    )
                    lines = [line for line in completed.stdout.splitlines() if line.startswith("__RESULT__")]
                    if not lines:
                        print(f"run {name}/{variant}/{seed} failed:\n{completed.stderr[-3000:]}", file=sys.stderr)
                        continue
                    path.write_text(lines[-1].removeprefix("__RESULT__"))
                    print(f"done {name}/{variant}/{seed}", file=sys.stderr)
    results = [json.loads(path.read_text()) for path in sorted(args.out.glob("*.json"))]
    peers = scglue_rows(args.scglue) if args.scglue else []
    if not results and not peers:
        print(f"no results in {args.out}", file=sys.stderr)
        return
    print(table(results, peers).to_markdown(index=False))


if __name__ == "__main__":
    main()
