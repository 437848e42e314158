"""``match_ot``: soft matches between the cells of two modalities by entropic optimal transport, batch by batch."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData
from scanpy import logging as logg

from .. import ot
from .._ensemble import concatenate_members
from .._layout import (
    batch_blocks,
    check_one_space,
    embed_blocks,
    recorded_plan_mods,
    unpaired_mask,
    warn_conflicting_batches,
)
from .._validate import (
    check_batch_key,
    check_copy,
    check_int,
    check_key_added,
    check_mod,
    check_mudata,
    check_obs_names,
    check_positive,
    check_rep,
)
from ..ot._cost import COSTS, resolve_device, resolve_dtype, resolve_memory_budget

METHODS = ("sinkhorn", "exact", "knn")
# MatchCLOT's entropic regularisation on its [0, 1] cosine cost.
DEFAULT_EPSILON = 0.01
DEFAULT_TOL = 1e-3
DEFAULT_MAX_ITER = 1000
# Balanced OT gives every cell of a block's larger side partners on the smaller side. From this ratio of cell numbers
# on, the two sides rarely hold the same cell types in the same proportions, and a user should hear about tau.
IMBALANCE_RATIO = 4.0

Rep = str | Sequence[str]


def _rep_keys(use_rep: Rep | Mapping[str, Rep], mod1: str, mod2: str) -> dict[str, list[str]]:
    """The representation(s) of each modality: one key, a list of keys (an ensemble) or ``{mod: key(s)}``."""
    per_mod = dict(use_rep) if isinstance(use_rep, Mapping) else {mod1: use_rep, mod2: use_rep}
    keys = {}
    for mod in (mod1, mod2):
        if mod not in per_mod:
            raise KeyError(f"use_rep names no representation for '{mod}'; give {{'{mod}': key, ...}}")
        value = per_mod[mod]
        names = [value] if isinstance(value, str) else list(value)
        if not names or not all(isinstance(name, str) for name in names):
            raise ValueError(f"use_rep must be a key of .obsm, a list of keys or {{mod: key(s)}}, got {value!r}")
        keys[mod] = names
    if len(keys[mod1]) != len(keys[mod2]):
        raise ValueError(
            f"use_rep gives {len(keys[mod1])} representation(s) for '{mod1}' but {len(keys[mod2])} for '{mod2}'; "
            "an ensemble pairs them one to one"
        )
    return keys


def _embedding(mdata: MuData, mod1: str, mod2: str, keys: dict[str, list[str]], cost: str) -> dict[str, np.ndarray]:
    """Each modality's embedding; an ensemble of representations becomes one concatenated embedding.

    Every member is scaled by ``1/√n`` (and L2-normalised for the cosine cost) before concatenation, so that the
    cosine similarity (squared distance) of the concatenation is the mean of the members' cosine similarities
    (squared distances).
    """
    embeddings = {}
    for index in range(len(keys[mod1])):
        members = {mod: check_rep(mdata, mod, keys[mod][index], "use_rep") for mod in (mod1, mod2)}
        if keys[mod1][index] == keys[mod2][index]:
            check_one_space(mdata, [mod1, mod2], keys[mod1][index], "use_rep")
        if members[mod1].shape[1] != members[mod2].shape[1]:
            raise ValueError(
                f"use_rep: mdata['{mod1}'].obsm['{keys[mod1][index]}'] has {members[mod1].shape[1]} dimensions but "
                f"mdata['{mod2}'].obsm['{keys[mod2][index]}'] has {members[mod2].shape[1]}; a {cost} cost needs one "
                "shared space (e.g. mm.tl.train_clip's embedding)"
            )
        for mod, values in members.items():
            embeddings.setdefault(mod, []).append(values.astype(np.float64))
    return {mod: concatenate_members(parts, normalise=cost == "cosine") for mod, parts in embeddings.items()}


def _cell_masks(mdata: MuData, mod1: str, mod2: str, cells: str) -> dict[str, np.ndarray]:
    """Which cells of each modality to match."""
    if not isinstance(cells, str):
        raise ValueError(f"cells must be 'unpaired', 'all' or a boolean .obs column, got {cells!r}")
    if cells == "unpaired":
        # A cell measured in a third modality is paired as well (e.g. RNA+ADT of a TEA-seq panel that lost its ATAC):
        # its partners are known by name, and matching it would take mass from the cells measured alone.
        masks = {mod: unpaired_mask(mdata, mod) for mod in (mod1, mod2)}
    elif cells == "all":
        masks = {mod: np.ones(mdata[mod].n_obs, dtype=bool) for mod in (mod1, mod2)}
    else:
        masks = {mod: _selection_column(mdata, mod, cells) for mod in (mod1, mod2)}
    for mod, other in ((mod1, mod2), (mod2, mod1)):
        if not masks[mod].any():
            measured = (
                f"'{other}'" if len(mdata.mod) == 2 else f"another of {[name for name in mdata.mod if name != mod]}"
            )
            why = {"unpaired": f"every cell of '{mod}' is also measured in {measured}", "all": "it has no cells"}
            raise ValueError(
                f"cells={cells!r} selects no cell of '{mod}' ({why.get(cells, 'the column is all False')}); pass "
                "cells='all' or a boolean .obs column selecting the cells to match"
            )
    return masks


def _shortened(names: list[str], limit: int = 5) -> str:
    """A list of names for an error message, the first ``limit`` of them."""
    shown = ", ".join(repr(name) for name in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"


def _selection_column(mdata: MuData, mod: str, cells: str) -> np.ndarray:
    """The boolean ``.obs`` column ``cells`` of ``mod`` as a mask."""
    if cells not in mdata[mod].obs:
        raise KeyError(
            f"cells={cells!r} is neither 'unpaired', 'all' nor a column of mdata['{mod}'].obs; add a boolean "
            "column or pass cells='unpaired'"
        )
    column = mdata[mod].obs[cells]
    # pandas' nullable boolean is accepted when it has no missing value (a missing one selects nothing clearly).
    if not pd.api.types.is_bool_dtype(column.dtype) or column.isna().any():
        raise ValueError(
            f"mdata['{mod}'].obs['{cells}'] must be boolean without missing values to select cells, got "
            f"{column.dtype}{' with missing values' if column.isna().any() else ''}"
        )
    return column.to_numpy(dtype=bool)


def _check_arguments(method, cost, epsilon, tau, top_k, max_iter, tol, n_neighbors, key_added, dtype, device) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    check_positive(epsilon, "epsilon")
    check_positive(tau, "tau", allow_none=True)
    check_positive(tol, "tol")
    check_int(top_k, "top_k", allow_none=True)
    check_int(max_iter, "max_iter")
    check_int(n_neighbors, "n_neighbors")
    if method != "sinkhorn":
        # Neither the one-to-one assignment nor the mutual neighbours have marginals to relax or rows to truncate.
        for name, value in (("top_k", top_k), ("tau", tau)):
            if value is not None:
                raise ValueError(f"{name} applies to method='sinkhorn' only; leave it None for method={method!r}")
    check_key_added(key_added)
    resolve_dtype(dtype)
    resolve_device(device)


def match_ot(
    mdata: MuData,
    mod1: str = "rna",
    mod2: str = "atac",
    use_rep: Rep | Mapping[str, Rep] = "X_clip",
    *,
    cells: Literal["unpaired", "all"] | str = "unpaired",
    batch_key: str | None = "batch",
    method: Literal["sinkhorn", "exact", "knn"] = "sinkhorn",
    epsilon: float = DEFAULT_EPSILON,
    cost: Literal["cosine", "sqeuclidean"] = "cosine",
    tau: float | None = None,
    top_k: int | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    n_neighbors: int = 10,
    dtype: Literal["float32", "float64"] = "float32",
    device: str = "auto",
    memory_budget: int | None = None,
    key_added: str = "match",
    copy: bool = False,
) -> MuData | None:
    """Match the cells of two modalities by entropic optimal transport on a shared embedding, batch by batch.

    The selected cells of each modality are split into blocks, one per batch level present in both modalities (when
    no selected cell of one modality has a batch label, all cells form one block; cells without a label among
    labelled ones are matched among themselves, in a block of their own; both with a logged warning). Each block is
    solved by :func:`mumatch.ot.sinkhorn` between uniform marginals on the cost between the two embeddings (cosine by
    default, rescaled to [0, 1] as MatchCLOT does), and its plan is sparsified row tile by row tile
    (:func:`mumatch.ot.sparsify_plan`). A block with no cells on one side is skipped with a warning; when every
    block is, e.g. batches spelt differently in each modality, a ``ValueError`` says so.

    Parameters
    ----------
    mdata
        Transductive MuData; paired cells share an obs name in both modalities.
    mod1, mod2
        The modalities of the plan's rows and columns.
    use_rep
        The embedding in each modality's ``.obsm``: one key, a list of keys (an ensemble: cosine similarities are
        averaged over the members, as MatchCLOT sums its models' similarity matrices), or ``{mod: key(s)}``.
    cells
        ``"unpaired"``: the cells measured in one modality only (the test cells; with three or more modalities, a
        cell measured in ``mod1`` and a third modality is paired, and not matched); ``"all"``; or the name of a
        boolean column present in both modalities' ``.obs``. It must select cells of both modalities.
    batch_key
        Column of ``.obs`` (each modality's, else ``mdata.obs``) with the batch; ``None`` matches all selected cells in
        one block (as does the default ``"batch"`` when neither modality has it, with a warning; another column that
        neither has raises a KeyError). A missing label, or the text ``"nan"`` that ``astype(str)`` makes of one, is no
        batch.
    method
        ``"sinkhorn"`` (entropic OT), ``"exact"`` (one-to-one assignment, :func:`mumatch.ot.exact_matching`) or
        ``"knn"`` (mutual nearest neighbours, :func:`mumatch.ot.mutual_knn`).
    epsilon
        Entropic regularisation on the [0, 1] cost (> 0); also the temperature of the kNN weights.
    cost
        ``"cosine"`` or ``"sqeuclidean"``.
    tau
        KL relaxation of the marginals (unbalanced OT) for blocks with different cell numbers or compositions;
        ``None``: balanced. Sinkhorn only.
    top_k
        Entries kept per row of the plan; ``None`` keeps the largest entries holding 99.9 % of each row's mass, at
        most 1000. Sinkhorn only.
    max_iter, tol
        Sinkhorn stops after ``max_iter`` iterations or when the L1 marginal error is ≤ ``tol``.
    n_neighbors
        Neighbours searched on each side by ``method="knn"``.
    dtype, device, memory_budget
        Precision, device (``"auto"``: CUDA when available) and the bytes allowed for ``N × M`` work arrays
        (``None``: a quarter of the memory available, at most 2 GiB; see :func:`mumatch.ot.sinkhorn`).
        ``method="exact"`` always solves on the CPU in float64 (scipy's assignment).
    key_added
        Name of the outputs.
    copy
        Return a modified copy instead of working in place.

    Returns
    -------
    ``None``, or the modified copy with ``copy=True``. Adds

    - ``mdata.obsp[key_added]``: the plan, CSR over ``mdata.obs_names`` (rows: cells of ``mod1``, columns: cells of
      ``mod2``), non-zero only within blocks, each matched row summing to 1;
    - ``mdata.uns[key_added]``: ``params``, and ``blocks``: per block its name, sizes, status, ``block_time_s``
      (solve and sparse plan) and the solver's diagnostics, and
      for Sinkhorn the obs names of its cells (``cells1``, ``cells2``), the dual potentials ``f``, ``g`` and the
      cost's constants (``cost_kind``, ``cost_offset``, ``cost_scale``, and for the squared-Euclidean cost the
      points' frame ``cost_magnitude``, ``cost_centre``, ``cost_radius``), from which
      :func:`mumatch.ot.plan_tile` (given them as ``{"kind": ..., "offset": ..., ...}``) recomputes the full plan
      on the block's cells' embeddings (with several ``use_rep``, on the representations side by side, scaled by
      ``1/√n``, each unit-normalised first for the cosine cost: the embedding whose cosine similarity is the mean
      of theirs); and, when there are any, ``notes``: the warnings logged about the blocks (e.g. all cells matched
      in one block for want of batch labels, or a block whose two sides differ 4-fold in size);
    - ``mdata[mod].obs[f"{key_added}_confidence"]`` (largest weight of the cell's normalised row of the plan, or
      column for ``mod2``) and ``mdata[mod].obs[f"{key_added}_entropy"]`` (its entropy, nats), NaN for cells that
      were not matched. For ``method="sinkhorn"`` both describe the full OT plan before ``top_k`` or the mass threshold
      kept part of each row (with a small ``top_k`` the stored row's largest weight is higher). Replacing a plan of
      another pair under the same ``key_added`` removes these columns from a modality the new plan leaves out (they
      described the replaced plan).

    Examples
    --------
    >>> import mumatch as mm
    >>> mdata = mm.datasets.bmmc_starter("cite")
    >>> mm.pp.lsi_harmony(mdata)
    >>> models = mm.tl.train_clip(mdata, "rna", "adt")
    >>> mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_clip")
    >>> mm.metrics.match_score(mdata, key="match")  # doctest: +SKIP
    """
    check_mudata(mdata)
    check_copy(mdata, copy)
    check_mod(mdata, mod1, "mod1")
    check_mod(mdata, mod2, "mod2")
    if mod1 == mod2:
        raise ValueError(f"mod1 and mod2 must differ, both are {mod1!r}")
    _check_arguments(method, cost, epsilon, tau, top_k, max_iter, tol, n_neighbors, key_added, dtype, device)
    if key_added in mdata.obsp and recorded_plan_mods(mdata, key_added) is None:  # a plan match_ot did not write
        raise ValueError(
            f"key_added={key_added!r} names a matrix of mdata.obsp that match_ot did not write (e.g. the ground "
            "truth); choose another key_added"
        )
    for mod in (mod1, mod2):
        check_obs_names(mdata, mod)
    epsilon, tol = float(epsilon), float(tol)
    # Resolved once, so that every block works under the same budget (recorded in the params).
    memory_budget = resolve_memory_budget(memory_budget, resolve_device(device))
    keys = _rep_keys(use_rep, mod1, mod2)
    embeddings = _embedding(mdata, mod1, mod2, keys, cost)
    masks = _cell_masks(mdata, mod1, mod2, cells)
    found = check_batch_key(mdata, (mod1, mod2), batch_key)
    if cells == "unpaired":
        warn_conflicting_batches(mdata, mod1, mod2, batch_key, "those cells count as paired and are not matched")
    blocks, notes = batch_blocks(mdata, mod1, mod2, masks[mod1], masks[mod2], batch_key)
    if batch_key is not None and not found:
        # Data without batches is matched in one block under the default batch_key.
        notes = [
            f"batch_key={batch_key!r} is not a column of mdata['{mod1}'].obs or mdata['{mod2}'].obs: matching all "
            "selected cells in one block (pass batch_key=None when there are no batches)"
        ]
    if all(block.index1.size == 0 or block.index2.size == 0 for block in blocks):
        # Every block one-sided (e.g. batches spelt differently in each modality): an empty plan helps nobody.
        names = {
            mod: sorted({block.name for block in blocks if getattr(block, index).size})
            for mod, index in ((mod1, "index1"), (mod2, "index2"))
        }
        raise ValueError(
            f"no level of batch_key={batch_key!r} has selected cells in both modalities ('{mod1}': "
            f"{_shortened(names[mod1])}, '{mod2}': {_shortened(names[mod2])}), so there is nothing to match; make the "
            "labels agree, or pass batch_key=None to match across batches"
        )
    if method == "sinkhorn" and tau is None:
        notes += _imbalance_notes(blocks, mod1, mod2)
    for note in notes:
        logg.warning(note)

    start = logg.info(f"matching '{mod1}' and '{mod2}' cells with {method} on {keys[mod1]} ({len(blocks)} block(s))")
    pieces = []
    certainty = {
        mod: {name: np.full(mdata[mod].n_obs, np.nan) for name in ("confidence", "entropy")} for mod in (mod1, mod2)
    }
    block_records = {}
    for number, block in enumerate(blocks):
        record = {"name": block.name, "n_cells1": int(block.index1.size), "n_cells2": int(block.index2.size)}
        block_records[f"block{number}"] = record
        if block.index1.size == 0 or block.index2.size == 0:
            empty = mod1 if block.index1.size == 0 else mod2
            logg.warning(f"block '{block.name}' has no selected cells of '{empty}': skipped")
            record["status"] = f"skipped: no cells of '{empty}'"
            continue
        x = embeddings[mod1][block.index1]
        y = embeddings[mod2][block.index2]
        options = {"epsilon": epsilon, "cost": cost, "tau": tau, "top_k": top_k, "max_iter": max_iter, "tol": tol}
        options.update({"n_neighbors": n_neighbors, "dtype": dtype, "device": device, "memory_budget": memory_budget})
        solve_start = time.perf_counter()
        sparse = _solve_block(x, y, method, record, **options)
        # Sinkhorn records its own solve time; every method records the block's, sparse plan included.
        record["block_time_s"] = time.perf_counter() - solve_start
        if method == "sinkhorn":
            record["cells1"] = mdata[mod1].obs_names[block.index1].to_numpy().astype(str)
            record["cells2"] = mdata[mod2].obs_names[block.index2].to_numpy().astype(str)
        record["status"] = "solved"
        pieces.append((sparse.plan, block.index1, block.index2))
        certainty[mod1]["confidence"][block.index1] = sparse.row_confidence
        certainty[mod1]["entropy"][block.index1] = sparse.row_entropy
        certainty[mod2]["confidence"][block.index2] = sparse.col_confidence
        certainty[mod2]["entropy"][block.index2] = sparse.col_entropy
        solved = f"    block '{block.name}': {block.index1.size} × {block.index2.size} cells"
        if "n_iter" in record:
            solved += f", {record['n_iter']} iterations, marginal error {record['marginal_error']:.2g}"
        logg.info(solved)

    plan = embed_blocks(mdata, mod1, mod2, pieces)
    plan.eliminate_zeros()  # as summing the blocks' plans did: a stored zero links no cells
    plan = sp.csr_matrix(plan, dtype=np.float32)
    plan.sort_indices()

    params = {
        "mod1": mod1,
        "mod2": mod2,
        "use_rep": {mod: np.asarray(names, dtype=str) for mod, names in keys.items()},
        "cells": cells,
        "batch_key": batch_key,
        "method": method,
        "epsilon": float(epsilon),
        "cost": cost,
        "tau": tau,
        "top_k": top_k,
        "max_iter": int(max_iter),
        "tol": float(tol),
        "n_neighbors": int(n_neighbors),
        # By name: a torch.dtype (which the solvers take too) cannot be written to .h5mu.
        "dtype": str(resolve_dtype(dtype)).removeprefix("torch."),
        "memory_budget": memory_budget,
    }
    uns = {"params": {name: value for name, value in params.items() if value is not None}, "blocks": block_records}
    if notes:
        uns["notes"] = np.asarray(notes, dtype=str)

    target = mdata.copy() if copy else mdata
    if key_added in target.obsp:
        logg.warning(f"overwriting mdata.obsp['{key_added}']")
    _drop_replaced_certainty(target, key_added, (mod1, mod2))
    target.obsp[key_added] = plan
    target.uns[key_added] = uns
    for mod in (mod1, mod2):
        for name, values in certainty[mod].items():
            target[mod].obs[f"{key_added}_{name}"] = values
    logg.info(
        "    finished",
        time=start,
        deep=(
            f"added\n    .obsp['{key_added}'], the plan (CSR over mdata.obs_names)\n"
            f"    .uns['{key_added}'], parameters, per-block diagnostics and dual potentials\n"
            f"    .obs['{key_added}_confidence'], .obs['{key_added}_entropy'] in '{mod1}' and '{mod2}'"
        ),
    )
    return target if copy else None


def _drop_replaced_certainty(mdata: MuData, key_added: str, mods: tuple[str, str]) -> None:
    """Drop the confidence and entropy columns that the plan replaced under ``key_added`` wrote outside ``mods``.

    They describe a plan that is gone (e.g. ``'rna'`` to ``'atac'`` replaced by ``'rna'`` to ``'adt'``), and this
    call does not rewrite them.
    """
    replaced = recorded_plan_mods(mdata, key_added) or ()
    for mod in replaced:
        if mod in mods or mod not in mdata.mod:
            continue
        stale = [f"{key_added}_{name}" for name in ("confidence", "entropy") if f"{key_added}_{name}" in mdata[mod].obs]
        if stale:
            logg.warning(f"removing mdata['{mod}'].obs{stale}: they described the plan that '{key_added}' replaces")
            mdata[mod].obs = mdata[mod].obs.drop(columns=stale)


def _imbalance_notes(blocks: list, mod1: str, mod2: str) -> list[str]:
    """A note naming the blocks whose sides differ in size by :data:`IMBALANCE_RATIO` or more (balanced OT only)."""
    uneven = [
        f"'{block.name}' ({block.index1.size} × {block.index2.size})"
        for block in blocks
        if min(block.index1.size, block.index2.size) > 0
        and max(block.index1.size, block.index2.size) >= IMBALANCE_RATIO * min(block.index1.size, block.index2.size)
    ]
    if not uneven:
        return []
    shown = ", ".join(uneven[:5]) + (", ..." if len(uneven) > 5 else "")
    return [
        f"block(s) {shown} hold at least {IMBALANCE_RATIO:g} times as many cells of one modality as of the other "
        f"('{mod1}' × '{mod2}'): balanced OT gives every cell of the larger side partners on the smaller side, even "
        "cells of types the smaller side lacks; pass tau for unbalanced OT if the two sides' compositions differ"
    ]


def _solve_block(
    x: np.ndarray,
    y: np.ndarray,
    method: str,
    record: dict,
    *,
    epsilon: float,
    cost: str,
    tau: float | None,
    top_k: int | None,
    max_iter: int,
    tol: float,
    n_neighbors: int,
    dtype: str,
    device: str,
    memory_budget: int,
) -> ot.SparsePlan:
    """Solve one block with the chosen method; diagnostics go into ``record``."""
    if method == "exact":
        sparse = ot.exact_matching(x, y, cost=cost)
    elif method == "knn":
        sparse = ot.mutual_knn(
            x,
            y,
            n_neighbors=n_neighbors,
            epsilon=epsilon,
            cost=cost,
            dtype=dtype,
            device=device,
            memory_budget=memory_budget,
        )
    else:
        result = ot.sinkhorn(
            x,
            y,
            epsilon=epsilon,
            cost=cost,
            tau=tau,
            tol=tol,
            max_iter=max_iter,
            dtype=dtype,
            device=device,
            memory_budget=memory_budget,
        )
        if not result.converged:
            logg.warning(
                f"Sinkhorn stopped after {result.n_iter} iterations with marginal error {result.marginal_error:.3g} "
                f"> tol={tol}; raise max_iter or epsilon"
            )
        record.update(result.diagnostics())
        record.update({"f": result.f, "g": result.g, "cost_kind": result.cost["kind"]})
        # offset and scale; for the squared-Euclidean cost also the points' frame (magnitude, centre, radius)
        record.update({f"cost_{name}": value for name, value in result.cost.items() if name != "kind"})
        sparse = ot.sparsify_plan(
            x,
            y,
            result.f,
            result.g,
            result.epsilon,
            result.cost,
            top_k=top_k,
            dtype=dtype,
            device=device,
            memory_budget=memory_budget,
        )
        record["min_row_mass_kept"] = float(sparse.row_mass_kept.min())
    return sparse
