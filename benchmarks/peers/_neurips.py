"""Shared by the peer drivers (run in .venv-peers): read a NeurIPS 2021 folder, score a prediction, write JSON.

Nothing here imports mumatch: the peer drivers run in the benchmark-only virtualenv, and the scores they report
must not depend on our package. The metric definitions below are the ones written in benchmarks/peers/README.md.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

FILES = ("train_mod1", "train_mod2", "train_sol", "test_mod1", "test_mod2", "test_sol")


@dataclass
class NeurIPSFolder:
    """The six competition files, with training mod2 put in the order of training mod1."""

    train_mod1: ad.AnnData
    train_mod2: ad.AnnData
    test_mod1: ad.AnnData
    test_mod2: ad.AnnData
    test_truth: np.ndarray  # test_truth[i] = column of test_mod2 paired with row i of test_mod1
    train_batch: np.ndarray
    test_mod1_batch: np.ndarray
    test_mod2_batch: np.ndarray
    notes: list[str]

    @property
    def mod2_type(self) -> str:
        return str(self.train_mod2.var["feature_types"].iloc[0])


def _pairing(sol: ad.AnnData) -> np.ndarray:
    # The solution matrix is the source of truth: `uns['pairing_ix']` follows different conventions in the
    # starters (its argsort) and in pbmc10k_cite (the index itself).
    matrix = sp.csr_matrix(sol.X)
    if not np.all(np.diff(matrix.indptr) == 1):
        raise ValueError("solution matrix must have exactly one non-zero per row")
    return matrix.indices.astype(np.int64)


def read_folder(path: str | os.PathLike) -> NeurIPSFolder:
    """Read a competition-format folder; fill the batch labels the drivers need and say how in `notes`."""
    folder = Path(path)
    missing = [name for name in FILES if not (folder / f"{name}.h5ad").exists()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(f'{m}.h5ad' for m in missing)}")
    adatas = {name: ad.read_h5ad(folder / f"{name}.h5ad") for name in FILES}
    notes: list[str] = []
    train_order = _pairing(adatas["train_sol"])
    train_mod2 = adatas["train_mod2"][train_order].copy()
    train_mod1 = adatas["train_mod1"]
    train_mod2.obs_names = train_mod1.obs_names
    if "batch" in train_mod1.obs:
        train_batch = train_mod1.obs["batch"].astype(str).to_numpy()
    else:
        train_batch = adatas["train_sol"].obs["batch"].astype(str).to_numpy()
    test_mod1 = adatas["test_mod1"]
    test_mod2 = adatas["test_mod2"]
    test_mod1_batch = test_mod1.obs["batch"].astype(str).to_numpy()
    if "batch" in test_mod2.obs and not test_mod2.obs["batch"].isna().any():
        test_mod2_batch = test_mod2.obs["batch"].astype(str).to_numpy()
    elif len(set(test_mod1_batch)) == 1:
        test_mod2_batch = np.full(test_mod2.n_obs, test_mod1_batch[0])
        notes.append(
            f"test_mod2 has no batch column; its cells were given test_mod1's single batch '{test_mod1_batch[0]}' "
            "(the test cells are the same cells in both modalities)"
        )
    else:
        test_mod2_batch = np.full(test_mod2.n_obs, "unknown")
        notes.append("test_mod2 has no batch column and test_mod1 has several batches: test_mod2 batch = 'unknown'")
    return NeurIPSFolder(
        train_mod1=train_mod1,
        train_mod2=train_mod2,
        test_mod1=test_mod1,
        test_mod2=test_mod2,
        test_truth=_pairing(adatas["test_sol"]),
        train_batch=train_batch,
        test_mod1_batch=test_mod1_batch,
        test_mod2_batch=test_mod2_batch,
        notes=notes,
    )


def score(prediction: np.ndarray | sp.spmatrix, truth: np.ndarray, similarity: np.ndarray | None = None) -> dict:
    """Competition score, top-1, top-5 (row-wise over test mod1 cells) and FOSCTTM.

    `match_score`: mean over rows i of max(P[i, truth[i]], 0) / sum_j max(P[i, j], 0) (0 for an empty row).
    `top1`/`top5`: fraction of rows whose true partner is among the 1/5 largest entries of the row.
    `foscttm`: on `similarity` (the embedding similarity, larger = closer) when given, else on P: mean over both
    directions of the fraction of candidates strictly more similar than the true partner.
    """
    plan = prediction.toarray() if sp.issparse(prediction) else np.asarray(prediction)
    plan = np.clip(plan.astype(np.float64), 0.0, None)
    n_rows = plan.shape[0]
    rows = np.arange(n_rows)
    row_sums = plan.sum(axis=1)
    true_mass = plan[rows, truth]
    match_score = float(np.mean(np.divide(true_mass, row_sums, out=np.zeros(n_rows), where=row_sums > 0)))
    # Rank of the true partner within its row; ties count against it (a constant row scores no hit).
    n_strictly_larger = (plan > true_mass[:, None]).sum(axis=1)
    n_ties = (plan == true_mass[:, None]).sum(axis=1) - 1
    rank = n_strictly_larger + n_ties
    reference = plan if similarity is None else np.asarray(similarity, dtype=np.float64)
    true_similarity = reference[rows, truth]
    closer_in_row = (reference > true_similarity[:, None]).sum(axis=1) / (reference.shape[1] - 1)
    inverse = np.empty_like(truth)
    inverse[truth] = rows
    true_by_column = reference[inverse, np.arange(reference.shape[1])]
    closer_in_column = (reference > true_by_column[None, :]).sum(axis=0) / (reference.shape[0] - 1)
    return {
        "match_score": match_score,
        "top1": float(np.mean(rank < 1)),
        "top5": float(np.mean(rank < 5)),
        "foscttm": float(0.5 * (closer_in_row.mean() + closer_in_column.mean())),
        "foscttm_on": "embedding similarity" if similarity is not None else "prediction",
        "random_match_score": 1.0 / plan.shape[1],
        "n_test": int(n_rows),
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_json(result: dict, out: str | os.PathLike | None) -> None:
    """Write the result to `out` (or stdout) as JSON."""
    text = json.dumps(result, indent=2, sort_keys=True, default=float)
    if out is None:
        # The drivers send library chatter on stdout to stderr; the JSON goes to the real stdout.
        sys.__stdout__.write(text + "\n")
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text + "\n")


def save_prediction(plan: np.ndarray | sp.spmatrix, path: str | os.PathLike) -> None:
    """Save the test mod1 x test mod2 prediction as a sparse float32 CSR .npz (scipy.sparse.save_npz)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sp.save_npz(path, sp.csr_matrix(plan, dtype=np.float32))
