"""CLUE (scglue's SCCLUEModel) driven with the NeurIPS 2021 competition's configuration; one JSON result.

Runs in .venv-peers only (scglue is a benchmark peer, never a mumatch dependency):

    .venv-peers/bin/python benchmarks/peers/scglue_clue.py --data DIR --seed 0 --schedule-fraction 1.0 \
        --out result.json [--save-prediction pred.npz] [--finetune-epochs 5]

The competition's recipe (its train and run steps), re-expressed here:
1. Preprocessing fitted on the training cells, applied to all cells: GEX: highly variable genes (seurat_v3 on
   counts, by batch; 5,000 for CITE, 10,000 for multiome), `.X` standardised per gene, clipped to +-10, PCA with 100
   components; ADT: all proteins, standardised, clipped, PCA (100 components or fewer when there are fewer proteins);
   ATAC: the 30,000 most accessible peaks as decoder features, LSI of all peaks from counts (TF-IDF, rows rescaled
   to 1e4, log1p, 100 SVD components scaled by 1/singular value, rows standardised).
2. Pre-training on the paired training cells: negative binomial decoders on counts, encoders on the PCA/LSI, batch
   as decoder covariate and shared discriminator batches, the published architecture and loss weights, scglue's
   automatic schedule (burn-in, epochs, patience, LR patience) scaled by `--schedule-fraction`.
3. Fine-tuning on train + test cells together (transductive; test cells unpaired), from the pre-trained weights:
   lr 1e-3, no burn-in, 5 epochs (the competition's value for non-phase-2 data), patience 8, LR patience 3.
4. Embeddings of the test cells, matched within each test batch by shared-nearest-neighbour (SNN) matching with
   k = 1 (Jaccard index of shared neighbours, rows normalised): the competition's `snn_matching`.

scglue 0.4.1 renamed the competition's `lam_cross` into `lam_joint_cross` and `lam_real_cross`: both get its value;
`domain_weight` became `modality_weight`; paired cells are found by shared obs names (`use_obs_names=True`).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from sklearn.neighbors import NearestNeighbors
from sklearn.utils.extmath import randomized_svd

# Library chatter (prints at import and run time: pykeops via POT, matchclot, harmony, POT) goes to stderr; the JSON
# result is the only thing written to the real stdout (write_json uses sys.__stdout__).
sys.stdout = sys.stderr
sys.path.insert(0, str(Path(__file__).resolve().parent))
import scglue  # noqa: E402
from _neurips import peak_rss_mb, read_folder, save_prediction, score, write_json  # noqa: E402

# The competition's CLUE configurations (published with its submission), by data type.
CONFIGS = {
    "cite": {
        "n_genes": 5000,
        "latent_dim": 20,
        "x2u_h_depth": 2,
        "x2u_h_dim": 512,
        "u2x_h_depth": 1,
        "u2x_h_dim": 128,
        "du_h_depth": 2,
        "du_h_dim": 128,
        "dropout": 0.2,
        "lam_data": 1.0,
        "lam_kl": 1.0,
        "lam_align": 2.0,
        "lam_cross": 2.0,
        "lam_cos": 1.0,
        "normalize_u": True,
    },
    "multiome": {
        "n_genes": 10000,
        "latent_dim": 50,
        "x2u_h_depth": 2,
        "x2u_h_dim": 512,
        "u2x_h_depth": 1,
        "u2x_h_dim": 256,
        "du_h_depth": 1,
        "du_h_dim": 256,
        "dropout": 0.2,
        "lam_data": 1.0,
        "lam_kl": 0.3,
        "lam_align": 0.02,
        "lam_cross": 1.0,
        "lam_cos": 0.02,
        "normalize_u": True,
    },
}
ARCHITECTURE_KEYS = ("latent_dim", "x2u_h_depth", "x2u_h_dim", "u2x_h_depth", "u2x_h_dim", "du_h_depth", "du_h_dim")
N_COMPONENTS = 100
N_TOP_PEAKS = 30000
PRETRAIN_LR = 2e-3  # SCCLUEModel.compile's default, used by the competition's training step
FINETUNE = {"lr": 1e-3, "patience": 8, "reduce_lr_patience": 3}  # the competition's run step
VAL_SPLIT = 0.1  # SCCLUEModel.fit's default
BATCH_SIZE = 128  # SCCLUEModel.fit's default
SNN_K = 1


class ScaledPCA:
    """GEX/ADT: features standardised with training statistics, clipped to +-10, principal axes of training cells."""

    def fit(self, adata: ad.AnnData, features: list[str]) -> ScaledPCA:
        self.features = features
        x = _dense(adata[:, features].X)
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        self.std = np.where(std > 0, std, 1.0)
        scaled = self._scale(x)
        n_components = min(N_COMPONENTS, *scaled.shape)
        _, _, self.axes = randomized_svd(scaled, n_components, n_iter=15, random_state=0)
        return self

    def _scale(self, x: np.ndarray) -> np.ndarray:
        return np.clip((x - self.mean) / self.std, -10, 10)

    def transform(self, adata: ad.AnnData) -> np.ndarray:
        return (self._scale(_dense(adata[:, self.features].X)) @ self.axes.T).astype(np.float32)


class PeakLSI:
    """ATAC: LSI of all peaks from counts, fitted on the training cells."""

    def fit(self, adata: ad.AnnData) -> PeakLSI:
        counts = sp.csr_matrix(adata.layers["counts"], dtype=np.float64)
        peak_totals = np.asarray(counts.sum(axis=0)).ravel()
        self.idf = counts.shape[0] / np.where(peak_totals > 0, peak_totals, 1.0)
        normalised = self._normalise(counts)
        n_components = min(N_COMPONENTS, min(normalised.shape) - 1)
        _, self.singular_values, self.axes = randomized_svd(normalised, n_components, n_iter=15, random_state=0)
        return self

    def _normalise(self, counts: sp.csr_matrix) -> sp.csr_matrix:
        tf = sp.diags(1.0 / np.maximum(np.asarray(counts.sum(axis=1)).ravel(), 1e-12)) @ counts
        tfidf = tf @ sp.diags(self.idf)
        scaled = sp.diags(1e4 / np.maximum(np.asarray(tfidf.sum(axis=1)).ravel(), 1e-12)) @ tfidf
        return scaled.log1p().tocsr()

    def transform(self, adata: ad.AnnData) -> np.ndarray:
        normalised = self._normalise(sp.csr_matrix(adata.layers["counts"], dtype=np.float64))
        embedding = normalised @ self.axes.T / self.singular_values
        embedding -= embedding.mean(axis=1, keepdims=True)
        std = embedding.std(axis=1, ddof=1, keepdims=True)
        return (embedding / np.where(std > 0, std, 1.0)).astype(np.float32)


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)


def prepare(train: ad.AnnData, test: ad.AnnData, kind: str, n_genes: int, notes: list[str]):
    """Fit the modality's preprocessing on the training cells; return configured train and train+test AnnDatas."""
    train, test = train.copy(), test.copy()
    for adata in (train, test):
        adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
        adata.layers["counts"] = sp.csr_matrix(adata.layers["counts"], dtype=np.float32)
    if kind == "GEX":
        n_top = min(n_genes, train.n_vars)
        if n_top < train.n_vars:
            sc.pp.highly_variable_genes(train, layer="counts", n_top_genes=n_top, flavor="seurat_v3", batch_key="batch")
        else:
            train.var["highly_variable"] = True
            notes.append(f"GEX: {train.n_vars} genes <= {n_genes} HVGs asked: all genes used")
    elif kind == "ADT":
        train.var["highly_variable"] = True
    else:
        top = np.argsort(np.asarray(train.X.sum(axis=0)).ravel())[-N_TOP_PEAKS:]
        train.var["highly_variable"] = np.isin(np.arange(train.n_vars), top)
    test.var["highly_variable"] = train.var["highly_variable"].to_numpy()
    if kind == "ATAC":
        transformer, rep = PeakLSI().fit(train), "X_lsi"
    else:
        features = train.var_names[train.var["highly_variable"].to_numpy()].tolist()
        transformer, rep = ScaledPCA().fit(train, features), "X_pca"
    train.obsm[rep] = transformer.transform(train)
    test.obsm[rep] = transformer.transform(test)
    both = ad.concat([train, test], merge="same")
    both.var["highly_variable"] = train.var["highly_variable"].to_numpy()
    for adata in (train, both):
        scglue.models.configure_dataset(
            adata,
            "NB",
            use_highly_variable=True,
            use_layer="counts",
            use_rep=rep,
            use_batch="batch",
            use_obs_names=True,
        )
    return train, both


def automatic_schedule(n_cells: int, lr: float) -> dict[str, int]:
    """scglue's AUTO values (SCCLUEModel.fit) for this number of cells, before any scaling."""
    batches_per_epoch = n_cells * (1 - VAL_SPLIT) / BATCH_SIZE
    programme = {
        "align_burnin": scglue.models.SCCLUEModel.ALIGN_BURNIN_PRG,
        "max_epochs": scglue.models.SCCLUEModel.MAX_EPOCH_PRG,
        "patience": scglue.models.SCCLUEModel.PATIENCE_PRG,
        "reduce_lr_patience": scglue.models.SCCLUEModel.REDUCE_LR_PATIENCE_PRG,
    }
    return {key: max(math.ceil(value / lr / batches_per_epoch), math.ceil(value)) for key, value in programme.items()}


def build(adatas: dict[str, ad.AnnData], config: dict, seed: int, lr: float) -> scglue.models.SCCLUEModel:
    model = scglue.models.SCCLUEModel(
        adatas,
        **{key: config[key] for key in ARCHITECTURE_KEYS},
        dropout=config["dropout"],
        shared_batches=True,
        random_seed=seed,
    )
    model.compile(
        lam_data=config["lam_data"],
        lam_kl=config["lam_kl"],
        lam_align=config["lam_align"],
        lam_joint_cross=config["lam_cross"],
        lam_real_cross=config["lam_cross"],
        lam_cos=config["lam_cos"],
        normalize_u=config["normalize_u"],
        modality_weight={key: 1.0 for key in adatas},
        lr=lr,
    )
    return model


def fit_counting_epochs(model: scglue.models.SCCLUEModel, adatas: dict, **schedule) -> tuple[int, float]:
    """Fit and return (epochs run, seconds); epochs are counted from scglue's once-per-epoch metric report."""
    epochs = []
    report = model.trainer.report_metrics

    def counting_report(*args, **kwargs):
        epochs.append(1)
        return report(*args, **kwargs)

    model.trainer.report_metrics = counting_report
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scglue_clue_") as directory:
        model.fit(adatas, directory=directory, **schedule)
    return len(epochs), time.perf_counter() - start


def snn_matching(x: np.ndarray, y: np.ndarray, k: int = SNN_K) -> sp.csr_matrix:
    """Shared-nearest-neighbour matching on L2-normalised embeddings (the competition's rule, k = 1).

    Cell i of x and cell j of y are linked by how many neighbours they share: x_i's neighbours among y against
    y_j's neighbours among y, and y_j's neighbours among x against x_i's neighbours among x; the count becomes a
    Jaccard index and rows are normalised.
    """
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    index_y = NearestNeighbors(n_neighbors=k).fit(y)
    index_x = NearestNeighbors(n_neighbors=k).fit(x)
    shared = index_y.kneighbors_graph(x) @ index_y.kneighbors_graph(y).T
    shared = shared + (index_x.kneighbors_graph(y) @ index_x.kneighbors_graph(x).T).T
    shared = sp.csr_matrix(shared)
    shared.data = shared.data / (4 * k - shared.data)
    row_sums = np.asarray(shared.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags(1.0 / np.where(row_sums > 0, row_sums, 1.0)) @ shared)


def run(args: argparse.Namespace) -> dict:
    total_start = time.perf_counter()
    data = read_folder(args.data)
    notes = list(data.notes)
    omics = {"ADT": "cite", "ATAC": "multiome"}.get(data.mod2_type)
    if omics is None:
        raise ValueError(f"mod2 feature type {data.mod2_type!r} is neither ADT nor ATAC")
    config = CONFIGS[omics]

    preprocess_start = time.perf_counter()
    train_names = [f"train-{i}" for i in range(data.train_mod1.n_obs)]
    parts = {}
    for key, train, test, test_batch, kind in (
        ("gex", data.train_mod1, data.test_mod1, data.test_mod1_batch, "GEX"),
        ("other", data.train_mod2, data.test_mod2, data.test_mod2_batch, data.mod2_type),
    ):
        train = ad.AnnData(
            X=train.X,
            obs=pd.DataFrame({"batch": data.train_batch}, index=train_names),
            var=pd.DataFrame(index=train.var_names),
            layers={"counts": train.layers["counts"]},
        )
        test = ad.AnnData(
            X=test.X,
            obs=pd.DataFrame({"batch": test_batch}, index=[f"test-{key}-{i}" for i in range(test.n_obs)]),
            var=pd.DataFrame(index=test.var_names),
            layers={"counts": test.layers["counts"]},
        )
        parts[key] = prepare(train, test, kind, config["n_genes"], notes)
    preprocess_time = time.perf_counter() - preprocess_start

    automatic = automatic_schedule(data.train_mod1.n_obs, PRETRAIN_LR)
    schedule = {key: max(1, math.ceil(args.schedule_fraction * value)) for key, value in automatic.items()}
    pretrain = build({key: value[0] for key, value in parts.items()}, config, args.seed, PRETRAIN_LR)
    pretrain_epochs, pretrain_time = fit_counting_epochs(
        pretrain,
        {key: value[0] for key, value in parts.items()},
        val_split=VAL_SPLIT,
        batch_size=BATCH_SIZE,
        **schedule,
    )
    finetune_epochs = finetune_time = 0
    model = pretrain
    if args.finetune_epochs > 0:
        both = {key: value[1] for key, value in parts.items()}
        model = build(both, config, args.seed, FINETUNE["lr"])
        model.adopt_pretrained_model(pretrain)
        finetune_epochs, finetune_time = fit_counting_epochs(
            model,
            both,
            align_burnin=0,
            max_epochs=args.finetune_epochs,
            patience=FINETUNE["patience"],
            reduce_lr_patience=FINETUNE["reduce_lr_patience"],
        )

    test_gex = parts["gex"][1][parts["gex"][1].obs_names.str.startswith("test-")]
    test_other = parts["other"][1][parts["other"][1].obs_names.str.startswith("test-")]
    embedding_gex = model.encode_data("gex", test_gex)
    embedding_other = model.encode_data("other", test_other)
    match_start = time.perf_counter()
    entries = []
    for batch in sorted(set(data.test_mod1_batch) | set(data.test_mod2_batch)):
        rows = np.flatnonzero(data.test_mod1_batch == batch)
        columns = np.flatnonzero(data.test_mod2_batch == batch)
        if rows.size and columns.size:
            block = snn_matching(embedding_gex[rows], embedding_other[columns]).tocoo()
            entries.append((rows[block.row], columns[block.col], block.data))
    plan_rows, plan_columns, plan_values = (np.concatenate(part) for part in zip(*entries, strict=True))
    plan = sp.csr_matrix((plan_values, (plan_rows, plan_columns)), shape=(test_gex.n_obs, test_other.n_obs))
    match_time = time.perf_counter() - match_start
    if args.save_prediction:
        save_prediction(plan, args.save_prediction)

    unit_gex = embedding_gex / np.linalg.norm(embedding_gex, axis=1, keepdims=True)
    unit_other = embedding_other / np.linalg.norm(embedding_other, axis=1, keepdims=True)
    result = score(plan, data.test_truth, similarity=unit_gex @ unit_other.T)
    train_time = pretrain_time + finetune_time
    epochs = pretrain_epochs + finetune_epochs
    result.update(
        {
            "method": "CLUE (scglue SCCLUEModel)",
            "data": str(args.data),
            "seed": args.seed,
            "omics": omics,
            "config": config,
            "schedule_fraction": args.schedule_fraction,
            "automatic_schedule": automatic,
            "schedule": schedule,
            "pretrain_epochs": pretrain_epochs,
            "pretrain_time_s": pretrain_time,
            "finetune_epochs": finetune_epochs,
            "finetune_time_s": finetune_time,
            "epochs": epochs,
            "train_time_s": train_time,
            "time_per_epoch_s": train_time / max(epochs, 1),
            "iterations_per_epoch": math.ceil(data.train_mod1.n_obs * (1 - VAL_SPLIT) / BATCH_SIZE),
            "preprocess_time_s": preprocess_time,
            "match_time_s": match_time,
            "matching": f"batch-split SNN, k={SNN_K}",
            "total_time_s": time.perf_counter() - total_start,
            "peak_rss_mb": peak_rss_mb(),
            "prediction": str(args.save_prediction) if args.save_prediction else None,
            "notes": notes
            + [
                "seed: --seed (the competition fixed random_seed 5 for CITE, 2 for multiome)",
                f"schedule: scglue's automatic schedule x {args.schedule_fraction} (burn-in, epochs, patience, "
                "LR patience scaled together)",
            ],
        }
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path, help="NeurIPS 2021 competition-format folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schedule-fraction", type=float, default=1.0, help="fraction of scglue's AUTO schedule")
    parser.add_argument("--finetune-epochs", type=int, default=5, help="transductive fine-tuning epochs (0: none)")
    parser.add_argument("--out", type=Path, default=None, help="JSON result path (default: stdout)")
    parser.add_argument("--save-prediction", type=Path, default=None, help="write test prediction (.npz, CSR)")
    args = parser.parse_args(argv)
    if not 0 < args.schedule_fraction <= 1:
        parser.error("--schedule-fraction must lie in (0, 1]")
    result = run(args)
    write_json(result, args.out)


if __name__ == "__main__":
    main()
