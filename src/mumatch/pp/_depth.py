"""``append_depth``: each cell's sequencing depth, standardised within its batch, beside its representation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from mudata import MuData
from scanpy import logging as logg

from .._validate import (
    check_batch_key,
    check_copy,
    check_key_added,
    check_mods,
    check_mudata,
    check_rep,
    obs_column,
)
from ._lsi_harmony import raw_counts
from ._normalize import ROW_BLOCK

DEPTH_COLUMNS = ("log1p_total_counts", "log1p_n_features")


def depth_values(mdata: MuData, mod: str, layer: str | None) -> np.ndarray:
    """``log1p`` of each cell's total counts and of its number of detected features (cells × 2, float64)."""
    counts = raw_counts(mdata, mod, layer)
    totals = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    detected = np.empty(counts.shape[0], dtype=np.float64)
    # Stored entries may include explicit zeros; counted per block of rows to bound the row-index temporary (8 bytes
    # per stored value) on atlas-size matrices.
    for start in range(0, counts.shape[0], ROW_BLOCK):
        block = counts[start : start + ROW_BLOCK]
        rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
        detected[start : start + block.shape[0]] = np.bincount(rows[block.data > 0], minlength=block.shape[0])
    return np.log1p(np.column_stack([totals, detected]))


def standardise_within(values: np.ndarray, batches: pd.Series | None) -> np.ndarray:
    """Each column centred and scaled to unit SD within each batch (a batch of one cell, or a constant column: 0).

    Within each batch, because depth differs between batches (sites, chemistries) for reasons that say nothing about
    which cells pair: only a cell's depth relative to its batch is compared across modalities.
    """
    groups = np.zeros(values.shape[0], dtype=np.int64) if batches is None else pd.factorize(batches.to_numpy())[0]
    out = np.zeros_like(values)
    for group in np.unique(groups):
        rows = groups == group
        centred = values[rows] - values[rows].mean(axis=0)
        scale = centred.std(axis=0)
        out[rows] = np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 0)
    return out


def _reference_scales(reference: object, mods: list[str], key_added: str) -> dict[str, float]:
    """The scale of the depth columns that ``append_depth`` recorded in ``reference`` under ``key_added``."""
    check_mudata(reference, "reference")
    scales = {}
    for mod in mods:
        recorded = reference.mod[mod].uns.get(key_added) if mod in reference.mod else None
        params = recorded.get("params") if isinstance(recorded, Mapping) else None
        if not isinstance(params, Mapping) or "scale" not in params:
            raise KeyError(
                f"reference has no append_depth output '{key_added}' for '{mod}'; run mm.pp.append_depth on the "
                "reference with the same key_added (or pass reference=None)"
            )
        scales[mod] = float(params["scale"])
    return scales


def append_depth(
    mdata: MuData,
    mods: Sequence[str] | None = None,
    *,
    use_rep: str = "X_lsi_harmony",
    layer: str | None = "counts",
    batch_key: str | None = "batch",
    key_added: str | None = None,
    reference: MuData | None = None,
    copy: bool = False,
) -> MuData | None:
    """Append each cell's sequencing depth, standardised within its batch, to its representation.

    TF-IDF/LSI and CLR remove each cell's depth from its representation, but two modalities measured in one droplet
    (CITE-seq, 10x Multiome, TEA-seq) share much of it: a cell's capture efficiency and size set both its RNA UMI
    count and its ADT or ATAC count. Appended as two more input columns, it lets an encoder trained on paired cells
    (:func:`mumatch.tl.train_clip`) use that link where the data have one, and learn to ignore it where they do not.

    For every cell: ``log1p`` of its total counts and of its number of detected features in ``layer``, each
    standardised within the cell's batch (``obs[batch_key]``; all cells when there are no batches) and scaled to the
    root-mean-square standard deviation of the representation's columns, so that each is as loud as a typical column.

    Parameters
    ----------
    mdata
        MuData with raw counts and ``.obsm[use_rep]`` in every processed modality.
    mods
        Modalities to process (default: all).
    use_rep
        The representation the depth columns are appended to (e.g. :func:`mumatch.pp.lsi_harmony`'s).
    layer
        Layer with the raw counts (``None``: ``.X``).
    batch_key
        Column of each modality's ``.obs`` (else of ``mdata.obs``) with the batch; ``None`` standardises over all
        cells. A modality without the column, or where some cells lack a label, is standardised over all its cells
        (with a warning for the latter); a column that no modality has raises a KeyError, except the default
        ``"batch"`` (data without batches).
    key_added
        Name of the output (default: ``use_rep + '_depth'``); it may not be ``use_rep`` nor name a fitted projection
        (``lsi_harmony``'s ``.uns`` entry).
    reference
        For new cells embedded with :func:`mumatch.pp.lsi_harmony_transform`: the MuData a model was trained on, after
        ``append_depth`` with the same ``key_added``. Its scale of the depth columns is used, so that the model reads
        the query's columns on the scale it was trained on (the depth itself is still standardised within the query's
        own batches). ``None``: the scale of ``mdata``'s own representation.
    copy
        Return a modified copy instead of working in place.

    Returns
    -------
    ``None``, or a copy of ``mdata`` when ``copy=True``. Adds to each processed modality:

    - ``.obsm[key_added]``: ``.obsm[use_rep]`` followed by the two depth columns (float32);
    - ``.uns[key_added]['params']``: the arguments, the scale of the depth columns and the source representation's
      ``fit_id`` (so that a model reading ``key_added`` recognises the projection it was trained on).

    A query embedded with :func:`mumatch.pp.lsi_harmony_transform` gets its depth columns from this function too, with
    ``reference=`` the training data: they are standardised on the query's own batches, as the reference's were on
    its own, and scaled as the reference's were. :class:`mumatch.model.CLUE` reads only the leading
    ``n_input_comps`` columns of an LSI (it warns when that leaves out the depth columns).

    Examples
    --------
    >>> import mumatch as mm
    >>> mdata = mm.datasets.bmmc_starter("multiome")
    >>> mm.pp.lsi_harmony(mdata)
    >>> mm.pp.append_depth(mdata)
    >>> mdata["atac"].obsm["X_lsi_harmony_depth"].shape
    (500, 258)
    """
    check_mudata(mdata)
    names = check_mods(mdata, mods)
    if not isinstance(use_rep, str):
        raise ValueError(f"use_rep must be the name of an .obsm entry, got {use_rep!r}")
    key_added = f"{use_rep}_depth" if key_added is None else key_added
    check_key_added(key_added)
    if key_added == use_rep:
        raise ValueError(
            f"key_added={key_added!r} would overwrite use_rep; choose another name (default: use_rep + '_depth')"
        )
    for mod in names:
        recorded = mdata[mod].uns.get(key_added)
        if isinstance(recorded, Mapping) and "feature_names" in recorded:
            raise ValueError(
                f"key_added={key_added!r} names the fitted projection in mdata['{mod}'].uns (lsi_harmony's), which "
                "lsi_harmony_transform needs; choose another name"
            )
    has_batches = check_batch_key(mdata, names, batch_key)
    scales = _reference_scales(reference, names, key_added) if reference is not None else {}
    check_copy(mdata, copy)
    start = logg.info(f"appending sequencing depth to .obsm['{use_rep}'] of {names}")

    results = {}
    for mod in names:
        rep = check_rep(mdata, mod, use_rep)
        depth = depth_values(mdata, mod, layer)
        batches = obs_column(mdata, mod, batch_key) if has_batches else None
        if has_batches and batches is None:
            logg.warning(
                f"'{mod}' has no {batch_key!r} column (nor has mdata.obs): its depth is standardised over all its cells"
            )
        if batches is not None and batches.isna().any():
            # As lsi_harmony leaves such a modality uncorrected: partly standardising it per batch would put labelled
            # and unlabelled cells on different scales.
            logg.warning(
                f"{int(batches.isna().sum())} of {batches.size} cells of '{mod}' have no {batch_key!r} label: its "
                "depth is standardised over all its cells; label every cell to standardise within batches"
            )
            batches = None
        # The root-mean-square column SD: each depth column as loud as a typical column of the representation.
        scale = scales.get(mod, float(np.sqrt(rep.var(axis=0).mean())) if rep.shape[1] else 1.0)
        scale = scale if scale > 0 else 1.0
        appended = np.empty((rep.shape[0], rep.shape[1] + len(DEPTH_COLUMNS)), dtype=np.float32)
        appended[:, : rep.shape[1]] = rep
        appended[:, rep.shape[1] :] = scale * standardise_within(depth, batches)
        recorded = mdata[mod].uns.get(use_rep)
        source = recorded.get("params", {}) if isinstance(recorded, Mapping) else {}
        params = {
            "use_rep": use_rep,
            "layer": layer,
            "batch_key": batch_key,
            "within_batches": batches is not None,
            "columns": list(DEPTH_COLUMNS),
            "scale": scale,
            # Columns after the representation's own, counting any a previous append_depth added.
            "n_appended": int(source.get("n_appended", 0)) + len(DEPTH_COLUMNS),
        }
        if source.get("fit_id") is not None:
            params["fit_id"] = str(source["fit_id"])
        if source.get("method") is not None:
            params["method"] = str(source["method"])
        results[mod] = appended, params

    target = mdata.copy() if copy else mdata
    replaced = [mod for mod in results if key_added in mdata[mod].obsm]
    if replaced and not copy:
        logg.warning(f"overwriting .obsm['{key_added}'] of {replaced}")
    for mod, (appended, params) in results.items():
        target[mod].obsm[key_added] = appended
        target[mod].uns[key_added] = {"params": params}
    logg.info(
        "    finished",
        time=start,
        deep=(
            f"added\n    .obsm['{key_added}'], .obsm['{use_rep}'] and two depth columns {list(DEPTH_COLUMNS)} "
            f"(per modality)\n    .uns['{key_added}']['params']"
        ),
    )
    return target if copy else None
