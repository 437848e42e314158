"""Matching CLUE's test-cell embeddings again, with and without each subspace L2-normalised (no retraining).

    .venv/bin/python benchmarks/clue_subspaces.py /tmp/clue_bench/embeddings/*_full_*.npz

Reads the test-cell embeddings that ``bench_clue.py`` stores (``CLUE_BENCH_EMBEDDINGS``) from runs whose CLUE
embeddings are the raw posterior means (``normalize_subspaces=False``, as before that option existed) and matches
them with the solver of ``match_ot`` at the pipeline's ε (dense plan, rows normalised): as stored (``concat``), and
with every modality's subspace of every member L2-normalised and the pieces scaled to equal weight
(``per-subspace``, what ``train_clue`` now writes). Scores the match score of each, for CLUE alone and for CLIP + CLUE
(mean of the two cosine similarities). Prints a markdown table: mean ± sd over the files of each set.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import mumatch.ot as ot
from mumatch._ensemble import concatenate_members
from mumatch._pipeline import MATCH_EPSILON, MATCH_MAX_ITER


def match_score(x: np.ndarray, y: np.ndarray, truth: np.ndarray) -> float:
    result = ot.sinkhorn(x, y, epsilon=MATCH_EPSILON, tol=1e-3, max_iter=MATCH_MAX_ITER)
    plan = ot.plan_tile(x, y, result.f, result.g, MATCH_EPSILON, result.cost)
    plan /= plan.sum(axis=1, keepdims=True)
    return float(plan[np.arange(truth.size), truth].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--n-mods", type=int, default=2, help="modalities, i.e. subspaces per CLUE model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    records = []
    for path in args.files:
        stored = np.load(path)
        key = "X_clue_ensemble" if "X_clue_ensemble_1" in stored.files else "X_clue"
        n_models = 1
        if key == "X_clue_ensemble":
            # The ensemble's members are L2-normalised and concatenated, each K * n_latent wide; X_clue is one of them.
            n_models = stored[f"{key}_1"].shape[1] // stored["X_clue_1"].shape[1]
        pieces = n_models * args.n_mods
        for variant in ("concat", "per-subspace"):
            # Each piece L2-normalised, scaled by 1/sqrt(pieces): cosines average over the pieces.
            split = pieces if variant == "per-subspace" else 1
            clue = [concatenate_members(np.split(stored[f"{key}_{side}"], split, axis=1)) for side in "12"]
            both = [
                concatenate_members([stored[f"X_clip_{side}"], part]) for side, part in zip("12", clue, strict=True)
            ]
            name = re.sub(r"_full_\d+$", "", path.stem)
            records.append(
                {
                    "set": name,
                    "embedding": f"CLUE ({n_models} model{'s' if n_models > 1 else ''})",
                    "variant": variant,
                    "CLUE": match_score(*clue, stored["truth"]),
                    "CLIP + CLUE": match_score(*both, stored["truth"]),
                }
            )
    table = pd.DataFrame(records).groupby(["set", "embedding", "variant"])
    summary = table.agg(["mean", "std", "count"])
    rows = []
    for (name, embedding, variant), row in summary.iterrows():
        rows.append(
            {
                "set": name,
                "embedding": embedding,
                "subspaces": variant,
                "runs": int(row[("CLUE", "count")]),
                "CLUE": f"{row[('CLUE', 'mean')]:.4f} ± {row[('CLUE', 'std')]:.4f}",
                "CLIP + CLUE": f"{row[('CLIP + CLUE', 'mean')]:.4f} ± {row[('CLIP + CLUE', 'std')]:.4f}",
            }
        )
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
