"""``lsi_harmony``: transductive per-modality embeddings (TF-IDF/LSI or CLR/PCA, then Harmony), and their projection."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData
from scanpy import logging as logg

from .._modality import assay_of
from .._validate import (
    check_batch_key,
    check_copy,
    check_int,
    check_key_added,
    check_layer,
    check_mods,
    check_mudata,
    obs_column,
)
from ._harmony import harmony_batches, run_harmony
from ._lsi import matmul, randomized_svd, standardize_rows
from ._normalize import as_csr, check_count_values, clr, inverse_document_frequency, tfidf_log1p

# MatchCLOT's tuned LSI sizes (matchclot.utils.hyperparameters, defaults_GEX2ATAC / defaults_GEX2ADT:
# N_LSI_COMPONENTS_GEX=192, N_LSI_COMPONENTS_ATAC=256). ADT is used as is there (CLR of 134 proteins): None keeps
# every CLR feature.
DEFAULT_N_COMPS = {"rna": 192, "atac": 256, "adt": None}
# The first LSI component of ATAC follows sequencing depth (Stuart et al. 2021, Signac); RNA keeps it, as the issue
# specifies (MatchCLOT drops it for both).
DROP_FIRST = {"rna": False, "atac": True}
# Each cell's LSI components are centred and scaled across its components: fewer than two carry nothing.
MIN_LSI_COMPS = 2


@dataclass
class Embedding:
    """What one modality's computation produced, before anything is written."""

    uncorrected: np.ndarray
    corrected: np.ndarray
    uns: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _resolve_n_comps(n_comps: int | Mapping[str, int] | None, mods: list[str], kinds: dict[str, str]) -> dict:
    if isinstance(n_comps, Mapping):
        unknown = [name for name in n_comps if name not in mods]
        if unknown:
            raise KeyError(f"n_comps names modalities {unknown} that are not processed; use names from {mods}")
        # None for a modality means its default, as a missing key does.
        values = {mod: DEFAULT_N_COMPS[kinds[mod]] if n_comps.get(mod) is None else n_comps[mod] for mod in mods}
    elif n_comps is None:
        values = {mod: DEFAULT_N_COMPS[kinds[mod]] for mod in mods}
    else:
        values = dict.fromkeys(mods, n_comps)
    for mod, value in values.items():
        if value is not None:
            # Each cell's LSI components are standardised across components: one component would become zeros.
            check_int(value, f"n_comps for '{mod}'", minimum=1 if kinds[mod] == "adt" else MIN_LSI_COMPS)
    return values


def _feature_mask(mdata: MuData, mod: str, use_highly_variable: bool | None) -> np.ndarray | None:
    var = mdata[mod].var
    if use_highly_variable is None:
        use_highly_variable = "highly_variable" in var
    if not use_highly_variable:
        return None
    if "highly_variable" not in var:
        raise KeyError(
            f"use_highly_variable=True but mdata['{mod}'].var has no 'highly_variable' column; run "
            "sc.pp.highly_variable_genes first or pass use_highly_variable=False"
        )
    flags = var["highly_variable"]
    # Only true booleans: astype(bool) reads NaN and the text "False" (a column read back from a file) as True.
    values = flags.astype(object).to_numpy()
    if flags.isna().any() or not all(isinstance(value, bool | np.bool_) for value in values):
        raise ValueError(
            f"mdata['{mod}'].var['highly_variable'] must hold True/False for every feature (it has "
            f"{flags.dtype} values such as {flags.iloc[0]!r}); fix the column or pass use_highly_variable=False"
        )
    mask = values.astype(bool)
    if not mask.any():
        raise ValueError(f"mdata['{mod}'].var['highly_variable'] selects no feature; pass use_highly_variable=False")
    return mask


def _repeated(names: pd.Index) -> list[str]:
    return [str(name) for name in names[names.duplicated()].unique()[:5]]


def _check_projectable_names(mdata: MuData, mod: str, fitted_names: np.ndarray, key: str) -> None:
    """The projection matches features by name: a fitted or query name used twice would be ambiguous."""
    fitted = pd.Index(fitted_names)
    if not fitted.is_unique:
        raise ValueError(
            f"the reference's '{mod}' projection '{key}' was fitted on repeated feature names (e.g. "
            f"{_repeated(fitted)}), so features cannot be matched by name; call var_names_make_unique() on the "
            "reference and fit it again"
        )
    query = mdata[mod].var_names
    ambiguous = query[query.duplicated(keep=False) & query.isin(fitted)]
    if len(ambiguous):
        raise ValueError(
            f"mdata['{mod}'] repeats feature names that the projection uses (e.g. {list(ambiguous.unique()[:5])}); "
            f"call mdata['{mod}'].var_names_make_unique() so that each reference feature names one query feature"
        )


def raw_counts(mdata: MuData, mod: str, layer: str | None) -> sp.csr_matrix:
    """The modality's counts in ``layer`` (``.X`` when None) as CSR, refused unless they are raw counts."""
    where = f"mdata['{mod}'].layers['{layer}']" if layer is not None else f"mdata['{mod}'].X"
    matrix = check_layer(mdata, mod, layer)
    if matrix is None:
        raise ValueError(f"{where} is empty; pass layer= naming the layer with raw counts")
    counts = as_csr(matrix)
    check_count_values(counts, where)
    return counts


def _counts(mdata: MuData, mod: str, layer: str | None, feature_mask: np.ndarray | None) -> sp.csr_matrix:
    counts = raw_counts(mdata, mod, layer)
    if feature_mask is not None:
        counts = counts[:, feature_mask]
    return counts


def _clamp(requested: int, limit: int, mod: str, notes: list[str]) -> int:
    if requested <= limit:
        return requested
    message = f"n_comps={requested} for '{mod}' is more than its data allow; using {limit}"
    logg.warning(message)
    notes.append(message)
    return limit


def _fit_lsi(counts: sp.csr_matrix, n_comps: int, drop_first: bool, random_state: int, mod: str, notes: list[str]):
    # The last singular directions of an n × p matrix are numerical noise: keep one below min(n, p).
    limit = min(counts.shape) - 1 - int(drop_first)
    if limit < MIN_LSI_COMPS:
        raise ValueError(
            f"mdata['{mod}'] has {counts.shape[0]} cells × {counts.shape[1]} features: too few for an LSI of at least "
            f"{MIN_LSI_COMPS} components; leave '{mod}' out with mods="
        )
    n_comps = _clamp(n_comps, limit, mod, notes)
    idf = inverse_document_frequency(counts)
    normalised = tfidf_log1p(counts, idf)
    singular_values, components = randomized_svd(normalised, n_comps + int(drop_first), random_state=random_state)
    if drop_first:
        singular_values, components = singular_values[1:], components[1:]
    components = np.ascontiguousarray(components, dtype=np.float32)
    uncorrected = standardize_rows(matmul(normalised, components.T))
    fitted = {
        "idf": idf,
        "components": components,
        "singular_values": singular_values.astype(np.float32),
        "n_dropped_components": int(drop_first),
    }
    return uncorrected, fitted, n_comps


def _project_lsi(counts: sp.csr_matrix, fitted: Mapping) -> np.ndarray:
    normalised = tfidf_log1p(counts, np.asarray(fitted["idf"], dtype=np.float32))
    return standardize_rows(matmul(normalised, np.asarray(fitted["components"], dtype=np.float32).T))


def _fit_adt(counts: sp.csr_matrix, n_comps: int | None, mod: str, notes: list[str]):
    values = clr(counts)
    if n_comps is not None and n_comps > values.shape[1]:
        _clamp(n_comps, values.shape[1], mod, notes)  # warns and notes that every CLR feature is kept
    if n_comps is None or n_comps >= values.shape[1]:
        return values, {}, values.shape[1]
    n_comps = _clamp(n_comps, max(1, min(values.shape) - 1), mod, notes)
    mean = values.mean(axis=0)
    _, singular_values, components = np.linalg.svd(values - mean, full_matrices=False)
    components = np.ascontiguousarray(components[:n_comps], dtype=np.float32)
    largest = np.abs(components).argmax(axis=1)
    signs = np.sign(components[np.arange(n_comps), largest])
    components *= np.where(signs == 0, 1, signs).astype(np.float32)[:, None]
    fitted = {"mean": mean.astype(np.float32), "components": components, "singular_values": singular_values[:n_comps]}
    return (values - fitted["mean"]) @ components.T, fitted, n_comps


def _project_adt(counts: sp.csr_matrix, fitted: Mapping) -> np.ndarray:
    values = clr(counts)
    if "components" not in fitted:
        return values
    return (values - np.asarray(fitted["mean"], dtype=np.float32)) @ np.asarray(fitted["components"], np.float32).T


def _batch_obs(mdata: MuData, mod: str, batch_key: str | None) -> pd.DataFrame:
    """The modality's ``.obs`` with the batch column, taken from ``mdata.obs`` when only the MuData has it."""
    obs = mdata[mod].obs
    column = None if batch_key is None or batch_key in obs else obs_column(mdata, mod, batch_key)
    return obs if column is None else obs.assign(**{batch_key: column})


def _harmonize(
    uncorrected: np.ndarray, obs: pd.DataFrame, harmony: bool, batch_key: str | None, random_state: int, mod: str
) -> tuple[np.ndarray, dict, list[str]]:
    if not harmony:
        return uncorrected.copy(), {"applied": False, "reason": "harmony=False"}, []
    batches, reason, warn = harmony_batches(obs, batch_key)
    if batches is None:
        notes = []
        if batch_key is not None:
            message = f"skipping Harmony for '{mod}': {reason}"
            (logg.warning if warn else logg.info)(message)
            notes.append(message)
        return uncorrected.copy(), {"applied": False, "reason": reason}, notes
    corrected = run_harmony(uncorrected, batches, random_state=random_state)
    return corrected, {"applied": True, "reason": reason, "n_batches": int(batches.nunique())}, []


def _check_common(mdata: object, mods, key_added: str, batch_key: str | None, random_state: int):
    check_mudata(mdata)
    names = check_mods(mdata, mods)
    check_key_added(key_added)
    check_batch_key(mdata, names, batch_key)
    check_int(random_state, "random_state", minimum=0)
    return names


def fit_fingerprint(fitted: Mapping[str, object], feature_names: Sequence[str]) -> str:
    """A short hash of a fitted projection and its features: its identity, carried by the embeddings made with it.

    A model records it for its input, so that a query embedded with another fit (``lsi_harmony`` run again on new
    cells: the same width, another basis) is pointed out instead of silently embedded.
    """
    digest = hashlib.sha1()
    for name in sorted(fitted):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(fitted[name]).tobytes())
    digest.update("\0".join(map(str, feature_names)).encode())
    return digest.hexdigest()[:16]


def _write(
    mdata: MuData, results: dict[str, Embedding], key_added: str, copy: bool, start, action: str
) -> MuData | None:
    target = mdata.copy() if copy else mdata
    replaced = [mod for mod in results if key_added in mdata[mod].obsm or f"{key_added}_uncorrected" in mdata[mod].obsm]
    if replaced and not copy:  # a copy's embeddings replace nothing of the caller's
        logg.warning(f"overwriting .obsm['{key_added}'] (and '{key_added}_uncorrected') of {replaced}")
    for mod, result in results.items():
        adata = target[mod]
        adata.obsm[key_added] = result.corrected
        adata.obsm[f"{key_added}_uncorrected"] = result.uncorrected
        adata.uns[key_added] = result.uns
    logg.info(
        "    finished",
        time=start,
        deep=(
            f"{action} for {list(results)}, added\n"
            f"    .obsm['{key_added}'], the embedding (after Harmony where applied; per modality)\n"
            f"    .obsm['{key_added}_uncorrected'], the embedding before Harmony\n"
            f"    .uns['{key_added}'], parameters and the fitted projection"
        ),
    )
    return target if copy else None


def lsi_harmony(
    mdata: MuData,
    mods: Sequence[str] | None = None,
    *,
    n_comps: int | Mapping[str, int] | None = None,
    batch_key: str | None = "batch",
    layer: str | None = "counts",
    use_highly_variable: bool | None = None,
    harmony: bool = True,
    key_added: str = "X_lsi_harmony",
    random_state: int = 0,
    copy: bool = False,
) -> MuData | None:
    """Embed every cell of each modality: TF-IDF + LSI (RNA, ATAC) or CLR (+ PCA) (ADT), then Harmony.

    Transductive: each modality is fitted on all its cells together (paired training and unpaired test cells).

    - RNA and ATAC: TF-IDF (tf = counts / cell total, idf = n_cells / feature total, Seurat v3) → L1 row
      normalisation → log1p(x · 1e4) → truncated SVD of the sparse matrix (randomized, float32) → projection of every
      cell on the components, the first one dropped for ATAC (it follows sequencing depth) → each cell's components
      centred and scaled to unit standard deviation.
    - ADT (``var['feature_types']`` mostly ``ADT`` or ``Antibody Capture``, or else a modality named ``'adt'``,
      ``'prot'`` or ``'protein'``): per-cell CLR (muon's ``prot.pp.clr``,
      ``axis=1``), then PCA to ``n_comps`` components when ``n_comps`` is less than the number of proteins; by default
      the CLR matrix itself.
    - Harmony (harmonypy) on the components with ``obs[batch_key]``. A modality without that column, where some
      cells lack a batch label or with a single level is left uncorrected, with a logged warning (information for a
      single level: nothing to correct) and the reason in ``.uns[key_added]['harmony']``; partly correcting it
      would put labelled and unlabelled cells in different coordinates.

    Parameters
    ----------
    mdata
        MuData with raw counts in every processed modality.
    mods
        Modalities to embed (default: all).
    n_comps
        Number of components, one for all or per modality name (a missing name or ``None``: that modality's
        default). Default: MatchCLOT's tuned sizes, RNA 192 and ATAC 256 LSI components, ADT all CLR features. At
        least 2 for LSI (each cell's components are standardised). Clamped with a warning when the data have fewer
        cells or features.
    batch_key
        Column of each modality's ``.obs`` (else of ``mdata.obs``) with the batch; ``None`` skips Harmony. A modality
        without the column is left uncorrected with a warning; a column that no modality has raises a KeyError, except
        the default ``"batch"`` (data without batches).
    layer
        Layer with the raw counts (``None``: ``.X``).
    use_highly_variable
        Use only ``var['highly_variable']`` features; ``None``: when that column exists.
    harmony
        Run Harmony after the LSI/PCA.
    key_added
        Name of the outputs.
    random_state
        Seed of the randomized SVD and of Harmony.
    copy
        Return a modified copy instead of working in place.

    Returns
    -------
    ``None``, or a copy of ``mdata`` when ``copy=True``. Adds to each processed modality:

    - ``.obsm[key_added]``: the embedding (float32; after Harmony where applied);
    - ``.obsm[key_added + '_uncorrected']``: the embedding before Harmony;
    - ``.uns[key_added]``: ``'params'``, ``'harmony'`` (applied or why not) and the fitted projection
      (``'feature_names'``; LSI: ``'idf'``, ``'components'``, ``'singular_values'``, ``'n_dropped_components'``;
      ADT PCA: ``'mean'``, ``'components'``), which :func:`mumatch.pp.lsi_harmony_transform` uses to embed new cells.

    Examples
    --------
    >>> import mumatch as mm
    >>> mdata = mm.datasets.bmmc_starter("multiome")
    >>> mm.pp.lsi_harmony(mdata)
    >>> mdata["atac"].obsm["X_lsi_harmony"].shape
    (500, 256)
    """
    names = _check_common(mdata, mods, key_added, batch_key, random_state)
    check_copy(mdata, copy)
    # A modality of no recognised assay holds counts of some features: the RNA recipe (TF-IDF LSI) suits them.
    assays = {mod: assay_of(mod, mdata[mod].var) for mod in names}
    kinds = {mod: assay or "rna" for mod, assay in assays.items()}
    unknown = [mod for mod, assay in assays.items() if assay is None]
    if unknown:
        logg.warning(
            f"the assay of {unknown} is told neither by var['feature_types'] nor by the modality name: embedded as "
            "RNA (TF-IDF LSI); for proteins name the modality 'adt' (or set var['feature_types'] = 'ADT'), for peaks "
            "'atac'"
        )
    sizes = _resolve_n_comps(n_comps, names, kinds)
    masks = {mod: _feature_mask(mdata, mod, use_highly_variable) for mod in names}
    start = logg.info(f"computing LSI + Harmony embeddings of {names}")
    counts = {mod: _counts(mdata, mod, layer, masks[mod]) for mod in names}

    results = {}
    for mod in names:
        kind = kinds[mod]
        notes: list[str] = []
        logg.info(f"    '{mod}' ({kind}): {counts[mod].shape[0]} cells × {counts[mod].shape[1]} features")
        if kind == "adt":
            uncorrected, fitted, used = _fit_adt(counts[mod], sizes[mod], mod, notes)
            method = "clr" if not fitted else "clr_pca"
        else:
            uncorrected, fitted, used = _fit_lsi(counts[mod], sizes[mod], DROP_FIRST[kind], random_state, mod, notes)
            method = "lsi"
        uncorrected = np.ascontiguousarray(uncorrected, dtype=np.float32)
        corrected, harmony_info, harmony_notes = _harmonize(
            uncorrected, _batch_obs(mdata, mod, batch_key), harmony, batch_key, random_state, mod
        )
        feature_names = mdata[mod].var_names if masks[mod] is None else mdata[mod].var_names[masks[mod]]
        uns = {
            "params": {
                "method": method,
                "kind": kind,
                "n_comps": int(used),
                "layer": layer,
                "batch_key": batch_key,
                "use_highly_variable": masks[mod] is not None,
                "harmony": bool(harmony),
                "random_state": int(random_state),
                "fit_id": fit_fingerprint(fitted, feature_names),
            },
            "harmony": harmony_info,
            "feature_names": np.asarray(feature_names, dtype=str),
            **fitted,
        }
        if not feature_names.is_unique:
            # The fit does not need names, its projection onto new cells does (lsi_harmony_transform refuses it).
            message = (
                f"'{mod}' repeats feature names (e.g. {_repeated(feature_names)}): lsi_harmony_transform cannot "
                f"project new cells with this fit; call mdata['{mod}'].var_names_make_unique() before fitting"
            )
            logg.warning(message)
            notes.append(message)
        results[mod] = Embedding(uncorrected, corrected, uns, notes + harmony_notes)
        if results[mod].notes:
            uns["notes"] = results[mod].notes
    return _write(mdata, results, key_added, copy, start, "computed")


def _query_counts(
    mdata: MuData, mod: str, layer: str | None, feature_names: np.ndarray, notes: list[str]
) -> sp.csr_matrix:
    """The query's counts with columns in the reference's feature order; reference features it lacks are zeros."""
    counts = _counts(mdata, mod, layer, None)
    if mdata[mod].var_names.equals(pd.Index(feature_names)):
        return counts
    positions = pd.Index(feature_names).get_indexer(mdata[mod].var_names)
    n_found = int((positions >= 0).sum())
    if n_found == 0:
        raise ValueError(
            f"mdata['{mod}'] shares no feature with the reference's '{mod}'; the query must measure the same features"
        )
    if n_found < feature_names.size:
        message = f"'{mod}': {feature_names.size - n_found} of {feature_names.size} reference features are missing "
        message += "in the query; they count as zeros"
        logg.warning(message)
        notes.append(message)
    coo = counts.tocoo()
    keep = positions[coo.col] >= 0
    return sp.csr_matrix(
        (coo.data[keep], (coo.row[keep], positions[coo.col[keep]])), shape=(counts.shape[0], feature_names.size)
    )


def lsi_harmony_transform(
    mdata: MuData,
    reference: MuData,
    mods: Sequence[str] | None = None,
    *,
    key: str = "X_lsi_harmony",
    batch_key: str | None = "batch",
    layer: str | None = "counts",
    harmony: bool = True,
    key_added: str | None = None,
    random_state: int = 0,
    copy: bool = False,
) -> MuData | None:
    """Embed new cells with the LSI (or CLR/PCA) that :func:`lsi_harmony` fitted on a reference.

    Each query modality goes through the reference's normalisation (its IDF weights), is projected on the reference's
    components and standardised as the reference was; then Harmony corrects the query's own batches (same rules as
    :func:`lsi_harmony`). Features are matched by name; reference features missing from the query count as zeros.
    Projecting the reference onto itself reproduces its ``.obsm[key + '_uncorrected']``.

    Parameters
    ----------
    mdata
        The query MuData, raw counts in ``layer``.
    reference
        A MuData on which :func:`lsi_harmony` ran with ``key_added=key``.
    mods
        Modalities to embed (default: every query modality).
    key
        The reference's ``key_added``.
    batch_key
        Column of each query modality's ``.obs`` (else of ``mdata.obs``) with the batch; ``None`` skips Harmony. As in
        :func:`lsi_harmony`, a column that no query modality has raises a KeyError, except the default ``"batch"``.
    layer
        Layer with the query's raw counts (``None``: ``.X``).
    harmony
        Run Harmony on the query's projection.
    key_added
        Name of the query's outputs (default: ``key``). A fitted projection of the query under that name is
        replaced with a warning; projecting the reference onto itself needs another name, which keeps the
        reference usable.
    random_state
        Seed of Harmony.
    copy
        Return a modified copy instead of working in place.

    Returns
    -------
    ``None``, or a copy of ``mdata`` when ``copy=True``. Adds to each processed query modality
    ``.obsm[key_added]``, ``.obsm[key_added + '_uncorrected']`` and ``.uns[key_added]`` (``'params'``, ``'harmony'``).

    Examples
    --------
    >>> import mumatch as mm
    >>> reference = mm.datasets.bmmc_starter("cite")
    >>> mm.pp.lsi_harmony(reference)
    >>> query = mm.datasets.bmmc_starter("cite")
    >>> mm.pp.lsi_harmony_transform(query, reference)
    >>> query["rna"].obsm["X_lsi_harmony"].shape
    (600, 192)
    """
    key_added = key if key_added is None else key_added
    names = _check_common(mdata, mods, key_added, batch_key, random_state)
    check_copy(mdata, copy)
    check_mudata(reference, "reference")
    fits, replaced = {}, []
    for mod in names:
        existing = mdata[mod].uns.get(key_added)
        if isinstance(existing, Mapping) and "feature_names" in existing:
            # Writing into a copy cannot harm the reference; writing into its own AnnData (the same MuData, or a
            # MuData built from its modalities) would destroy its fit.
            if not copy and mdata.mod[mod] is reference.mod.get(mod):
                raise ValueError(
                    f"projecting the reference onto itself would replace its fitted projection "
                    f"mdata['{mod}'].uns['{key_added}']; pass another key_added (e.g. key_added='X_projected')"
                )
            replaced.append(mod)
        if mod not in reference.mod:
            raise KeyError(f"modality '{mod}' is not in the reference (it has {list(reference.mod)}); pass mods=")
        fitted = reference[mod].uns.get(key)
        if not isinstance(fitted, Mapping) or "params" not in fitted or "feature_names" not in fitted:
            raise KeyError(
                f"reference['{mod}'].uns['{key}'] holds no fitted projection; run mm.pp.lsi_harmony(reference) "
                "first or pass key= naming its key_added"
            )
        _check_projectable_names(mdata, mod, np.asarray(fitted["feature_names"]), key)
        fits[mod] = fitted
    start = logg.info(f"projecting {names} on the reference's '{key}'")
    notes = {mod: [] for mod in names}
    for mod in replaced:
        # e.g. a query cut from the reference, which carries its .uns: it can no longer serve as a reference itself.
        message = f"replacing the fitted projection in mdata['{mod}'].uns['{key_added}'] with the query's parameters"
        logg.warning(message)
        notes[mod].append(message)
    counts = {
        mod: _query_counts(mdata, mod, layer, np.asarray(fits[mod]["feature_names"]), notes[mod]) for mod in names
    }

    results = {}
    for mod in names:
        fitted = fits[mod]
        if fitted["params"]["method"] == "lsi":
            uncorrected = _project_lsi(counts[mod], fitted)
        else:
            uncorrected = _project_adt(counts[mod], fitted)
        uncorrected = np.ascontiguousarray(uncorrected, dtype=np.float32)
        corrected, harmony_info, harmony_notes = _harmonize(
            uncorrected, _batch_obs(mdata, mod, batch_key), harmony, batch_key, random_state, mod
        )
        params = {
            **dict(fitted["params"]),
            "reference_key": key,
            "layer": layer,
            "batch_key": batch_key,
            "harmony": bool(harmony),
            "random_state": int(random_state),
        }
        uns = {"params": params, "harmony": harmony_info}
        if notes[mod] + harmony_notes:
            uns["notes"] = notes[mod] + harmony_notes
        results[mod] = Embedding(uncorrected, corrected, uns)
    return _write(mdata, results, key_added, copy, start, "projected")
