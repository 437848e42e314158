"""Quality of the whole pipeline (lsi_harmony → train_clip → match_ot) against MatchCLOT, side by side.

    python benchmarks/bench_pipeline.py [--data cite multiome pbmc10k_cite] [--seeds 0 1 2] [--ablation-seeds [0]]
        [--threads 1] [--results benchmarks/results/pipeline] [--no-peers] [--clue DIR [--scglue DIR]]

Each run (data set × seed × variant) executes in a fresh process; its JSON lands in ``--results`` and is reused by
later invocations (delete it to rerun). MatchCLOT runs with its own recipe through ``benchmarks/peers/
matchclot_pipeline.py`` in .venv-peers. Both sides get the same number of BLAS/OpenMP/torch threads (``--threads``).
Runs on pbmc10k_cite hold /tmp/mumatch-heavy.lock. Prints markdown tables: per data set and method the mean ± sd
over seeds, the ratio of mean match scores to MatchCLOT's, and the ablations.

Variants (ours): ``full`` (the pipeline of ``mumatch run``), ``no_harmony`` (lsi_harmony without Harmony),
``no_depth`` (CLIP reads lsi_harmony's embedding without the sequencing-depth columns of ``pp.append_depth``),
``no_transductive`` (LSI fitted on the paired training cells only, test cells projected with
lsi_harmony_transform), ``single_model`` (one model instead of the ensemble); and, from the full embedding,
``no_batch_split`` (one OT block), ``exact`` (one-to-one assignment instead of entropic OT) and ``epsilon_0.01``
(MatchCLOT's ε instead of the pipeline's sharper one).

CLUE is trained and scored by ``bench_clue.py`` (its own runs, each with its CLIP row, and scglue's results);
``--clue DIR`` appends that table here so that CLIP, CLUE and scglue are read side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
DATA_ROOT = Path(os.environ.get("MUMATCH_DATA", ROOT.parent / "shared" / "data"))
DATASETS = {
    "cite": DATA_ROOT / "neurips2021_starter" / "cite",
    "multiome": DATA_ROOT / "neurips2021_starter" / "multiome",
    "pbmc10k_cite": DATA_ROOT / "pbmc10k_cite",
}
HEAVY = {"pbmc10k_cite"}
TRAIN_VARIANTS = ("full", "no_harmony", "no_depth", "no_transductive", "single_model")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def worker(data: str, seed: int, variant: str, out: Path) -> None:
    """One run of our pipeline (or an ablation of it); writes a JSON list of result rows."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import mudata

    mudata.set_options(pull_on_update=False)
    import mumatch as mm
    from mumatch._layout import paired_names
    from mumatch._pipeline import CLIP_REP, MATCH_EPSILON, MATCH_MAX_ITER, ensemble_choice, fill_unpaired_batches

    mdata = mm.datasets.read_neurips2021(DATASETS[data])
    mod1, mod2 = mdata.uns["neurips2021"]["mod1"], mdata.uns["neurips2021"]["mod2"]
    notes = fill_unpaired_batches(mdata, mod1, mod2)

    start = time.perf_counter()
    if variant == "no_transductive":
        names = paired_names(mdata, mod1, mod2)
        reference = mudata.MuData({mod: mdata[mod][names].copy() for mod in (mod1, mod2)})
        mm.pp.lsi_harmony(reference, random_state=seed)
        mm.pp.lsi_harmony_transform(mdata, reference, [mod1, mod2], random_state=seed)
    else:
        mm.pp.lsi_harmony(mdata, [mod1, mod2], harmony=variant != "no_harmony", random_state=seed)
    if variant != "no_depth":
        mm.pp.append_depth(mdata, [mod1, mod2], key_added=CLIP_REP)
    preprocess_time = time.perf_counter() - start
    use_rep = "X_lsi_harmony" if variant == "no_depth" else CLIP_REP

    ensemble = None if variant == "single_model" else ensemble_choice(mdata, mod1, mod2)
    start = time.perf_counter()
    models = mm.tl.train_clip(
        mdata, mod1, mod2, use_rep=use_rep, ensemble=ensemble, random_state=seed, progress_bar=False
    )
    train_time = time.perf_counter() - start
    epochs = sum(model.train_info["epochs"] for model in models)

    def row(name: str, **match_kwargs) -> dict:
        start = time.perf_counter()
        options = {"epsilon": MATCH_EPSILON, "max_iter": MATCH_MAX_ITER, **match_kwargs}
        mm.tl.match_ot(mdata, mod1, mod2, use_rep="X_clip", key_added="match", **options)
        match_time = time.perf_counter() - start
        kwargs = {"key": "match", "mod1": mod1, "mod2": mod2}
        return {
            "method": "mumatch CLIP + OT" if name == "full" else f"mumatch, {name.replace('_', ' ')}",
            "variant": name,
            "data": data,
            "seed": seed,
            "match_score": mm.metrics.match_score(mdata, **kwargs),
            "top1": mm.metrics.top_k_accuracy(mdata, k=1, direction="forward", **kwargs),
            "top5": mm.metrics.top_k_accuracy(mdata, k=5, direction="forward", **kwargs),
            "foscttm": mm.metrics.foscttm(mdata, key="X_clip", mod1=mod1, mod2=mod2),
            "preprocess_time_s": preprocess_time,
            "train_time_s": train_time,
            "epochs": epochs,
            "time_per_epoch_s": train_time / max(epochs, 1),
            "n_models": len(models),
            "best_epochs": [model.train_info["best_epoch"] for model in models],
            "match_time_s": match_time,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "notes": notes,
        }

    rows = [row(variant)]
    if variant == "full":
        rows.append(row("no_batch_split", batch_key=None))
        rows.append(row("exact", method="exact"))
        rows.append(row("epsilon_0.01", epsilon=0.01))
    out.write_text(json.dumps(rows, indent=1, default=float))


def run_ours(data: str, seed: int, variant: str, results: Path, threads: int, report_only: bool = False) -> list[dict]:
    out = results / f"mumatch_{data}_{variant}_seed{seed}.json"
    if report_only and not out.exists():
        return []
    if not out.exists():
        command = [sys.executable, __file__, "--worker", data, str(seed), variant, str(out)]
        if data in HEAVY:
            command = ["flock", "/tmp/mumatch-heavy.lock", *command]
        env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(threads))}
        completed = subprocess.run(command, env=env, capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"{data} seed {seed} {variant} failed:\n{completed.stderr[-3000:]}")
    return json.loads(out.read_text())


def run_matchclot(data: str, seed: int, results: Path, threads: int, report_only: bool = False) -> list[dict]:
    out = results / f"matchclot_{data}_seed{seed}.json"
    if report_only and not out.exists():
        return []
    if not out.exists():
        from _peers import run_peer

        arguments = ("--data", str(DATASETS[data]), "--seed", str(seed))
        result = run_peer("matchclot_pipeline.py", *arguments, lock=data in HEAVY, threads=threads)
        out.write_text(json.dumps(result, indent=1, default=float))
    result = json.loads(out.read_text())
    row = {
        "method": "MatchCLOT (its recipe)",
        "variant": "matchclot",
        "data": data,
        "seed": seed,
        **{key: result[key] for key in ("match_score", "top1", "top5", "foscttm", "train_time_s", "epochs")},
        "time_per_epoch_s": result["time_per_epoch_s"],
        "match_time_s": result["match_time_s"],
        "preprocess_time_s": result["preprocess_time_s"],
        "peak_rss_mb": result.get("child_peak_rss_mb", result["peak_rss_mb"]),
        "n_models": len(result["folds"]),
    }
    return [row]


COLUMNS = ["match_score", "top1", "top5", "foscttm", "train_time_s", "time_per_epoch_s", "match_time_s", "peak_rss_mb"]


def summary(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    table = []
    for (data, method), group in frame.groupby(["data", "method"], sort=False):
        line = {"data": data, "method": method, "seeds": len(group)}
        for column in COLUMNS:
            values = group[column].astype(float)
            digits = 4 if column in ("match_score", "top1", "top5", "foscttm") else 2
            spread = f" ± {values.std(ddof=0):.{digits}f}" if len(values) > 1 else ""
            line[column] = f"{values.mean():.{digits}f}{spread}"
        table.append(line)
    return pd.DataFrame(table)


def ratios(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    lines = []
    for data, group in frame.groupby("data", sort=False):
        ours = group[group["variant"] == "full"]
        peer = group[group["variant"] == "matchclot"]
        if ours.empty or peer.empty:
            continue
        lines.append(
            {
                "data": data,
                "mumatch score": f"{ours['match_score'].mean():.4f}",
                "MatchCLOT score": f"{peer['match_score'].mean():.4f}",
                "score ratio (target ≥ 1.25)": f"{ours['match_score'].mean() / peer['match_score'].mean():.2f}",
                "time/epoch ratio (target ≤ 1)": (
                    f"{ours['time_per_epoch_s'].mean() / peer['time_per_epoch_s'].mean():.2f}"
                ),
                "train time ratio": f"{ours['train_time_s'].mean() / peer['train_time_s'].mean():.2f}",
            }
        )
    return pd.DataFrame(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=4, metavar=("DATA", "SEED", "VARIANT", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--data", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--ablation-seeds", nargs="*", type=int, default=[0], help="none: no ablation runs")
    parser.add_argument("--threads", type=int, default=1, help="threads of each run, both sides (default 1)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "pipeline")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="tables from the saved results; run nothing")
    parser.add_argument(
        "--clue",
        type=Path,
        default=None,
        help="also tabulate the CLUE rows: bench_clue.py's results folder (it trains them; they are slow)",
    )
    parser.add_argument("--scglue", type=Path, default=None, help="with --clue: folder of scglue_clue.py JSON results")
    args = parser.parse_args()
    if args.worker:
        data, seed, variant, out = args.worker
        worker(data, int(seed), variant, Path(out))
        return
    args.results.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for data in args.data:
        for seed in args.seeds:
            full = run_ours(data, seed, "full", args.results, args.threads, args.report_only)
            rows += full if seed in args.ablation_seeds else full[:1]
            if not args.no_peers:
                rows += run_matchclot(data, seed, args.results, args.threads, args.report_only)
            print(f"done {data} seed {seed}", file=sys.stderr)
        for seed in args.ablation_seeds:
            for variant in TRAIN_VARIANTS[1:]:
                rows += run_ours(data, seed, variant, args.results, args.threads, args.report_only)
    main_rows = [row for row in rows if row["variant"] in ("full", "matchclot")]
    print(f"### Pipeline vs MatchCLOT (seeds {args.seeds}, mean ± sd, {args.threads} thread(s) each)\n")
    print(summary(main_rows).to_markdown(index=False))
    print("\n### Ratios (ours / MatchCLOT)\n")
    print(ratios(rows).to_markdown(index=False))
    ablation_rows = [row for row in rows if row["seed"] in args.ablation_seeds]
    if ablation_rows:  # --ablation-seeds given empty: no ablation table
        print(f"\n### Ablations (seed(s) {args.ablation_seeds})\n")
        print(summary(ablation_rows).to_markdown(index=False))
    if args.clue is not None:
        import bench_clue

        results = [json.loads(path.read_text()) for path in sorted(args.clue.glob("*.json"))]
        peers = bench_clue.scglue_rows(args.scglue) if args.scglue is not None else []
        print("\n### CLUE (bench_clue.py) beside CLIP, and scglue's SCCLUEModel (mean over seeds)\n")
        print(bench_clue.table(results, peers).to_markdown(index=False))


if __name__ == "__main__":
    main()
