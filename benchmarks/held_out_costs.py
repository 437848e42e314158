"""Probe: costs on CLUE's and CLIP's embeddings, each family's setting chosen on held-out pairs, test scored once.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/held_out_costs.py train --sets cite multiome pbmc10k \
        --seeds 0 1 2 --cache /tmp/held_out_costs
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/held_out_costs.py score --cache /tmp/held_out_costs \
        --out benchmarks/results/held_out_costs_s25.json

``train``: as ``gaussian_pmi.py --held-out-pairs --depth --with-clip`` (a fifth of the pairs made unpaired,
``lsi_harmony``, CLUE with the pipeline's ensemble size, the pipeline's CLIP on the depth-appended representation),
then caches the representations, depth columns and embeddings per (set, seed) in ``--cache``.

``score``: for each family, the setting with the best match score on the held-out pairs, and that setting's score on
the test cells. Families: the cosine of CLUE, CLIP and CLIP + CLUE (mean of the cosines); the Gaussian likelihood
cost (``gaussian_pmi.gaussian_points``) on ``lsi + depth`` (leading 30/50/100 components), on an embedding + depth
(``g[EMB]+depth``) and on ``lsi + EMB + depth`` (30/50 components); temperatures ``T`` in :data:`TEMPERATURES`.
``--families`` keeps the named ones (the cosines always run). Prints a markdown table (mean ± sd over seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gaussian_pmi as g  # noqa: E402

TEMPERATURES = (1.0, 0.5, 0.25, 0.1, 0.05)
EMBEDDINGS = ("clue", "clip", "clip+clue")


def train(name: str, seed: int, out: Path) -> None:
    """Train CLUE and CLIP with a fifth of the pairs held out; cache what ``score`` needs in ``out``."""
    import mumatch as mm
    from mumatch import _pipeline
    from mumatch._layout import paired_positions, representation_params

    mdata, mod1, mod2, held, (test1, test2) = g.hold_out_pairs(name, seed)
    mm.pp.lsi_harmony(mdata, [mod1, mod2], random_state=seed)
    depth = g.depth_columns(mdata, [mod1, mod2], True)
    fit1, fit2 = paired_positions(mdata, mod1, mod2)
    n_models = _pipeline.seed_ensemble_size(int(fit1.size))
    start = time.perf_counter()
    options = {"random_state": seed, "progress_bar": False}
    mm.tl.train_clue(mdata, [mod1, mod2], ensemble=n_models, key_added="X_clue", **options)
    t_clue = time.perf_counter() - start
    mm.pp.append_depth(mdata, [mod1, mod2], key_added=_pipeline.CLIP_REP)
    ensemble = _pipeline.ensemble_choice(mdata, mod1, mod2)
    start = time.perf_counter()
    mm.tl.train_clip(mdata, mod1, mod2, use_rep=_pipeline.CLIP_REP, ensemble=ensemble, **options)
    t_clip = time.perf_counter() - start
    arrays = {
        "fit1": fit1,
        "fit2": fit2,
        "held1": mdata[mod1].obs_names.get_indexer(held),
        "held2": mdata[mod2].obs_names.get_indexer("held_out_" + held),
        "test1": mdata[mod1].obs_names.get_indexer(test1),
        "test2": mdata[mod2].obs_names.get_indexer(test2),
        "t_clue": t_clue,
        "t_clip": t_clip,
        "n_models": n_models,
    }
    for side, mod in (("1", mod1), ("2", mod2)):
        arrays["rep" + side] = np.asarray(mdata[mod].obsm["X_lsi_harmony"], dtype=np.float32)
        arrays["whole" + side] = representation_params(mdata, mod, "X_lsi_harmony").get("method") == "clr"
        arrays["depth" + side] = depth[mod]
        arrays["clue" + side] = np.asarray(mdata[mod].obsm["X_clue"], dtype=np.float32)
        arrays["clip" + side] = np.asarray(mdata[mod].obsm["X_clip"], dtype=np.float32)
    np.savez(out, **arrays)
    print(name, seed, f"CLUE {t_clue:.0f} s, CLIP {t_clip:.0f} s", flush=True)


def kinds_of(families: list[str] | None) -> list[tuple[str, tuple]]:
    """The Gaussian families and their component counts (None: the embedding alone)."""
    kinds = [("lsi+depth", (30, 50, 100))]
    for embedding in EMBEDDINGS:
        kinds += [(f"g[{embedding}]+depth", (None,)), (f"g lsi+[{embedding}]+depth", (30, 50))]
    return [kind for kind in kinds if families is None or kind[0] in families]


def score(path: Path, families: list[str] | None) -> dict:
    """Each family's held-out-chosen setting and its test score, for one cached (set, seed)."""
    from mumatch._ensemble import concatenate_members

    cache = np.load(path)
    fit = cache["fit1"], cache["fit2"]
    rows = {"held": (cache["held1"], cache["held2"]), "test": (cache["test1"], cache["test2"])}
    emb = {e: [cache[e + s].astype(np.float64) for s in "12"] for e in ("clue", "clip")}
    emb["clip+clue"] = [concatenate_members([emb["clip"][i], emb["clue"][i]]) for i in range(2)]

    def features(kind: str, side: int, n: int | None) -> np.ndarray:
        s = "12"[side]
        parts = [g.leading(cache["rep" + s].astype(np.float64), n, bool(cache["whole" + s]))] if "lsi" in kind else []
        parts += [emb[e][side] for e in EMBEDDINGS if f"[{e}]" in kind]
        return np.hstack([*parts, cache["depth" + s]])

    def scores(part: str) -> dict[tuple, float]:
        rows1, rows2 = rows[part]
        diagonal = np.arange(rows1.size)
        out = {}
        for e in EMBEDDINGS:
            points = g.cosine_points(emb[e][0][rows1], emb[e][1][rows2], 1.0)
            out[(f"cos[{e}]",)] = g.match_score(*points, 1.0, diagonal)
        for kind, ns in kinds_of(families):
            for n in ns:
                a, b = features(kind, 0, n), features(kind, 1, n)
                x, y = g.gaussian_points(a[fit[0]], b[fit[1]], a[rows1], b[rows2])
                for temperature in TEMPERATURES:
                    try:
                        out[(kind, n, temperature)] = g.match_score(x, y, temperature, diagonal)
                    except FloatingPointError:  # the cost left float32's range at this temperature
                        out[(kind, n, temperature)] = float("nan")
        return out

    held, test = scores("held"), scores("test")
    record = {}
    for family in sorted({key[0] for key in held}):
        keys = [key for key in held if key[0] == family]
        best = max(keys, key=lambda key: held[key] if np.isfinite(held[key]) else -1.0)
        record[family] = {"setting": [str(v) for v in best[1:]], "held": held[best], "test": test[best]}
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["train", "score"])
    parser.add_argument("--sets", nargs="+", default=["cite", "multiome", "pbmc10k"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="score: JSON of every (set, seed)")
    parser.add_argument("--families", nargs="+", help="score: the Gaussian families to run (default: all)")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.command == "train":
        for name in args.sets:
            for seed in args.seeds:
                train(name, seed, args.cache / f"{name}_{seed}.npz")
        return
    import pandas as pd

    records = {}
    for name in args.sets:
        for seed in args.seeds:
            records[f"{name}_{seed}"] = score(args.cache / f"{name}_{seed}.npz", args.families)
            if args.out is not None:
                args.out.write_text(json.dumps(records, indent=1))
    table = pd.DataFrame(
        [
            {"set": key.rsplit("_", 1)[0], "family": family, "test": value["test"]}
            for key, record in records.items()
            for family, value in record.items()
        ]
    )
    summary = table.groupby(["set", "family"])["test"].agg(["mean", "std", "count"]).round(4).reset_index()
    print(summary.sort_values(["set", "mean"], ascending=[True, False]).to_markdown(index=False))


if __name__ == "__main__":
    main()
