"""MatchCLOT driven with its own recipe on a NeurIPS 2021 folder; prints/writes one JSON result.

Runs in .venv-peers only (the `matchclot` package is a benchmark peer, never a mumatch dependency):

    .venv-peers/bin/python benchmarks/peers/matchclot_pipeline.py --data DIR --seed 0 --out result.json \
        [--save-prediction pred.npz] [--max-epochs N] [--patience N] [--validation auto|random|batch]

Its recipe, from the installed package (`matchclot.embedding.train`, `matchclot.run.run`):
transductive LSI (its `lsiTransformer`, fitted on train + test of each modality, `.X` as distributed) for GEX and
ATAC, ADT used as is; Harmony (its `harmony` helper's harmony-pytorch call) per modality on train + validation +
test with the batch labels; `Modality_CLIP` with its `Encoder`s and `symmetric_npair_loss`, Adam, the tuned
hyperparameters of `matchclot.utils.hyperparameters` for GEX2ADT / GEX2ATAC; validation every epoch on the
held-out cells (its metric: mean of forward and backward top-1 accuracy), best checkpoint kept, early stopping
with patience 150; cosine similarity of the L2-normalised embeddings (summed over folds when there are several);
OT matching per test batch with its `OT_matching` (POT sinkhorn, reg 0.01).

Where this driver departs from it (all recorded in the JSON `notes`):
- Its training loop runs on `catalyst`, which cannot be installed here (its release's metadata is invalid for current
  pip); the loop below repeats the runner's steps (forward, loss, Adam step per minibatch; validation metric; best
  checkpoint; early stopping with min_delta 1e-5) with plain torch.
- Its recipe validates on a held-out training batch (one model per batch, then an ensemble of the fold models).
  The starters and pbmc10k_cite have ONE training batch: validation then uses a seeded random 20 % of training cells.
- Cells whose row is all zero give NaN LSI rows in its transformer (0/0 in the row standardisation): zero vectors.
- DataLoader workers: 0 (its scripts use 4; irrelevant on 2 cores and small data).
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

# Library chatter (prints at import and run time: pykeops via POT, matchclot, harmony, POT) goes to stderr; the JSON
# result is the only thing written to the real stdout (write_json uses sys.__stdout__).
sys.stdout = sys.stderr
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _neurips import NeurIPSFolder, peak_rss_mb, read_folder, save_prediction, score, write_json  # noqa: E402
from harmony import harmonize  # noqa: E402
from matchclot.embedding.models import Encoder, Modality_CLIP, symmetric_npair_loss  # noqa: E402
from matchclot.matching.matching import OT_matching  # noqa: E402
from matchclot.preprocessing.preprocess import lsiTransformer  # noqa: E402
from matchclot.utils.hyperparameters import defaults_common, defaults_GEX2ADT, defaults_GEX2ATAC  # noqa: E402

# From its training script (matchclot/embedding/train.py): validation loader batch size, early-stopping settings.
VALIDATION_BATCH_SIZE = 256
EARLY_STOPPING_PATIENCE = 150
EARLY_STOPPING_MIN_DELTA = 1e-5
VALIDATION_FRACTION = 0.2
PROGRESS_EVERY = 50


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (peer code may draw from the global numpy state)
    torch.manual_seed(seed)


def lsi_embedding(train: ad.AnnData, test: ad.AnnData, n_components: int, notes: list[str], name: str):
    """Its transductive LSI: fit on train + test, transform each; NaN rows (all-zero cells) become zeros."""
    n_cells = train.n_obs + test.n_obs
    limit = min(train.n_vars, n_cells) - 2  # TruncatedSVD needs n_components + 1 (drop_first) < min(shape)
    if n_components > limit:
        notes.append(f"{name}: LSI components clamped from {n_components} to {limit} (data size)")
        n_components = limit
    transformer = lsiTransformer(n_components=n_components, drop_first=True)
    transformer.fit(ad.concat([train, test], join="outer"))
    frames = []
    for part in (train, test):
        frame = transformer.transform(part)
        n_nan_rows = int(frame.isna().any(axis=1).sum())
        if n_nan_rows:
            notes.append(f"{name}: {n_nan_rows} cells with NaN LSI rows (all-zero cells) set to zero vectors")
            frame = frame.fillna(0.0)
        frames.append(frame)
    return frames[0], frames[1], n_components


def harmonized(frames: list[pd.DataFrame], batches: list[np.ndarray]) -> list[np.ndarray]:
    """Its `harmony` helper's computation: harmony-pytorch on the concatenated frames, split back.

    Its helper calls `harmonize` with the default `n_jobs=-1`, which sets torch to all physical cores; here `n_jobs`
    is torch's thread count (the same by default, but it honours OMP_NUM_THREADS). Measured on this 2-core machine
    under load: 242 s with 2 threads against 7 s with 1 for 400 cells x 256 components.
    """
    embedding = np.concatenate([np.asarray(frame, dtype=np.float64) for frame in frames])
    labels = pd.DataFrame({"batch": np.concatenate(batches)})
    corrected = harmonize(embedding, labels, batch_key="batch", use_gpu=True, n_jobs=torch.get_num_threads())
    bounds = np.cumsum([0] + [len(frame) for frame in frames])
    parts = zip(bounds[:-1], bounds[1:], strict=True)
    return [np.asarray(corrected[start:stop], dtype=np.float32) for start, stop in parts]


def build_model(task: str, hp: dict, dim_gex: int, dim_mod2: int) -> Modality_CLIP:
    """Its architecture: first encoder = ADT/ATAC, second = GEX (as in its scripts)."""
    if task == "GEX2ATAC":
        layers = ([hp["LAYERS_DIM_ATAC"]], [hp["LAYERS_DIM_GEX0"], hp["LAYERS_DIM_GEX1"]])
        dropouts = ([hp["DROPOUT_RATES_ATAC"]], [hp["DROPOUT_RATES_GEX0"], hp["DROPOUT_RATES_GEX1"]])
    else:
        layers = ([hp["LAYERS_DIM_ADT0"], hp["LAYERS_DIM_ADT1"]], [hp["LAYERS_DIM_GEX0"], hp["LAYERS_DIM_GEX1"]])
        dropouts = (
            [hp["DROPOUT_RATES_ADT0"], hp["DROPOUT_RATES_ADT1"]],
            [hp["DROPOUT_RATES_GEX0"], hp["DROPOUT_RATES_GEX1"]],
        )
    return Modality_CLIP(
        Encoder=Encoder,
        layers_dims=layers,
        dropout_rates=dropouts,
        dim_mod1=dim_mod2,
        dim_mod2=dim_gex,
        output_dim=hp["EMBEDDING_DIM"],
        T=hp["LOG_T"],
        noise_amount=hp["SFA_NOISE"],
    )


def validation_metric(embeddings_mod2: torch.Tensor, embeddings_gex: torch.Tensor, temperature: float) -> float:
    """Its checkpoint/early-stopping metric (CustomMetric.avg_acc), formula as it computes it.

    Per block of 256 rows (columns), the block's top-1 accuracy divided by the block size, summed over blocks;
    forward and backward averaged. For <= 256 validation cells this is accuracy / n: same argmax over epochs.
    """
    logits = (temperature * embeddings_mod2) @ embeddings_gex.T
    n_cells = logits.shape[0]
    labels = torch.arange(n_cells)
    forward = backward = 0.0
    for start in range(0, n_cells, VALIDATION_BATCH_SIZE):
        size = min(VALIDATION_BATCH_SIZE, n_cells - start)
        block_labels = labels[start : start + size]
        forward += (logits[start : start + size].argmax(dim=1) == block_labels).float().mean().item() / size
        backward += (logits[:, start : start + size].argmax(dim=0) == block_labels).float().mean().item() / size
    return 0.5 * (forward + backward)


def train_fold(
    task: str,
    hp: dict,
    train_features: tuple[np.ndarray, np.ndarray],
    validation_features: tuple[np.ndarray, np.ndarray],
    max_epochs: int,
    patience: int,
    seed: int,
) -> tuple[Modality_CLIP, dict]:
    """Train one model: its runner's steps with plain torch. Features are (gex, mod2) pairs of aligned rows."""
    seed_everything(seed)
    gex_train, mod2_train = (torch.as_tensor(x, dtype=torch.float32) for x in train_features)
    gex_val, mod2_val = (torch.as_tensor(x, dtype=torch.float32) for x in validation_features)
    model = build_model(task, hp, gex_train.shape[1], mod2_train.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), hp["LR"], weight_decay=hp["WEIGHT_DECAY"])
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(mod2_train, gex_train),
        batch_size=hp["BATCH_SIZE"],
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    best_metric, best_state, best_epoch = -np.inf, None, 0
    stopping_best, bad_epochs, epoch = -np.inf, 0, 0
    start = time.perf_counter()
    for epoch in range(1, max_epochs + 1):
        if epoch % PROGRESS_EVERY == 0:
            print(f"epoch {epoch}: best validation metric {best_metric:.5f} at epoch {best_epoch}", file=sys.stderr)
        model.train()
        for mod2_batch, gex_batch in loader:
            logits, _, _ = model(mod2_batch, gex_batch)
            loss = symmetric_npair_loss(logits, torch.arange(logits.shape[0]))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        with torch.no_grad():
            _, embeddings_mod2, embeddings_gex = model(mod2_val, gex_val)
            metric = validation_metric(embeddings_mod2, embeddings_gex, model.logit_scale.exp().item())
        if metric > best_metric:
            best_metric, best_state, best_epoch = metric, copy.deepcopy(model.state_dict()), epoch
        if metric >= stopping_best + EARLY_STOPPING_MIN_DELTA:
            stopping_best, bad_epochs = metric, 0
        else:
            bad_epochs += 1
            if bad_epochs >= patience:
                break
    train_time = time.perf_counter() - start
    model.load_state_dict(best_state)
    model.eval()
    return model, {
        "epochs": epoch,
        "best_epoch": best_epoch,
        "best_validation_metric": best_metric,
        "train_time_s": train_time,
        "time_per_epoch_s": train_time / max(epoch, 1),
        "n_train_cells": int(gex_train.shape[0]),
        "n_validation_cells": int(gex_val.shape[0]),
    }


def embed(model: Modality_CLIP, gex: np.ndarray, mod2: np.ndarray) -> np.ndarray:
    """Cosine similarity test GEX x test mod2 (its run script: L2-normalised embeddings, no temperature)."""
    with torch.no_grad():
        _, embeddings_mod2, embeddings_gex = model(
            torch.as_tensor(mod2, dtype=torch.float32), torch.as_tensor(gex, dtype=torch.float32)
        )
    return (embeddings_gex @ embeddings_mod2.T).numpy().astype(np.float64)


def batch_split_ot(similarity: np.ndarray, batch_mod1: np.ndarray, batch_mod2: np.ndarray) -> np.ndarray:
    """Its batch-split matching: OT_matching (reg 0.01) within each test batch, zero across batches."""
    plan = np.zeros_like(similarity)
    for batch in sorted(set(batch_mod1) | set(batch_mod2)):
        rows = np.flatnonzero(batch_mod1 == batch)
        columns = np.flatnonzero(batch_mod2 == batch)
        if rows.size == 0 or columns.size == 0:
            continue
        plan[np.ix_(rows, columns)] = OT_matching(similarity[np.ix_(rows, columns)], entropy_reg=0.01)
    return plan


def folds_for(data: NeurIPSFolder, mode: str, seed: int) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """(train index, validation index) pairs over the training cells, and a sentence saying how."""
    batches = np.unique(data.train_batch)
    if mode == "auto":
        mode = "batch" if batches.size > 1 else "random"
    if mode == "batch":
        if batches.size < 2:
            raise ValueError("--validation batch needs at least two training batches")
        folds = [(np.flatnonzero(data.train_batch != b), np.flatnonzero(data.train_batch == b)) for b in batches]
        return folds, f"its recipe: one model per held-out training batch ({batches.size} folds), ensemble of them"
    order = np.random.default_rng(seed).permutation(data.train_mod1.n_obs)
    n_validation = int(round(VALIDATION_FRACTION * order.size))
    folds = [(np.sort(order[n_validation:]), np.sort(order[:n_validation]))]
    why = "one training batch" if batches.size == 1 else "--validation random"
    return folds, f"seeded random {VALIDATION_FRACTION:.0%} of training cells ({why}; its recipe holds out a batch)"


def run(args: argparse.Namespace) -> dict:
    total_start = time.perf_counter()
    data = read_folder(args.data)
    notes = list(data.notes)
    task = {"ADT": "GEX2ADT", "ATAC": "GEX2ATAC"}.get(data.mod2_type)
    if task is None:
        raise ValueError(f"mod2 feature type {data.mod2_type!r} is neither ADT nor ATAC")
    hp = dict(defaults_GEX2ADT if task == "GEX2ADT" else defaults_GEX2ATAC)

    preprocess_start = time.perf_counter()
    gex_train, gex_test, n_gex = lsi_embedding(
        data.train_mod1, data.test_mod1, hp["N_LSI_COMPONENTS_GEX"], notes, "GEX"
    )
    if task == "GEX2ATAC":
        mod2_train, mod2_test, n_mod2 = lsi_embedding(
            data.train_mod2, data.test_mod2, hp["N_LSI_COMPONENTS_ATAC"], notes, "ATAC"
        )
    else:
        # Its recipe feeds ADT `.X` as distributed (no LSI); the encoder width follows the number of proteins.
        mod2_train, mod2_test = data.train_mod2.to_df(), data.test_mod2.to_df()
        n_mod2 = data.train_mod2.n_vars
        if n_mod2 != hp["N_LSI_COMPONENTS_ADT"]:
            notes.append(f"ADT encoder input = {n_mod2} proteins (its default {hp['N_LSI_COMPONENTS_ADT']})")
    # Its prediction step harmonises [all training cells, test cells] once per modality.
    _, gex_test_h = harmonized([gex_train, gex_test], [data.train_batch, data.test_mod1_batch])
    _, mod2_test_h = harmonized([mod2_train, mod2_test], [data.train_batch, data.test_mod2_batch])
    preprocess_time = time.perf_counter() - preprocess_start

    folds, validation = folds_for(data, args.validation, args.seed)
    similarity = np.zeros((data.test_mod1.n_obs, data.test_mod2.n_obs))
    fold_reports = []
    harmony_time = 0.0
    for fold_train, fold_val in folds:
        # Its training step harmonises [train, validation, test] per modality (transductive).
        harmony_start = time.perf_counter()
        gex_parts = harmonized(
            [gex_train.iloc[fold_train], gex_train.iloc[fold_val], gex_test],
            [data.train_batch[fold_train], data.train_batch[fold_val], data.test_mod1_batch],
        )
        mod2_parts = harmonized(
            [mod2_train.iloc[fold_train], mod2_train.iloc[fold_val], mod2_test],
            [data.train_batch[fold_train], data.train_batch[fold_val], data.test_mod2_batch],
        )
        harmony_time += time.perf_counter() - harmony_start
        model, report = train_fold(
            task,
            hp,
            (gex_parts[0], mod2_parts[0]),
            (gex_parts[1], mod2_parts[1]),
            args.max_epochs,
            args.patience,
            args.seed,
        )
        fold_reports.append(report)
        similarity += embed(model, gex_test_h, mod2_test_h)

    match_start = time.perf_counter()
    plan = batch_split_ot(similarity, data.test_mod1_batch, data.test_mod2_batch)
    match_time = time.perf_counter() - match_start
    if args.save_prediction:
        save_prediction(plan, args.save_prediction)

    result = score(plan, data.test_truth, similarity=similarity)
    train_time = sum(report["train_time_s"] for report in fold_reports)
    epochs = sum(report["epochs"] for report in fold_reports)
    result.update(
        {
            "method": "MatchCLOT",
            "data": str(args.data),
            "seed": args.seed,
            "task": task,
            "n_lsi_gex": n_gex,
            "n_input_mod2": n_mod2,
            "hyperparameters": hp,
            "ot_entropy": defaults_common["OT_ENTROPY"],
            "validation": validation,
            "max_epochs": args.max_epochs,
            "patience": args.patience,
            "folds": fold_reports,
            "epochs": epochs,
            "best_epoch": fold_reports[0]["best_epoch"] if len(fold_reports) == 1 else None,
            "train_time_s": train_time,
            "time_per_epoch_s": train_time / max(epochs, 1),
            "preprocess_time_s": preprocess_time + harmony_time,
            "match_time_s": match_time,
            "total_time_s": time.perf_counter() - total_start,
            "peak_rss_mb": peak_rss_mb(),
            "prediction": str(args.save_prediction) if args.save_prediction else None,
            "torch_threads": torch.get_num_threads(),
            "notes": notes
            + [
                "training loop: plain torch repeating its catalyst runner (catalyst is not installable here)",
                f"validation: {validation}",
            ],
        }
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="NeurIPS 2021 competition-format folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON result path (default: stdout)")
    parser.add_argument("--save-prediction", type=Path, default=None, help="write test prediction (.npz, CSR)")
    parser.add_argument("--max-epochs", type=int, default=defaults_GEX2ADT["N_EPOCHS"], help="its N_EPOCHS: 7000")
    parser.add_argument("--patience", type=int, default=EARLY_STOPPING_PATIENCE, help="its patience: 150")
    parser.add_argument("--validation", choices=["auto", "random", "batch"], default="auto")
    args = parser.parse_args(argv)
    result = run(args)
    write_json(result, args.out)


if __name__ == "__main__":
    main()
