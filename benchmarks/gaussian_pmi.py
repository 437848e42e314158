"""Probe: matching by a Gaussian likelihood cost on ``lsi_harmony``'s representations, alone and beside CLUE.

    CLUE_BENCH_EMBEDDINGS=/tmp/clue_s19_emb .venv/bin/python benchmarks/gaussian_pmi.py --sets multiome pbmc10k \
        --seeds 0 1 2 --out benchmarks/results/gaussian_pmi_s22

A joint Gaussian is fitted (Ledoit-Wolf shrinkage) to the paired training cells' representations ``[a; b]`` (the
leading ``n`` LSI/PCA components of each modality; CLR protein values whole). The pointwise mutual information of an
unpaired cell ``i`` of mod1 and ``j`` of mod2, ``log p(a_i, b_j) - log p(a_i) - log p(b_j)``, is then
``-a_iᵀ Θ_ab b_j`` plus terms of ``i`` alone and of ``j`` alone (``Θ`` the precision matrix), which a balanced
transport plan ignores. The plan ``∝ exp(PMI / T)`` is solved by ``mumatch.ot.sinkhorn`` on points whose squared
distances are that bilinear cost (``T = 1`` is the model's own posterior; smaller ``T`` sharpens it).

Two rows per (set, seed), both matching the test cells of the pipeline's transductive MuData (``lsi_harmony`` with
``random_state=seed``, as ``bench_clue.py`` runs it, so the test cells and their order are those of its stored
embeddings):

- ``gaussian``: ``n`` and ``T`` chosen without the test truth, on a held-out fifth of the paired training cells
  (the Gaussian fitted on the other four fifths, the held-out pairs matched among themselves), then the Gaussian
  refitted on every paired cell;
- ``grid``: every ``(n, T)`` and, with the CLUE (and CLIP) test embeddings that ``bench_clue.py`` stored in
  ``CLUE_BENCH_EMBEDDINGS``, the Gaussian cost added to the cosine cost the pipeline's ``match_ot`` solves (at its ε)
  with weight ``w`` on the cosine part. These rows are scored on the test truth for every setting: exploratory, with
  the optimism of picking the best of a grid.

``--held-out-pairs`` (``run_held_out``) chooses every setting without the test truth, CLUE's included: a fifth of the
paired cells is made unpaired (its mod2 cells renamed) before ``lsi_harmony`` and ``train_clue``, so CLUE trains on
them as on test cells; ``(n, T)`` and ``(n, T, w)`` are chosen on those held-out pairs, then the test cells are matched
once (``held_out_SET_sSEED.json``).

``--depth`` appends each cell's sequencing depth (the two columns of ``mm.pp.append_depth``: log total counts and
log detected features, standardised within batches) to both modalities' inputs of the Gaussian; the JSON names end in
``_depth``. ``--with-clip`` (with ``--held-out-pairs``) puts the pipeline's CLIP, trained on the same four fifths of
the pairs, beside CLUE: the embedding is CLIP + CLUE (names end in ``_clip``).

Prints markdown tables; one JSON per (set, seed) in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

N_COMPONENTS = (30, 50, 100)
TEMPERATURES = (1.0, 0.5, 0.25, 0.1)
COSINE_WEIGHTS = (0.5, 1.0, 2.0)
HELD_OUT_FRACTION = 0.2


def gaussian_points(
    a_fit: np.ndarray, b_fit: np.ndarray, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Points ``x_i``, ``y_j`` whose squared distance is ``-PMI(a_i, b_j)`` up to terms of ``i`` or ``j`` alone."""
    from sklearn.covariance import LedoitWolf

    fit = np.hstack([a_fit, b_fit])
    mean = fit.mean(axis=0)
    precision = LedoitWolf().fit(fit).precision_
    width = a_fit.shape[1]
    cross = precision[:width, width:]
    # ||x - y||² = |x|² + |y|² - 2 x·y and -2 x·y = (a - μa)ᵀ Θ_ab (b - μb), the only term that couples i and j.
    x = (a - mean[:width]) / np.sqrt(2.0)
    y = -((b - mean[width:]) @ cross.T) / np.sqrt(2.0)
    return x, y


def match_score(x: np.ndarray, y: np.ndarray, temperature: float, truth: np.ndarray) -> float:
    """Match score of the balanced plan ``∝ exp(-||x_i - y_j||² / temperature)``, rows normalised."""
    import mumatch.ot as ot

    squared = (x**2).sum(1)[:, None] + (y**2).sum(1)[None] - 2 * x @ y.T
    # The solver divides the squared-Euclidean cost by its maximum; ε on that scale is temperature / maximum.
    epsilon = temperature / float(squared.max())
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    result = ot.sinkhorn(x32, y32, epsilon=epsilon, cost="sqeuclidean", tol=1e-3, max_iter=5000)
    plan = ot.plan_tile(x32, y32, result.f, result.g, epsilon, result.cost)
    plan /= plan.sum(axis=1, keepdims=True)
    return float(plan[np.arange(truth.size), truth].mean())


def leading(rep: np.ndarray, n: int, whole: bool, depth: np.ndarray | None = None) -> np.ndarray:
    """The leading ``n`` columns (all when ``whole``), followed by the depth columns when given."""
    columns = rep if whole else rep[:, :n]
    return columns if depth is None else np.hstack([columns, depth])


def depth_columns(mdata, mods: list[str], use: bool) -> dict:
    """Each modality's two ``pp.append_depth`` columns (standardised within batches), or None for every modality."""
    if not use:
        return dict.fromkeys(mods)
    import mumatch as mm

    out = mm.pp.append_depth(mdata, mods, key_added="X_depth_probe", copy=True)
    return {mod: np.asarray(out[mod].obsm["X_depth_probe"][:, -2:], dtype=np.float64) for mod in mods}


def cosine_points(u: np.ndarray, v: np.ndarray, weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings scaled so that their squared distance is ``weight`` times the pipeline's cosine cost / ε."""
    from mumatch import _pipeline

    u = u / np.linalg.norm(u, axis=1, keepdims=True)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    # The pipeline's cosine cost, 1 - cos shifted to a minimum of 1 and divided by its maximum M, at ε:
    # (1 - cos) / (ε M) = ||u - v||² / (2 ε M); the constant shift does not change the plan.
    scale = np.sqrt(weight / (2 * _pipeline.MATCH_EPSILON * float((2.0 - u @ v.T).max())))
    return u * scale, v * scale


def load_prepared(name: str):
    """The set as ``bench_clue.py`` runs it (one torch thread): unlabelled test cells take the other side's batch."""
    import mudata
    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    mudata.set_options(pull_on_update=False)
    from bench_clue import load
    from mumatch import _pipeline

    mdata = load(name)
    mod1, mod2 = list(mdata.mod)[:2]
    _pipeline.fill_unpaired_batches(mdata, mod1, mod2)
    return mdata, mod1, mod2


def run_one(name: str, seed: int, embeddings: Path, use_depth: bool = False) -> dict:
    import mumatch as mm
    from mumatch._ensemble import concatenate_members
    from mumatch._layout import extract_block, paired_positions, representation_params, unpaired_mask

    mdata, mod1, mod2 = load_prepared(name)
    mm.pp.lsi_harmony(mdata, [mod1, mod2], random_state=seed)
    depth = depth_columns(mdata, [mod1, mod2], use_depth)
    paired1, paired2 = paired_positions(mdata, mod1, mod2)
    index1 = np.flatnonzero(unpaired_mask(mdata, mod1, mod2))
    index2 = np.flatnonzero(unpaired_mask(mdata, mod2, mod1))
    truth = extract_block(mdata, mdata.obsp["match_true"], mod1, mod2, index1, index2).indices
    reps, whole = {}, {}
    for mod in (mod1, mod2):
        reps[mod] = np.asarray(mdata[mod].obsm["X_lsi_harmony"], dtype=np.float64)
        whole[mod] = representation_params(mdata, mod, "X_lsi_harmony").get("method") == "clr"

    def points(n: int, fit1: np.ndarray, fit2: np.ndarray, rows1: np.ndarray, rows2: np.ndarray):
        rep1 = leading(reps[mod1], n, whole[mod1], depth[mod1])
        rep2 = leading(reps[mod2], n, whole[mod2], depth[mod2])
        return gaussian_points(rep1[fit1], rep2[fit2], rep1[rows1], rep2[rows2])

    # Choose (n, T) on held-out paired cells: fit on four fifths, match the held-out pairs among themselves.
    order = np.random.default_rng(seed).permutation(paired1.size)
    n_held = max(int(round(HELD_OUT_FRACTION * paired1.size)), 2)
    held, fit = order[:n_held], order[n_held:]
    validation = {}
    for n in N_COMPONENTS:
        x, y = points(n, paired1[fit], paired2[fit], paired1[held], paired2[held])
        for temperature in TEMPERATURES:
            validation[(n, temperature)] = match_score(x, y, temperature, np.arange(n_held))
    chosen_n, chosen_t = max(validation, key=validation.get)
    record = {
        "set": name,
        "seed": seed,
        "n_paired": int(paired1.size),
        "n_test": int(index1.size),
        "chosen": {"n": chosen_n, "T": chosen_t, "held_out_score": validation[(chosen_n, chosen_t)]},
        "validation": {f"n{n}_T{t}": value for (n, t), value in validation.items()},
        "grid": {},
    }
    stored = embeddings / f"{name}_full_{seed}.npz"
    cosine = {}
    if stored.exists():
        saved = np.load(stored)
        if not np.array_equal(saved["truth"], truth):
            raise ValueError(f"{stored} holds other test cells than this run's")
        key = "X_clue_ensemble" if "X_clue_ensemble_1" in saved.files else "X_clue"
        cosine["CLUE"] = [concatenate_members([saved[f"{key}_{side}"].astype(np.float64)]) for side in "12"]
        cosine["CLIP + CLUE"] = [
            concatenate_members([saved[f"X_clip_{side}"], saved[f"{key}_{side}"]]).astype(np.float64) for side in "12"
        ]
    weighted = {
        (label, weight): cosine_points(u, v, weight) for label, (u, v) in cosine.items() for weight in COSINE_WEIGHTS
    }
    for n in N_COMPONENTS:
        x, y = points(n, paired1, paired2, index1, index2)
        for temperature in TEMPERATURES:
            score = match_score(x, y, temperature, truth)
            record["grid"][f"gaussian n{n} T{temperature}"] = score
            if (n, temperature) == (chosen_n, chosen_t):
                record["gaussian"] = score
            root = np.sqrt(temperature)
            for (label, weight), (cu, cv) in weighted.items():
                score = match_score(np.hstack([x / root, cu]), np.hstack([y / root, cv]), 1.0, truth)
                record["grid"][f"{label} + gaussian n{n} T{temperature} w{weight}"] = score
    for label, (u, v) in cosine.items():
        record["grid"][f"{label} (cosine, the pipeline's ε)"] = match_score(*cosine_points(u, v, 1.0), 1.0, truth)
    return record


def hold_out_pairs(name: str, seed: int):
    """The set's MuData with a fifth of the paired cells made unpaired (their mod2 cells renamed ``held_out_*``).

    Returns the MuData, its two modalities, the held-out cells' names (mod1's) and the test cells' names on each side
    (row ``i`` of both one cell).
    """
    from mumatch._layout import extract_block, paired_positions, unpaired_mask

    mdata, mod1, mod2 = load_prepared(name)
    index1 = np.flatnonzero(unpaired_mask(mdata, mod1, mod2))
    index2 = np.flatnonzero(unpaired_mask(mdata, mod2, mod1))
    truth = extract_block(mdata, mdata.obsp["match_true"], mod1, mod2, index1, index2).indices
    test1, test2 = mdata[mod1].obs_names[index1], mdata[mod2].obs_names[index2][truth]
    paired1, _ = paired_positions(mdata, mod1, mod2)
    names = mdata[mod1].obs_names[paired1]
    n_held = max(int(round(HELD_OUT_FRACTION * names.size)), 2)
    held = names[np.random.default_rng(seed).permutation(names.size)[:n_held]]
    # The held-out pairs become unpaired cells (their mod2 cells renamed): CLUE trains on them as on test cells.
    renamed = mdata[mod2].obs_names.to_series()
    is_held = renamed.isin(held)
    renamed[is_held] = "held_out_" + renamed[is_held]
    del mdata.obsp["match_true"]
    mdata[mod2].obs_names = renamed.to_numpy()
    mdata.update()
    return mdata, mod1, mod2, held, (test1, test2)


def run_held_out(name: str, seed: int, use_depth: bool = False, with_clip: bool = False) -> dict:
    """Every setting chosen on held-out pairs that CLUE never sees paired; then the test cells matched once.

    With ``with_clip`` the embedding beside the Gaussian is CLIP + CLUE (the pipeline's CLIP, mean of the cosines).
    """
    import mumatch as mm
    from mumatch import _pipeline
    from mumatch._ensemble import concatenate_members
    from mumatch._layout import paired_positions, representation_params

    mdata, mod1, mod2, held, (test1, test2) = hold_out_pairs(name, seed)
    mm.pp.lsi_harmony(mdata, [mod1, mod2], random_state=seed)
    depth = depth_columns(mdata, [mod1, mod2], use_depth)
    fit1, fit2 = paired_positions(mdata, mod1, mod2)
    n_models = _pipeline.seed_ensemble_size(int(fit1.size))
    mm.tl.train_clue(mdata, [mod1, mod2], ensemble=n_models, key_added="X_clue", random_state=seed, progress_bar=False)
    if with_clip:
        # The pipeline's CLIP (depth columns, its ensemble), trained on the same four fifths of the pairs.
        mm.pp.append_depth(mdata, [mod1, mod2], key_added=_pipeline.CLIP_REP)
        ensemble = _pipeline.ensemble_choice(mdata, mod1, mod2)
        options = {"ensemble": ensemble, "random_state": seed, "progress_bar": False}
        mm.tl.train_clip(mdata, mod1, mod2, use_rep=_pipeline.CLIP_REP, **options)
    rows = {
        "held": (mdata[mod1].obs_names.get_indexer(held), mdata[mod2].obs_names.get_indexer("held_out_" + held)),
        "test": (mdata[mod1].obs_names.get_indexer(test1), mdata[mod2].obs_names.get_indexer(test2)),
    }
    reps, clue = {}, {}
    for mod in (mod1, mod2):
        rep = np.asarray(mdata[mod].obsm["X_lsi_harmony"], dtype=np.float64)
        reps[mod] = rep, representation_params(mdata, mod, "X_lsi_harmony").get("method") == "clr"
        parts = [mdata[mod].obsm[key] for key in (["X_clip", "X_clue"] if with_clip else ["X_clue"])]
        clue[mod] = concatenate_members([np.asarray(part, dtype=np.float64) for part in parts])

    def scores_of(part: str) -> dict[tuple, float]:
        rows1, rows2 = rows[part]
        diagonal = np.arange(rows1.size)  # row i of each side is one cell: the truth is the diagonal
        u, v = clue[mod1][rows1], clue[mod2][rows2]
        out = {("clue",): match_score(*cosine_points(u, v, 1.0), 1.0, diagonal)}
        weighted = {weight: cosine_points(u, v, weight) for weight in COSINE_WEIGHTS}
        for n in N_COMPONENTS:
            rep1 = leading(reps[mod1][0], n, reps[mod1][1], depth[mod1])
            rep2 = leading(reps[mod2][0], n, reps[mod2][1], depth[mod2])
            x, y = gaussian_points(rep1[fit1], rep2[fit2], rep1[rows1], rep2[rows2])
            for temperature in TEMPERATURES:
                out[("gaussian", n, temperature)] = match_score(x, y, temperature, diagonal)
                root = np.sqrt(temperature)
                for weight, (cu, cv) in weighted.items():
                    both = match_score(np.hstack([x / root, cu]), np.hstack([y / root, cv]), 1.0, diagonal)
                    out[("clue + gaussian", n, temperature, weight)] = both
        return out

    held_scores, test_scores = scores_of("held"), scores_of("test")
    record = {"set": name, "seed": seed, "n_models": n_models, "n_fit_pairs": int(fit1.size), "n_held": int(held.size)}
    record["embedding"] = "CLIP + CLUE" if with_clip else "CLUE"
    for kind in ("clue", "gaussian", "clue + gaussian"):
        settings = [key for key in held_scores if key[0] == kind]
        best = max(settings, key=held_scores.get)
        record[kind] = {"setting": list(best[1:]), "held_out": held_scores[best], "test": test_scores[best]}
    record["test_grid"] = {" ".join(map(str, key)): value for key, value in test_scores.items()}
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["multiome", "pbmc10k"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--held-out-pairs",
        action="store_true",
        help="train CLUE with a fifth of the pairs unpaired and choose every setting on them (run_held_out)",
    )
    parser.add_argument(
        "--depth", action="store_true", help="the Gaussian also reads each cell's sequencing depth (pp.append_depth)"
    )
    parser.add_argument("--with-clip", action="store_true", help="--held-out-pairs: the embedding is CLIP + CLUE")
    args = parser.parse_args()
    suffix = ("_depth" if args.depth else "") + ("_clip" if args.with_clip else "")
    if args.held_out_pairs:
        args.out.mkdir(parents=True, exist_ok=True)
        for name in args.sets:
            for seed in args.seeds:
                record = run_held_out(name, seed, args.depth, args.with_clip)
                (args.out / f"held_out_{name}_s{seed}{suffix}.json").write_text(json.dumps(record, indent=1))
                print(name, seed, {kind: record[kind] for kind in ("clue", "gaussian", "clue + gaussian")}, flush=True)
        return
    embeddings = Path(os.environ.get("CLUE_BENCH_EMBEDDINGS", "/tmp/clue_bench/embeddings"))
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    for name in args.sets:
        for seed in args.seeds:
            record = run_one(name, seed, embeddings, args.depth)
            (args.out / f"{name}_s{seed}{suffix}.json").write_text(json.dumps(record, indent=1))
            print(name, seed, record["chosen"], f"gaussian {record['gaussian']:.4f}", flush=True)
            records.append(record)
    import pandas as pd

    print(
        pd.DataFrame(
            [
                {
                    "set": r["set"],
                    "seed": r["seed"],
                    "n, T (held-out)": f"{r['chosen']['n']}, {r['chosen']['T']}",
                    "gaussian": round(r["gaussian"], 4),
                }
                for r in records
            ]
        ).to_markdown(index=False)
    )
    grid = pd.DataFrame([{"set": r["set"], "seed": r["seed"], **r["grid"]} for r in records])
    summary = grid.drop(columns="seed").groupby("set").agg(["mean", "std"]).T.unstack(level=1).round(4)
    print(summary.to_markdown())


if __name__ == "__main__":
    main()
