"""Read and write the NeurIPS 2021 "match modality" competition format."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData
from scanpy import logging as logg

from .._layout import MISSING_BATCH, extract_block, label_strings, oriented_plan, split_index
from .._modality import ASSAY_NAMES, assay_of_feature_type
from .._validate import check_counts, check_mod, check_mudata

PARTS = ("train_mod1", "train_mod2", "train_sol", "test_mod1", "test_mod2")
MAX_PREDICTIONS_PER_ROW = 1000  # the competition accepted at most 1000 non-zeros per test cell


def _part_path(path: Path, part: str) -> Path:
    """Files are either ``path/part.h5ad`` (a folder) or ``path + part + .h5ad`` (a prefix such as '.../cite_')."""
    if path.is_dir():
        return path / f"{part}.h5ad"
    return Path(f"{path}{part}.h5ad")


def _read(path: Path, part: str) -> ad.AnnData:
    """Read one competition file; a file that is not .h5ad is reported by its part and path (h5py names neither)."""
    try:
        return ad.read_h5ad(path)
    except OSError as error:
        if isinstance(error, FileNotFoundError | IsADirectoryError):
            raise
        raise ValueError(f"{part}: {str(path)!r} is not a readable .h5ad file ({error}); check the path") from error


def _modality_name(adata: ad.AnnData, part: str) -> str:
    if "feature_types" not in adata.var:
        raise ValueError(f"{part}: var['feature_types'] is missing; cannot tell which modality it holds")
    # The competition's GEX/ATAC/ADT, 10x's and muon's names, in any case (as the rest of the package reads them).
    kinds = pd.unique(adata.var["feature_types"].astype(str))
    assays = {assay_of_feature_type(kind) for kind in kinds}
    if len(assays) != 1 or None in assays:
        known = sorted({name for names in ASSAY_NAMES.values() for name in names})
        raise ValueError(
            f"{part}: var['feature_types'] holds {list(kinds)}; every feature of a file must name the same assay, "
            f"one of {known} (any case), e.g. 'GEX', 'ATAC' or 'ADT' as in the competition's files"
        )
    return assays.pop()


def _name_order(given: pd.Index, names: pd.Index) -> np.ndarray | None:
    """Positions of ``names`` in ``given`` when ``given`` names the same cells in another order, else None."""
    if given.equals(names) or not (given.is_unique and names.is_unique and given.size == names.size):
        return None
    if not given.isin(names).all():
        return None
    return given.get_indexer(names)


def _pairing(solution: ad.AnnData, names1: pd.Index, names2: pd.Index, part: str) -> np.ndarray:
    """Position in ``names2`` (the mod2 file's cells) of the cell paired with each mod1 cell (``names1``).

    Rows and columns are read in the mod1 and mod2 files' orders. A solution file whose rows (columns) name the
    mod1 (mod2) cells in another order is put in the files' order by those names; one whose rows or columns carry
    other names (the competition's anonymised ones) is read in its given order, as the format intends. Each mod1
    cell must be paired with exactly one mod2 cell and no mod2 cell with two.
    """
    expected = (names1.size, names2.size)
    if solution.shape != expected:
        raise ValueError(f"{part} has shape {solution.shape}, expected {expected} from the mod1/mod2 files")
    matrix = sp.csr_matrix(solution.X)
    matrix.eliminate_zeros()
    rows, columns = _name_order(solution.obs_names, names1), _name_order(solution.var_names, names2)
    if rows is not None:
        matrix = matrix[rows]
    if columns is not None:
        matrix = matrix[:, columns].tocsr()
    if matrix.getnnz() != names1.size or not np.all(np.diff(matrix.indptr) == 1):
        raise ValueError(f"{part} is not a permutation (pairing) matrix: each row must have exactly one non-zero entry")
    pairing = matrix.indices.copy()
    if np.unique(pairing).size != pairing.size:
        raise ValueError(f"{part} is not a permutation (pairing): some columns are paired with several rows")
    return pairing


def _batch_labels(labels: pd.Series) -> np.ndarray:
    """Batch labels named as the package names them (:func:`label_strings`), missing ones kept missing in the file."""
    text = label_strings(labels).to_numpy(dtype=object)
    text[text == MISSING_BATCH] = np.nan
    return text


def _counts(adata: ad.AnnData, part: str) -> sp.csr_matrix:
    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    counts = sp.csr_matrix(counts, dtype=np.float32)
    remedy = f"store the raw counts in {part}'s layers['counts'] (the competition's files keep them there)"
    check_counts(counts, f"{part} counts (layers['counts'] or .X)", remedy=remedy)
    return counts


def _modality(
    train: ad.AnnData,
    test: ad.AnnData,
    train_names: pd.Index,
    train_batch: np.ndarray | None,
    prefix: str,
    mod: str,
    parts: tuple[str, str],
) -> ad.AnnData:
    """One modality: training cells under their paired names, then test cells under prefixed names."""
    if not train.var_names.equals(test.var_names):
        unique = train.var_names.is_unique and test.var_names.is_unique
        if not (unique and set(train.var_names) == set(test.var_names)):
            raise ValueError(f"{parts[0]} and {parts[1]} have different features; they must describe the same modality")
        # The same features in another order (files one builds oneself): the test cells' columns follow training's.
        test = test[:, train.var_names]
    counts = sp.vstack([_counts(train, parts[0]), _counts(test, parts[1])]).tocsr()
    obs = pd.DataFrame(
        {
            "split": pd.Categorical(["train"] * train.n_obs + ["test"] * test.n_obs, categories=["train", "test"]),
            "original_name": np.concatenate([train.obs_names.to_numpy(), test.obs_names.to_numpy()]).astype(str),
        },
        index=pd.Index(np.concatenate([train_names.to_numpy(), (prefix + test.obs_names).to_numpy()]), dtype=str),
    )
    batch = pd.Series(np.nan, index=obs.index, dtype=object)
    if train_batch is not None:
        batch.iloc[: train.n_obs] = train_batch
    if "batch" in test.obs:
        batch.iloc[train.n_obs :] = _batch_labels(test.obs["batch"])
    obs["batch"] = pd.Categorical(batch)
    adata = ad.AnnData(X=counts.copy(), obs=obs, var=pd.DataFrame(index=train.var_names.astype(str)))
    adata.var["feature_types"] = train.var["feature_types"].astype(str).to_numpy()
    adata.layers["counts"] = counts
    adata.uns["modality"] = mod
    return adata


def _cell_types(full_path: Path | None, mdata: MuData, mod1: str, mod2: str, test_pairing: np.ndarray | None) -> None:
    """Attach ``obs['cell_type']`` from the ``full_*`` files (evaluation only: no model reads it)."""
    if full_path is None or not full_path.exists():
        return
    full = ad.read_h5ad(full_path, backed="r")
    if "cell_type" not in full.obs:
        return
    cell_type = full.obs["cell_type"].astype(str)
    for mod in (mod1, mod2):
        adata = mdata[mod]
        original = adata.obs["original_name"].to_numpy().copy()
        train = (adata.obs["split"] == "train").to_numpy()
        original[train] = adata.obs_names[train]
        if mod == mod2:
            if test_pairing is None:
                continue
            # Test cells of mod2 are anonymised; their labels come through the ground truth (evaluation only).
            test_mod1 = mdata[mod1].obs["original_name"][(mdata[mod1].obs["split"] == "test").to_numpy()].to_numpy()
            # With unequal test sets, mod2 cells that the ground truth pairs with none keep no label.
            mod1_of_mod2 = np.full(int((~train).sum()), None, dtype=object)
            mod1_of_mod2[test_pairing] = test_mod1
            original[~train] = mod1_of_mod2
        adata.obs["cell_type"] = pd.Categorical(cell_type.reindex(original).to_numpy())
        if adata.obs["cell_type"].isna().all():
            logg.warning(f"no cell of '{mod}' is named in {full_path.name}: its cell_type column is empty")


def read_neurips2021(path: str | os.PathLike, *, cell_types: bool = True) -> MuData:
    """Read a NeurIPS 2021 "match modality" data set into one transductive MuData.

    Parameters
    ----------
    path
        A folder holding ``train_mod1.h5ad``, ``train_mod2.h5ad``, ``train_sol.h5ad``, ``test_mod1.h5ad``,
        ``test_mod2.h5ad`` and optionally ``test_sol.h5ad`` (and ``full_rna.h5ad`` for cell types), or a file prefix
        such as ``".../openproblems_bmmc_cite_phase2_rna.censor_dataset.output_"``.
    cell_types
        Attach ``obs['cell_type']`` from ``full_rna.h5ad`` when present (evaluation and label-transfer checks only).

    Returns
    -------
    A MuData with one modality per file pair, named from ``var['feature_types']`` (``'rna'``, ``'atac'``, ``'adt'``;
    the competition's ``GEX``/``ATAC``/``ADT``, 10x's and muon's names, in any case); batches are named as text,
    whole-number floats as integers (``2.0`` is batch ``'2'``, as ``2`` in another file):

    - training cells are paired: the same obs name (mod1's) in both modalities, mod2 re-ordered with ``train_sol``
      (whose rows and columns are read by name when they name the mod1 and mod2 files' cells, else in order);
    - test cells are unpaired: obs names prefixed with the modality (``'rna:…'``, ``'adt:…'``);
    - raw counts in ``.X`` and ``.layers['counts']`` (float32, CSR);
    - ``obs['batch']`` where the files give it (training cells of mod2 take it from the public training pairing; the
      competition's test mod2 has none, so those cells' batch stays missing and matching falls back to one block),
      ``obs['split']`` (train/test) and ``obs['original_name']`` (the name in the files);
    - ``mdata.obsp['match_true']``: the ground-truth pairing of the test cells (rows: test cells of mod1, columns:
      test cells of mod2) when ``test_sol`` exists. It is for scoring only; no model reads it.

    Examples
    --------
    >>> import mumatch as mm
    >>> mdata = mm.datasets.read_neurips2021("data/neurips2021_starter/cite")  # doctest: +SKIP
    """
    path = Path(path)
    files = {part: _part_path(path, part) for part in (*PARTS, "test_sol", "full_rna")}
    return read_neurips2021_files(files, cell_types=cell_types)


def read_neurips2021_files(files: dict[str, str | os.PathLike], *, cell_types: bool = True) -> MuData:
    """Read the competition files named one by one (see :func:`read_neurips2021`).

    Parameters
    ----------
    files
        Paths by part name: ``train_mod1``, ``train_mod2``, ``train_sol``, ``test_mod1``, ``test_mod2`` (required),
        ``test_sol`` and ``full_rna`` (optional; used when the file exists).
    cell_types
        Attach ``obs['cell_type']`` from ``full_rna`` when present.
    """
    if not isinstance(files, Mapping):
        raise ValueError(
            f"files must map part names (e.g. 'train_mod1') to paths, got {type(files).__name__} {files!r}; to read "
            "a folder or a file prefix, use mm.datasets.read_neurips2021(path)"
        )
    files = {part: Path(value) for part, value in files.items() if value is not None}
    missing = [f"{part}: {files.get(part)}" for part in PARTS if part not in files or not files[part].exists()]
    if missing:
        raise FileNotFoundError(f"missing competition files ({', '.join(missing)}); check the path or prefix")
    path = files["train_mod1"].parent
    start = logg.info(f"reading {path}")
    train1, train2, test1, test2 = (_read(files[p], p) for p in ("train_mod1", "train_mod2", "test_mod1", "test_mod2"))
    parts = ("train_mod1", "train_mod2", "test_mod1", "test_mod2")
    for part, adata in zip(parts, (train1, train2, test1, test2), strict=True):
        if not adata.obs_names.is_unique:
            repeated = adata.obs_names[adata.obs_names.duplicated()].unique()[:3].tolist()
            raise ValueError(f"{part} names several cells alike (e.g. {repeated}); each cell needs its own obs name")
    mod1, mod2 = _modality_name(train1, "train_mod1"), _modality_name(train2, "train_mod2")
    if _modality_name(test1, "test_mod1") != mod1 or _modality_name(test2, "test_mod2") != mod2:
        raise ValueError("test files hold other modalities than the training files")
    if mod1 == mod2:
        raise ValueError(f"mod1 and mod2 are both '{mod1}'; a matching task needs two modalities")
    if train1.n_obs != train2.n_obs:
        raise ValueError(
            f"train_mod1 has {train1.n_obs} cells but train_mod2 has {train2.n_obs}; training cells must be paired"
        )
    if test1.n_obs != test2.n_obs:
        logg.warning(f"test_mod1 has {test1.n_obs} cells and test_mod2 {test2.n_obs}: the test cells are not 1:1")
    train_pairing = _pairing(_read(files["train_sol"], "train_sol"), train1.obs_names, train2.obs_names, "train_sol")
    train2 = train2[train_pairing].copy()
    # A paired training cell has one batch: the mod1 file's, else the mod2 file's (in the pairing's order).
    train_batch = None
    for train in (train1, train2):
        if train_batch is None and "batch" in train.obs:
            train_batch = _batch_labels(train.obs["batch"])

    first = _modality(train1, test1, train1.obs_names, train_batch, f"{mod1}:", mod1, ("train_mod1", "test_mod1"))
    second = _modality(train2, test2, train1.obs_names, train_batch, f"{mod2}:", mod2, ("train_mod2", "test_mod2"))
    mdata = MuData({mod1: first, mod2: second})
    mdata.uns["neurips2021"] = {"mod1": mod1, "mod2": mod2, "dataset_id": str(train1.uns.get("dataset_id", ""))}

    test_pairing = None
    solution_path = files.get("test_sol")
    if solution_path is not None and solution_path.exists():
        test_pairing = _pairing(_read(solution_path, "test_sol"), test1.obs_names, test2.obs_names, "test_sol")
        rows = mdata.obs_names.get_indexer(f"{mod1}:" + test1.obs_names)
        cols = mdata.obs_names.get_indexer(f"{mod2}:" + test2.obs_names[test_pairing])
        mdata.obsp["match_true"] = sp.csr_matrix(
            (np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(mdata.n_obs, mdata.n_obs)
        )
    if cell_types:
        _cell_types(files.get("full_rna"), mdata, mod1, mod2, test_pairing)
    logg.info(
        "    finished",
        time=start,
        deep=f"{mod1}: {first.n_obs} cells, {mod2}: {second.n_obs} cells ({train1.n_obs} paired)",
    )
    return mdata


def _task_mods(mdata: MuData, mod1: str | None, mod2: str | None) -> tuple[str, str]:
    """The two modalities: given, else those recorded by :func:`read_neurips2021`, else the first two; checked."""
    reader = mdata.uns.get("neurips2021", {})
    names = list(mdata.mod)
    # A MuData with fewer than two modalities has no default: check_mod names the argument to pass.
    mod1 = mod1 or reader.get("mod1") or (names[0] if names else None)
    mod2 = mod2 or reader.get("mod2") or (names[1] if len(names) > 1 else None)
    check_mod(mdata, mod1, "mod1")
    check_mod(mdata, mod2, "mod2")
    return mod1, mod2


def prediction_matrix(mdata: MuData, key: str, mod1: str | None = None, mod2: str | None = None) -> sp.csr_matrix:
    """The plan ``mdata.obsp[key]`` restricted to test mod1 × test mod2 cells, in the files' order.

    Parameters
    ----------
    mdata
        MuData from :func:`read_neurips2021` with a plan in ``mdata.obsp[key]``.
    key
        The plan's key in ``mdata.obsp``.
    mod1, mod2
        The modalities of the rows and columns (default: those recorded by :func:`read_neurips2021`, else the
        first two). A plan that :func:`mumatch.tl.match_ot` solved the other way round is transposed.

    Returns
    -------
    A (test cells of ``mod1`` × test cells of ``mod2``) CSR matrix, rows and columns in the order of the test files,
    as :func:`write_prediction` writes it (before keeping 1000 entries per row).
    """
    check_mudata(mdata)
    mod1, mod2 = _task_mods(mdata, mod1, mod2)
    if key not in mdata.obsp:
        raise KeyError(f"key={key!r} not found in mdata.obsp (it has {list(mdata.obsp)}); run mm.tl.match_ot first")
    if mod1 == mod2:
        raise ValueError(f"mod1 and mod2 must differ, both are {mod1!r}")
    plan = oriented_plan(mdata, key, mod1, mod2)  # a plan solved the other way round is transposed
    block = extract_block(mdata, plan, mod1, mod2, split_index(mdata, mod1), split_index(mdata, mod2))
    if block.nnz == 0:
        # An empty submission scores 0 whatever the matching was: most often a plan made by hand (no recorded
        # modalities, so read with mod1's cells along its rows) asked for the other way round.
        raise ValueError(
            f"mdata.obsp['{key}'] gives no weight from a test cell of '{mod1}' to a test cell of '{mod2}'; check "
            f"mod1 and mod2 (a plan not written by mm.tl.match_ot is read with mod1's cells along its rows; record "
            f"them as mdata.uns['{key}'] = {{'params': {{'mod1': ..., 'mod2': ...}}}})"
        )
    return block


def _keep_top(matrix: sp.csr_matrix, n_keep: int) -> sp.csr_matrix:
    """Keep the ``n_keep`` largest entries of each row."""
    matrix = matrix.tocsr(copy=True)
    for row in np.flatnonzero(np.diff(matrix.indptr) > n_keep):
        start, stop = matrix.indptr[row], matrix.indptr[row + 1]
        values = matrix.data[start:stop]
        values[np.argsort(values)[: values.size - n_keep]] = 0
    matrix.eliminate_zeros()
    return matrix


def write_prediction(
    mdata: MuData,
    key: str,
    path: str | os.PathLike,
    *,
    method_id: str = "mumatch",
    mod1: str | None = None,
    mod2: str | None = None,
) -> None:
    """Write a plan in the competition's submission format.

    Parameters
    ----------
    mdata
        MuData from :func:`read_neurips2021` with a plan in ``mdata.obsp[key]``.
    key
        The plan's key in ``mdata.obsp``.
    path
        The ``.h5ad`` file to write: ``X`` is a sparse (test mod1 cells × test mod2 cells) matrix in the files'
        original order, with at most 1000 non-zeros per row; ``obs_names``/``var_names`` are the files' cell names;
        ``uns`` holds ``dataset_id`` and ``method_id``.
    method_id
        Written to ``uns['method_id']``.
    mod1, mod2
        The two modalities (default: those recorded by :func:`read_neurips2021`).
    """
    matrix = _keep_top(prediction_matrix(mdata, key, mod1, mod2), MAX_PREDICTIONS_PER_ROW)
    mod1, mod2 = _task_mods(mdata, mod1, mod2)
    for mod in (mod1, mod2):
        if "original_name" not in mdata[mod].obs:
            raise KeyError(
                f"mdata['{mod}'].obs has no 'original_name' column: write_prediction writes the competition's files "
                "for data read with mm.datasets.read_neurips2021 (the names its files use)"
            )
    names1 = mdata[mod1].obs["original_name"].to_numpy()[split_index(mdata, mod1)]
    names2 = mdata[mod2].obs["original_name"].to_numpy()[split_index(mdata, mod2)]
    prediction = ad.AnnData(
        X=matrix.astype(np.float32),
        obs=pd.DataFrame(index=pd.Index(names1, dtype=str)),
        var=pd.DataFrame(index=pd.Index(names2, dtype=str)),
        uns={"dataset_id": mdata.uns.get("neurips2021", {}).get("dataset_id", ""), "method_id": method_id},
    )
    prediction.write_h5ad(path, compression="gzip")
