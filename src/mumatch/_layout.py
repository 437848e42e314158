"""The paired/unpaired MuData conventions of mumatch, in one place.

One transductive :class:`~mudata.MuData` holds every cell of every modality:

- a cell measured in several modalities (a *paired* cell, e.g. a training cell) has the same obs name in each of them;
- a cell measured in one modality only (an *unpaired* cell) has an obs name found in that modality alone
  (the readers prefix it with the modality name, e.g. ``"rna:AAAC-1"``);
- a cell-by-cell matrix (a matching plan, the ground truth) lives in ``mdata.obsp`` over ``mdata.obs_names``,
  with rows for cells of the first modality and columns for cells of the second.

Everything that needs to know which cells are paired, where a modality's cells sit in ``mdata.obs_names`` or how the
cells split into batch blocks asks this module, so that the convention is written once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData
from scanpy import logging as logg

from ._validate import obs_column

MISSING_BATCH = "nan"


def plain_values(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as plain Python values (lists), in nested dicts, lists and tuples.

    For JSON (a model's parameters, e.g. a seed from ``np.arange``) and for comparing parameters read back from
    ``.uns``, where h5py returns numpy values for what was written as Python ones.
    """
    if isinstance(value, Mapping):
        return {key: plain_values(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return [plain_values(item) for item in value.tolist()]
    if isinstance(value, list | tuple):
        return [plain_values(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class Block:
    """Cells of two modalities that are matched with each other (one batch level).

    Attributes
    ----------
    name
        The batch level (or ``"all"`` when cells are matched in one block).
    index1
        Positions of the block's cells in ``mdata[mod1].obs_names``.
    index2
        Positions of the block's cells in ``mdata[mod2].obs_names``.
    """

    name: str
    index1: np.ndarray
    index2: np.ndarray


def paired_names(mdata: MuData, mod1: str, mod2: str) -> pd.Index:
    """Obs names measured in both modalities, in the order of ``mod1``."""
    names1 = mdata[mod1].obs_names
    return names1[names1.isin(mdata[mod2].obs_names)]


def paired_positions(mdata: MuData, mod1: str, mod2: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the paired cells in each modality, aligned so that row ``i`` of both is one cell."""
    names = paired_names(mdata, mod1, mod2)
    return mdata[mod1].obs_names.get_indexer(names), mdata[mod2].obs_names.get_indexer(names)


def unpaired_mask(mdata: MuData, mod: str, other: str | list[str] | None = None) -> np.ndarray:
    """Boolean mask over ``mdata[mod].obs_names``: cells not measured in ``other`` (one or several modalities).

    ``None``: in no other modality of ``mdata``, the layout's unpaired (test) cells. With three or more modalities a
    cell measured in ``mod`` and a third one is paired, even where it lacks the modality it is matched to.
    """
    if other is None:
        other = [name for name in mdata.mod if name != mod]
    others = [other] if isinstance(other, str) else list(other)
    seen = np.zeros(mdata[mod].n_obs, dtype=bool)
    for name in others:
        seen |= mdata[mod].obs_names.isin(mdata[name].obs_names)
    return ~seen


def obs_positions(mdata: MuData, mod: str) -> np.ndarray:
    """Position in ``mdata.obs_names`` of every cell of modality ``mod`` (in the modality's order)."""
    return mdata.obs_names.get_indexer(mdata[mod].obs_names)


def batch_labels(mdata: MuData, mod: str, batch_key: str | None) -> pd.Series | None:
    """The batch label of every cell of ``mod`` as strings, or None when no cell carries one.

    Missing labels become :data:`MISSING_BATCH`.
    """
    column = None if batch_key is None else obs_column(mdata, mod, batch_key)
    if column is None:
        return None
    labels = label_strings(column)
    return None if (labels == MISSING_BATCH).all() else labels


def label_strings(labels: pd.Series) -> pd.Series:
    """Batch labels as strings: whole-number floats named as integers, missing values as :data:`MISSING_BATCH`."""
    known = labels.notna().to_numpy()
    values = labels.astype(object).to_numpy()
    # Whole-number floats (an integer column that gained a NaN, or was read as float; in a float, object or
    # categorical column) name the same batches as integers: 1.0 and 1 are batch '1' in every modality.
    names = {value: label_name(value) for value in pd.unique(values[known])}
    strings = np.full(values.size, MISSING_BATCH, dtype=object)
    strings[known] = [names[value] for value in values[known]]
    return pd.Series(strings, index=labels.index, name=labels.name, dtype=str)


def known_labels(labels: pd.Series) -> np.ndarray:
    """Which labels are given: not missing, and not the text ``"nan"`` that ``astype(str)`` makes of a missing one."""
    return labels.notna().to_numpy() & (labels.astype(str).to_numpy() != MISSING_BATCH)


def paired_batch_labels(mdata: MuData, mod1: str, mod2: str, batch_key: str | None) -> np.ndarray | None:
    """The batch of every paired cell (in :func:`paired_positions` order), or None when none carries one.

    A paired cell is one cell: its label is read from ``mod1`` and, where ``mod1`` has none (no column, or a missing
    value), from ``mod2``. Cells labelled in neither are :data:`MISSING_BATCH`.
    """
    positions = paired_positions(mdata, mod1, mod2)
    found = [batch_labels(mdata, mod, batch_key) for mod in (mod1, mod2)]
    if all(labels is None for labels in found):
        return None
    levels = np.full(positions[0].size, MISSING_BATCH, dtype=object)
    for labels, rows in zip(reversed(found), reversed(positions), strict=True):  # mod1 written last: it wins
        if labels is not None:
            values = labels.to_numpy()[rows]
            known = values != MISSING_BATCH
            levels[known] = values[known]
    return levels


def conflicting_batches(mdata: MuData, mod1: str, mod2: str, batch_key: str | None) -> pd.Index:
    """Names of the paired cells whose batch label in ``mod1`` differs from the one in ``mod2``.

    A cell measured in two modalities has one batch. Different labels usually mean that two samples share barcodes
    and the obs names were not made unique, so that different cells are being paired by name.
    """
    found = [batch_labels(mdata, mod, batch_key) for mod in (mod1, mod2)]
    if any(labels is None for labels in found):
        return pd.Index([])
    rows1, rows2 = paired_positions(mdata, mod1, mod2)
    first, second = found[0].to_numpy()[rows1], found[1].to_numpy()[rows2]
    differ = (first != second) & (first != MISSING_BATCH) & (second != MISSING_BATCH)
    return mdata[mod1].obs_names[rows1[differ]]


def warn_conflicting_batches(mdata: MuData, mod1: str, mod2: str, batch_key: str | None, consequence: str) -> None:
    """Warn when cells paired by name carry different batches in the two modalities (see :func:`conflicting_batches`).

    ``consequence`` says what the function being called would get wrong with such pairs.
    """
    names = conflicting_batches(mdata, mod1, mod2, batch_key)
    if len(names):
        example = names[0]
        # Read as the conflict was found: a modality without its own column reads the MuData's (mdata.obs).
        first, second = (
            batch_labels(mdata, mod, batch_key).iloc[mdata[mod].obs_names.get_loc(example)] for mod in (mod1, mod2)
        )
        logg.warning(
            f"cells paired by obs name between '{mod1}' and '{mod2}' carry different '{batch_key}' labels in the two "
            f"({len(names)} cells, e.g. '{example}': '{first}' in '{mod1}', '{second}' in '{mod2}'): if barcodes "
            f"repeat across samples, make the obs names unique (e.g. prefix the sample), or {consequence}"
        )


# A training batch is held out (one ensemble member validates on it and trains on the other paired cells) only when
# it has at least this many paired cells, and at most this fraction of them. Below the first, early stopping ranks
# epochs on noise (one cell: the InfoNCE loss is 0 at every epoch, so the first epoch's weights were kept); above the
# second, its member trains on a sliver of the data. Two batches of 342 and 1 paired cells (simulated) gave a
# FOSCTTM of 0.45, 10 and 30 cells 0.34 and 0.28, against 0.10 for one model on a random 20 %.
MIN_HELD_OUT_CELLS = 20
MAX_HELD_OUT_FRACTION = 0.6


def held_out_batches(mdata: MuData, mod1: str, mod2: str, batch_key: str | None) -> tuple[list[str], list[str]]:
    """The training batches that ``ensemble="batch"`` holds out, one member each, and why others are not.

    Paired cells without a batch label are no batch to hold out: they train every member. Batches with fewer than
    :data:`MIN_HELD_OUT_CELLS` paired cells or more than :data:`MAX_HELD_OUT_FRACTION` of them train every member too.
    """
    labels = paired_batch_labels(mdata, mod1, mod2, batch_key)
    if labels is None:
        return [], []
    counts = pd.Series(labels[labels != MISSING_BATCH]).value_counts(sort=False)
    if counts.size < 2:
        return [], []  # one training batch: nothing to hold out, and nothing to say about it
    kept, reasons = [], []
    for level, count in counts.items():
        if count < MIN_HELD_OUT_CELLS:
            reasons.append(f"'{level}' has {count} paired cells (fewer than {MIN_HELD_OUT_CELLS} to validate on)")
        elif count > MAX_HELD_OUT_FRACTION * labels.size:
            reasons.append(
                f"'{level}' holds {count} of the {labels.size} paired cells (its member would train on the other "
                f"{labels.size - count})"
            )
        else:
            kept.append(str(level))
    return kept, reasons


def label_name(value: object) -> str:
    """A label as text, whole-number floats as integers (``1.0`` → ``'1'``, as an integer column reads)."""
    if isinstance(value, float | np.floating) and np.isfinite(value) and float(value).is_integer():
        return str(int(value))
    return str(value)


def batch_blocks(
    mdata: MuData,
    mod1: str,
    mod2: str,
    mask1: np.ndarray,
    mask2: np.ndarray,
    batch_key: str | None,
) -> tuple[list[Block], list[str]]:
    """Split the selected cells of two modalities into blocks, one per batch level.

    Parameters
    ----------
    mdata
        The MuData.
    mod1, mod2
        The two modalities.
    mask1, mask2
        Boolean masks over each modality's cells: the cells to match.
    batch_key
        Column of each modality's ``.obs`` (else of ``mdata.obs``) with the batch. ``None`` puts all cells in one block.

    Returns
    -------
    The blocks, and the reasons why some cells were put in one block or left out (for logging and diagnostics).
    A level present on one side only gives a block with zero cells on the other side; the caller decides what to do.

    Notes
    -----
    When no selected cell of one side carries a label (e.g. test cells whose batches are hidden), all selected cells
    form one block. Otherwise each labelled cell stays in its batch's block, and the unlabelled cells of both sides
    form a block of their own (named :data:`MISSING_BATCH`): a few cells without a label must not send every batch
    to be matched against every other.
    """
    notes: list[str] = []
    index1 = np.flatnonzero(mask1)
    index2 = np.flatnonzero(mask2)
    labels1 = batch_labels(mdata, mod1, batch_key)
    labels2 = batch_labels(mdata, mod2, batch_key)
    if batch_key is None:
        return [Block("all", index1, index2)], notes
    values1 = np.full(index1.size, MISSING_BATCH, dtype=object) if labels1 is None else labels1.to_numpy()[index1]
    values2 = np.full(index2.size, MISSING_BATCH, dtype=object) if labels2 is None else labels2.to_numpy()[index2]
    unlabelled = {mod1: values1 == MISSING_BATCH, mod2: values2 == MISSING_BATCH}
    for side, values in ((mod1, values1), (mod2, values2)):
        if values.size and unlabelled[side].all():
            notes.append(
                f"no selected cell of '{side}' has a '{batch_key}' label: matching all selected cells in one block"
            )
            return [Block("all", index1, index2)], notes
    counts = {side: int(mask.sum()) for side, mask in unlabelled.items() if mask.any()}
    if counts:
        described = " and ".join(f"{count} of '{side}'" for side, count in counts.items())
        notes.append(
            f"{described} selected cells have no '{batch_key}' label: they are matched among themselves, in block "
            f"'{MISSING_BATCH}' (label them, or pass batch_key=None to match all cells in one block)"
        )
    levels = pd.unique(np.concatenate([values1[~unlabelled[mod1]], values2[~unlabelled[mod2]]]))
    groups1, groups2 = _level_groups(values1, levels), _level_groups(values2, levels)
    blocks = [
        Block(str(level), index1[group1], index2[group2])
        for level, group1, group2 in zip(levels, groups1, groups2, strict=True)
    ]
    if counts:
        blocks.append(Block(MISSING_BATCH, index1[unlabelled[mod1]], index2[unlabelled[mod2]]))
    return blocks, notes


def _level_groups(values: np.ndarray, levels: np.ndarray) -> list[np.ndarray]:
    """For each level, the positions in ``values`` that hold it, in increasing order.

    One stable sort of the level codes: comparing ``values`` with each level in turn is O(levels × cells), 4.9 s for
    1000 batches of 100k cells (an atlas' samples).
    """
    codes = pd.Index(levels).get_indexer(values)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(levels) + 1))
    return [order[start:stop] for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]


def embed_block(
    mdata: MuData, mod1: str, mod2: str, block_matrix: sp.spmatrix, index1: np.ndarray, index2: np.ndarray
) -> sp.csr_matrix:
    """Place a (cells of mod1 × cells of mod2) sparse matrix into ``mdata.obs_names × mdata.obs_names``."""
    return embed_blocks(mdata, mod1, mod2, [(block_matrix, index1, index2)])


def embed_blocks(
    mdata: MuData, mod1: str, mod2: str, blocks: Sequence[tuple[sp.spmatrix, np.ndarray, np.ndarray]]
) -> sp.csr_matrix:
    """Place several ``(block_matrix, index1, index2)`` (see :func:`embed_block`) into one matrix, summing overlaps.

    The CSR is written once, in place: adding each block's embedding to a running sum copies every entry placed so
    far once per block, and looking up the cells' positions once per block costs a pass over ``mdata.obs_names``
    each (``match_ot`` outside the solver, 100k cells: 5.5 s in 100 batches, 52 s in 1000). Going through one COO
    matrix of all entries instead would hold three more arrays of the plan's size.
    """
    positions1, positions2 = obs_positions(mdata, mod1), obs_positions(mdata, mod2)
    pieces = []
    for block_matrix, index1, index2 in blocks:
        rows, matrix = positions1[index1], sp.csr_matrix(block_matrix)
        if (rows < 0).any() or (positions2[index2] < 0).any():
            # get_indexer's -1 would place the entries in the last cell's row or column, silently.
            raise ValueError(
                f"cells of '{mod1}' or '{mod2}' are missing from mdata.obs_names; call mdata.update() first"
            )
        if np.unique(rows).size < rows.size:
            # A cell named twice in one block: its rows add up (as the entries of a COO matrix do).
            rows, inverse = np.unique(rows, return_inverse=True)
            merge = (np.ones(inverse.size, dtype=matrix.dtype), (inverse, np.arange(inverse.size)))
            matrix = sp.csr_matrix(merge, shape=(rows.size, inverse.size)) @ matrix
        pieces.append((rows, matrix, positions2[index2]))
    indptr = np.zeros(mdata.n_obs + 1, dtype=np.int64)
    for rows, matrix, _ in pieces:
        indptr[rows + 1] += np.diff(matrix.indptr)
    np.cumsum(indptr, out=indptr)
    index_dtype = np.int32 if mdata.n_obs <= np.iinfo(np.int32).max else np.int64
    indices = np.empty(indptr[-1], dtype=index_dtype)
    data = np.empty(indptr[-1], dtype=np.result_type(*(piece[1].dtype for piece in pieces)) if pieces else np.float64)
    filled = indptr[:-1].copy()
    for rows, matrix, cols in pieces:
        lengths = np.diff(matrix.indptr)
        destination = np.repeat(filled[rows] - matrix.indptr[:-1], lengths)
        destination += np.arange(matrix.nnz)
        indices[destination] = cols[matrix.indices]
        data[destination] = matrix.data
        filled[rows] += lengths
    embedded = sp.csr_matrix((data, indices, indptr), shape=(mdata.n_obs, mdata.n_obs))
    embedded.sum_duplicates()
    return embedded


def extract_block(
    mdata: MuData, matrix: sp.spmatrix, mod1: str, mod2: str, index1: np.ndarray, index2: np.ndarray
) -> sp.csr_matrix:
    """The (cells of mod1 × cells of mod2) part of a matrix over ``mdata.obs_names``."""
    rows = obs_positions(mdata, mod1)[index1]
    cols = obs_positions(mdata, mod2)[index2]
    return sp.csr_matrix(matrix)[rows][:, cols].tocsr()


def recorded_plan_mods(mdata: MuData, key: str) -> tuple[str, str] | None:
    """The modalities of a plan's rows and columns, as ``match_ot`` recorded them in ``mdata.uns[key]['params']``."""
    uns = mdata.uns.get(key)
    params = uns.get("params") if isinstance(uns, Mapping) else None
    if not isinstance(params, Mapping) or "mod1" not in params or "mod2" not in params:
        return None
    return str(params["mod1"]), str(params["mod2"])


def array_fingerprint(values: np.ndarray) -> str:
    """A short digest of an array's bytes: tells whether an embedding is still the one that was recorded."""
    return hashlib.blake2b(np.ascontiguousarray(values).tobytes(), digest_size=16).hexdigest()


def written_embeddings(embeddings: Mapping[str, np.ndarray]) -> dict[str, str]:
    """What a training records of the ``.obsm`` arrays it writes (``uns[key]['embedded']``): their fingerprints."""
    return {mod: array_fingerprint(values) for mod, values in embeddings.items()}


def embedding_mods(mdata: MuData, key: str) -> list[str] | None:
    """The modalities whose ``.obsm[key]`` the last training under ``key`` wrote (one shared space), or None.

    ``train_clip`` and ``train_clue`` record the fingerprint of each embedding they write in
    ``mdata.uns[key]['embedded']``. The record holds only while those embeddings are unchanged: an embedding
    rewritten since (by a model used directly, or by hand) makes it say nothing, and so does a key no training
    recorded (``lsi_harmony`` writes per modality; ``match_ot`` records a plan).
    """
    uns = mdata.uns.get(key)
    written = uns.get("embedded") if isinstance(uns, Mapping) else None
    if not isinstance(written, Mapping) or not written:
        return None
    for mod, fingerprint in written.items():
        if mod not in mdata.mod or key not in mdata[mod].obsm:
            return None
        if array_fingerprint(np.asarray(mdata[mod].obsm[key])) != str(fingerprint):
            return None
    return [str(mod) for mod in written]


def warn_replaced_embedding(mdata: MuData, mods: list[str], key: str) -> None:
    """Before a training writes ``.obsm[key]`` of ``mods``, say what it replaces and what stays in another space."""
    replaced = [mod for mod in mods if key in mdata[mod].obsm]
    others = [mod for mod in mdata.mod if mod not in mods and key in mdata[mod].obsm]
    if others:
        logg.warning(
            f"writing .obsm['{key}'] of {mods}, while {others} keep(s) the .obsm['{key}'] of an earlier training, in "
            "another space: those are no longer comparable with the new embeddings (match_ot and the metrics refuse "
            f"to); train each pair under its own key, e.g. key_added='{key}_{'_'.join(mods)}'"
        )
    elif replaced:
        logg.warning(f"replacing .obsm['{key}'] of {replaced}")


def representation_params(mdata: MuData, mod: str, rep_key: str) -> Mapping[str, Any]:
    """The parameters recorded beside ``.obsm[rep_key]`` of modality ``mod`` (``lsi_harmony``'s; empty if none)."""
    recorded = mdata[mod].uns.get(rep_key)
    params = recorded.get("params") if isinstance(recorded, Mapping) else None
    return params if isinstance(params, Mapping) else {}


def representation_fit(mdata: MuData, mod: str, rep_key: str) -> str | None:
    """The ``fit_id`` recorded beside ``.obsm[rep_key]`` of modality ``mod`` (None when there is none)."""
    fit_id = representation_params(mdata, mod, rep_key).get("fit_id")
    return str(fit_id) if fit_id is not None else None


def check_one_space(mdata: MuData, mods: list[str], key: str, argument: str) -> None:
    """Raise when ``.obsm[key]`` of ``mods`` are not one space.

    Two ways they can fail to be, with no error from the arithmetic: training another pair of modalities under the
    same key replaces the embeddings of that pair only, so a third modality keeps the earlier model's, of the same
    width but in another space; and a per-modality representation (``lsi_harmony``'s), each modality's own
    projection, can have equal widths in two modalities. Either way, comparing them gives a random match.
    """
    trained = embedding_mods(mdata, key)
    # A modality whose .obsm[key] the recorded training wrote (its fingerprint still matches) holds that training's
    # shared embedding: an lsi_harmony record left in its .uns[key] from before describes a replaced projection.
    fits = {
        mod: representation_fit(mdata, mod, key)
        for mod in mods
        if key in mdata[mod].obsm and (trained is None or mod not in trained)
    }
    if len(fits) > 1 and None not in fits.values() and len(set(fits.values())) > 1:
        raise ValueError(
            f"{argument}={key!r} holds each modality's own projection (lsi_harmony fits {sorted(fits)} separately): "
            "their components are not one space, and comparing them matches at random; train a shared embedding "
            "(mm.tl.train_clip or mm.tl.train_clue) and pass its key, e.g. 'X_clip'"
        )
    # A modality without the key is the caller's KeyError to raise, not a stale space.
    stale = [mod for mod in mods if trained is not None and mod not in trained and key in mdata[mod].obsm]
    if stale:
        raise ValueError(
            f"{argument}={key!r}: mdata.uns['{key}'] records the last training under that key on {trained}, so the "
            f".obsm['{key}'] of {stale} comes from an earlier model, in another space; train each pair under its "
            f"own key (e.g. key_added='{key}_{'_'.join(mods)}') or train these modalities together (if the "
            f"embeddings are right, del mdata.uns['{key}'] drops the record)"
        )


def oriented_plan(mdata: MuData, key: str, mod1: str, mod2: str) -> sp.csr_matrix:
    """``mdata.obsp[key]`` with the cells of ``mod1`` along its rows.

    A plan over ``mdata.obs_names`` stores its ``mod1``'s cells along rows; read for the opposite pair of
    modalities it is transposed (a cell measured in both has one obs name, so its row and column are told apart only
    by the recorded modalities). A plan recorded for other modalities is refused; a plan without a record (made by
    hand) is taken as given.
    """
    plan = sp.csr_matrix(mdata.obsp[key])
    recorded = recorded_plan_mods(mdata, key)
    if recorded is None or recorded == (mod1, mod2):
        return plan
    if recorded == (mod2, mod1):
        return plan.T.tocsr()
    raise ValueError(
        f"mdata.obsp['{key}'] matches '{recorded[0]}' (rows) to '{recorded[1]}' (columns), not '{mod1}' to "
        f"'{mod2}'; pass mod1={recorded[0]!r}, mod2={recorded[1]!r} (or the reverse)"
    )


def split_index(mdata: MuData, mod: str, split: str = "test") -> np.ndarray:
    """Positions of the cells of ``mod`` in one split (``obs['split']``), in the modality's order."""
    obs = mdata[mod].obs
    if "split" not in obs:
        raise KeyError(f"mdata['{mod}'].obs has no 'split' column; read the data with mm.datasets.read_neurips2021")
    return np.flatnonzero((obs["split"] == split).to_numpy())
