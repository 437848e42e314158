"""``transfer_labels``: carry labels across a matching plan by a plan-weighted vote."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData
from scanpy import logging as logg

from .._layout import MISSING_BATCH, known_labels, obs_positions, oriented_plan, recorded_plan_mods
from .._validate import check_copy, check_key_added, check_mod, check_mudata, check_obs_key, check_obs_names


def transfer_labels(
    mdata: MuData,
    key: str = "match",
    *,
    label_key: str,
    source_mod: str,
    target_mod: str,
    key_added: str | None = None,
    copy: bool = False,
) -> MuData | None:
    """Predict a label of each target cell by the plan-weighted vote of the source cells it is matched with.

    For a target cell ``t``, the probability of label ``c`` is ``Σ_s P[t, s] [label(s) = c] / Σ_s P[t, s]`` over the
    source cells ``s`` with a label (``P`` is the plan, read along rows or columns as the modalities require); the
    prediction is the most probable label.

    Parameters
    ----------
    mdata
        MuData with a plan in ``mdata.obsp[key]`` (e.g. from :func:`mumatch.tl.match_ot`, which records in
        ``mdata.uns[key]['params']`` the modalities of its rows and columns; the plan is read in that direction).
    key
        The plan's key in ``mdata.obsp`` (any non-negative cell × cell weights; a negative weight casts no vote).
    label_key
        Column of ``mdata[source_mod].obs`` with the labels to transfer (missing labels, and the text ``"nan"`` that
        ``astype(str)`` makes of them, are ignored).
    source_mod, target_mod
        Modality that carries the labels and modality that receives them.
    key_added
        Name of the predicted column (and of ``mdata.uns[key_added]``, so not the key of a plan in ``.obsp``);
        default ``f"{label_key}_{key}"``.
    copy
        Return a modified copy instead of working in place.

    Returns
    -------
    ``None``, or the modified copy with ``copy=True``. Adds ``mdata[target_mod].obs[key_added]`` (categorical
    prediction, with the categories of a categorical ``label_key``, unused ones too, else its sorted labels) and
    ``mdata[target_mod].obs[f"{key_added}_probability"]`` (its vote share), both missing for target cells without
    matched labelled source cells, and ``mdata.uns[key_added]``: ``'params'`` of this call and ``'targets'``, the
    modalities holding columns written under this ``key_added`` (which a later call may overwrite).

    Examples
    --------
    >>> import mumatch as mm
    >>> mdata = mm.datasets.bmmc_starter("cite")
    >>> mm.pp.lsi_harmony(mdata)  # doctest: +SKIP
    >>> models = mm.tl.train_clip(mdata, "rna", "adt")  # doctest: +SKIP
    >>> mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_clip")  # doctest: +SKIP
    >>> mm.tl.transfer_labels(mdata, label_key="cell_type", source_mod="rna", target_mod="adt")  # doctest: +SKIP
    >>> mdata["adt"].obs[["cell_type_match", "cell_type_match_probability"]]  # doctest: +SKIP
    """
    check_mudata(mdata)
    check_copy(mdata, copy)
    check_mod(mdata, source_mod, "source_mod")
    check_mod(mdata, target_mod, "target_mod")
    if source_mod == target_mod:
        raise ValueError(f"source_mod and target_mod must differ, both are {source_mod!r}")
    for mod in (source_mod, target_mod):
        check_obs_names(mdata, mod)
    if key not in mdata.obsp:
        raise KeyError(f"key={key!r} not found in mdata.obsp (it has {list(mdata.obsp)}); run mm.tl.match_ot first")
    check_obs_key(mdata, source_mod, label_key, "label_key")
    if key_added is not None:
        check_key_added(key_added)
    key_added = key_added or f"{label_key}_{key}"
    if key_added in mdata.obsp:
        raise ValueError(
            f"key_added={key_added!r} names a plan in mdata.obsp: mdata.uns['{key_added}'] holds that plan's "
            "parameters (which way round it reads) and potentials; choose another key_added"
        )
    existing = [column for column in (key_added, f"{key_added}_probability") if column in mdata[target_mod].obs]
    if existing and not _written_by_transfer(mdata.uns.get(key_added), target_mod):
        # E.g. key_added=label_key: the true labels of the target cells would be replaced by the prediction.
        raise ValueError(
            f"key_added={key_added!r} would replace mdata['{target_mod}'].obs[{existing[0]!r}], which "
            "transfer_labels did not write; choose another key_added"
        )

    start = logg.info(f"transferring '{label_key}' from '{source_mod}' to '{target_mod}' along .obsp['{key}']")
    weights = _target_by_source(mdata, key, source_mod, target_mod)
    weights.data = np.maximum(weights.data, 0)
    labels = mdata[source_mod].obs[label_key]
    known = known_labels(labels)
    # The labels keep their type (numbers stay numbers) and a categorical column all its categories, in their order
    # (as scanpy's ingest does): the prediction then compares with, and colours like, a truth column of that type.
    ordered = False
    if isinstance(labels.dtype, pd.CategoricalDtype):
        categories, ordered = labels.cat.categories, bool(labels.cat.ordered)
        categories = categories[categories.astype(str) != MISSING_BATCH]  # "nan" labels no cell
    else:
        categories = pd.Index(pd.unique(labels[known]))
        try:
            categories = categories.sort_values()  # as astype("category") orders them
        except TypeError:
            pass  # labels of mixed types keep their order of appearance
    codes = np.full(labels.size, -1)
    codes[known] = categories.get_indexer(labels[known])
    one_hot = sp.csr_matrix(
        (np.ones(known.sum()), (np.flatnonzero(known), codes[known])), shape=(labels.size, max(categories.size, 1))
    )
    votes = np.asarray((weights @ one_hot).todense())
    totals = votes.sum(axis=1)
    matched = totals > 0
    best = votes.argmax(axis=1)
    probability = np.full(votes.shape[0], np.nan)
    probability[matched] = votes[matched, best[matched]] / totals[matched]
    predicted = pd.Categorical.from_codes(np.where(matched, best, -1), categories=categories, ordered=ordered)
    if not matched.any():
        # E.g. labels known on the paired cells only, with a plan over the unpaired cells (match_ot's default).
        logg.warning(
            f"no cell of '{target_mod}' received a label: none of the '{source_mod}' cells with weight in "
            f".obsp['{key}'] has a '{label_key}' label (label those cells, or match the labelled ones, e.g. "
            "match_ot(cells='all'))"
        )

    target = mdata.copy() if copy else mdata
    for column in (key_added, f"{key_added}_probability"):
        if column in target[target_mod].obs:
            logg.warning(f"overwriting mdata['{target_mod}'].obs['{column}']")
    target[target_mod].obs[key_added] = predicted
    target[target_mod].obs[f"{key_added}_probability"] = probability
    # One record serves the columns this key wrote in every target modality (e.g. a transfer in each direction).
    written = sorted({target_mod, *_transfer_targets(mdata.uns.get(key_added))})
    target.uns[key_added] = {
        "params": {"key": key, "label_key": label_key, "source_mod": source_mod, "target_mod": target_mod},
        "targets": written,
    }
    logg.info(
        "    finished",
        time=start,
        deep=(
            f"added\n    mdata['{target_mod}'].obs['{key_added}'], the transferred labels (categorical)\n"
            f"    mdata['{target_mod}'].obs['{key_added}_probability'], their vote share"
        ),
    )
    return target if copy else None


def _transfer_targets(record: object) -> list[str]:
    """The modalities into which :func:`transfer_labels` wrote the columns named by ``record`` (``uns[key_added]``)."""
    params = record.get("params") if isinstance(record, Mapping) else None
    if not isinstance(params, Mapping) or "label_key" not in params:
        return []
    targets = record.get("targets")
    if targets is None:  # a record written before "targets" was kept
        targets = [params.get("target_mod")]
    return [str(mod) for mod in np.atleast_1d(targets)]


def _written_by_transfer(record: object, target_mod: str) -> bool:
    """Whether ``mdata.uns[key_added]`` records labels that :func:`transfer_labels` wrote into ``target_mod``."""
    return target_mod in _transfer_targets(record)


def _target_by_source(mdata: MuData, key: str, source_mod: str, target_mod: str) -> sp.csr_matrix:
    """The plan as a target cells × source cells matrix (modality order), read in the direction it was stored.

    A cell measured in both modalities has one obs name, so which modality a row or column of the plan stands for is
    known only from the plan's record (``mdata.uns[key]['params']``, written by :func:`mumatch.tl.match_ot`).
    """
    target_positions, source_positions = obs_positions(mdata, target_mod), obs_positions(mdata, source_mod)
    recorded = recorded_plan_mods(mdata, key)
    if recorded is not None:
        if {source_mod, target_mod} != set(recorded):
            raise ValueError(
                f"the plan in mdata.obsp['{key}'] matches '{recorded[0]}' (rows) to '{recorded[1]}' (columns); pass "
                f"those two as source_mod and target_mod, got source_mod={source_mod!r}, target_mod={target_mod!r}"
            )
        return oriented_plan(mdata, key, target_mod, source_mod)[target_positions][:, source_positions].tocsr()
    # No record (a plan made by hand): rows and columns can be told apart only where no cell of the plan is measured
    # in both modalities; then P + Pᵀ reads it in both directions.
    plan = sp.csr_matrix(mdata.obsp[key], copy=True)
    plan.eliminate_zeros()  # an explicitly stored zero links nothing
    shared = np.intersect1d(mdata[source_mod].obs_names, mdata[target_mod].obs_names)
    touched = (np.diff(plan.indptr) > 0) | (np.bincount(plan.indices, minlength=plan.shape[1]) > 0)
    if touched[mdata.obs_names.get_indexer(shared)].any():
        raise ValueError(
            f"mdata.obsp['{key}'] involves cells measured in both '{source_mod}' and '{target_mod}', and "
            f"mdata.uns['{key}']['params'] does not say which modality its rows belong to; store "
            f"mdata.uns['{key}'] = {{'params': {{'mod1': ROW_MODALITY, 'mod2': COLUMN_MODALITY}}}}"
        )
    both = (plan + plan.T).tocsr()
    return both[target_positions][:, source_positions].tocsr()
