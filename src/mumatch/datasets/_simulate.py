"""Synthetic paired multimodal counts in mumatch's layout, fast and sparse at atlas scale."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData
from scanpy import logging as logg

from .._validate import check_int, is_number

FEATURE_TYPES = {"rna": "GEX", "atac": "ATAC", "adt": "ADT"}
# Mean counts per cell, of the order of 10x data after filtering: ~1.5k UMIs (RNA), ~2.5k fragments in peaks (ATAC),
# ~2k antibody-derived tags (ADT, CITE-seq panels of 100-200 proteins).
FEATURE_ARGUMENTS = {"rna": "n_genes", "atac": "n_peaks", "adt": "n_proteins"}
DEFAULT_LIBRARY_SIZE = {"rna": 1500.0, "atac": 2500.0, "adt": 2000.0}
N_STATE_BINS = 16  # resolution of the continuous state along each cell type's trajectory
ADT_DISPERSION = 5.0  # NB inverse dispersion of protein counts (ADT counts are strongly over-dispersed)


def _profiles(rng: np.random.Generator, n_features: int, n_cell_types: int, kind: str) -> np.ndarray:
    """Log-abundance of every feature in every cell type: a shared baseline plus sparse type-specific changes."""
    spread = {"rna": 1.5, "atac": 0.8, "adt": 1.0}[kind]
    marker_fraction = {"rna": 0.1, "atac": 0.15, "adt": 0.4}[kind]
    baseline = rng.normal(0.0, spread, n_features)
    changes = rng.normal(0.0, 1.5, (n_cell_types, n_features))
    changes *= rng.random((n_cell_types, n_features)) < marker_fraction
    return (baseline + changes).astype(np.float64)


def _sorted_uniforms(rng: np.random.Generator, totals: np.ndarray) -> np.ndarray:
    """For each cell, ``totals[c]`` sorted uniforms (order statistics from cumulative exponential spacings).

    Sorted draws make the sampled feature indices sorted within each cell, so duplicates are adjacent and CSR rows come
    out canonical without any sort.
    """
    spacings = rng.standard_exponential(int(totals.sum() + totals.size))
    cumulative = np.cumsum(spacings)
    ends = np.cumsum(totals + 1) - 1
    offset = np.concatenate([[0.0], cumulative[ends[:-1]]])
    scale = cumulative[ends] - offset
    keep = np.ones(spacings.size, dtype=bool)
    keep[ends] = False
    cell_of_draw = np.repeat(np.arange(totals.size), totals)
    return (cumulative[keep] - offset[cell_of_draw]) / scale[cell_of_draw]


def _sample_sparse(
    rng: np.random.Generator,
    log_profiles: np.ndarray,
    cell_type: np.ndarray,
    neighbour_type: np.ndarray,
    state: np.ndarray,
    state_bin: np.ndarray,
    batch: np.ndarray,
    batch_shift: np.ndarray,
    library: np.ndarray,
) -> sp.csr_matrix:
    """Multinomial counts given each cell's library size: the profile of (type, state, batch), sampled sparsely."""
    n_cells, n_features = library.size, log_profiles.shape[1]
    totals = rng.poisson(library).astype(np.int64)
    type_profiles = np.stack([_softmax(row) for row in log_profiles])
    batch_factors = np.exp(batch_shift)
    # Cells arrive sorted by (type, state, batch): each group is a contiguous run of rows sharing one profile.
    group = (cell_type * N_STATE_BINS + state_bin) * batch_shift.shape[0] + batch
    boundaries = np.flatnonzero(np.diff(group)) + 1
    groups = np.split(np.arange(n_cells), boundaries)
    seeds = rng.spawn(len(groups))

    def sample_group(members: np.ndarray, group_rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        first = members[0]
        weight = state[first]
        profile = (1 - weight) * type_profiles[cell_type[first]] + weight * type_profiles[neighbour_type[first]]
        cdf = np.cumsum(profile * batch_factors[batch[first]])
        cdf /= cdf[-1]
        member_totals = totals[members]
        features = np.searchsorted(cdf, _sorted_uniforms(group_rng, member_totals), side="right")
        np.minimum(features, n_features - 1, out=features)
        rows = np.repeat(np.arange(members.size), member_totals)
        new_entry = np.ones(features.size, dtype=bool)
        new_entry[1:] = (features[1:] != features[:-1]) | (rows[1:] != rows[:-1])
        starts = np.flatnonzero(new_entry)
        counts = np.diff(np.append(starts, features.size))
        nnz_per_row = np.bincount(rows[starts], minlength=members.size)
        return nnz_per_row, features[starts].astype(np.int32), counts.astype(np.float32)

    # numpy releases the GIL in its sampling and search kernels, so groups run in parallel threads; each group has
    # its own spawned generator, which keeps the result independent of the number of threads.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        pieces = list(pool.map(sample_group, groups, seeds))
    indptr = np.concatenate([[0], np.cumsum(np.concatenate([piece[0] for piece in pieces]))])
    indices = np.concatenate([piece[1] for piece in pieces])
    data = np.concatenate([piece[2] for piece in pieces])
    return sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_features))


def _softmax(values: np.ndarray) -> np.ndarray:
    weights = np.exp(values - values.max())
    return weights / weights.sum()


def _sample_dense_nb(
    rng: np.random.Generator,
    log_profiles: np.ndarray,
    cell_type: np.ndarray,
    neighbour_type: np.ndarray,
    state: np.ndarray,
    batch: np.ndarray,
    batch_shift: np.ndarray,
    library: np.ndarray,
) -> sp.csr_matrix:
    """Negative binomial counts for a small panel of features (ADT), computed densely in chunks of cells."""
    probabilities = np.exp(log_profiles - log_profiles.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    chunks = []
    for start in range(0, library.size, 20_000):
        part = slice(start, start + 20_000)
        weight = state[part, None]
        mean = (1 - weight) * probabilities[cell_type[part]] + weight * probabilities[neighbour_type[part]]
        mean = mean * np.exp(batch_shift[batch[part]])
        mean = mean / mean.sum(axis=1, keepdims=True) * library[part, None]
        counts = rng.negative_binomial(ADT_DISPERSION, ADT_DISPERSION / (ADT_DISPERSION + mean))
        chunks.append(sp.csr_matrix(counts.astype(np.float32)))
    return sp.vstack(chunks).tocsr()


def simulate_paired(
    n_cells: int = 2000,
    modalities: Sequence[str] = ("rna", "atac"),
    *,
    n_batches: int = 2,
    n_cell_types: int = 8,
    n_genes: int = 2000,
    n_peaks: int = 5000,
    n_proteins: int = 50,
    paired_fraction: float = 0.5,
    batch_effect: float = 0.3,
    library_size: Mapping[str, float] | None = None,
    pairing: Mapping[str, float] | None = None,
    seed: int = 0,
) -> MuData:
    """Simulate paired multimodal single-cell counts in mumatch's transductive layout.

    Every simulated cell has a cell type, a continuous state along a trajectory towards a neighbouring type and a
    batch; these shared latent variables drive all modalities, so a cell's measurements in two modalities correspond.
    Counts are sparse throughout (100,000 cells × 20,000 genes + 100,000 peaks take well under a minute):

    - RNA: multinomial counts given a log-normal library size (Poisson–log-normal, over-dispersed like NB);
    - ATAC: the same scheme over many peaks with low per-peak probabilities, giving sparse, mostly binary counts;
    - ADT: negative binomial counts over a small protein panel.

    Batches shift every feature's abundance (log-normal factors of scale ``batch_effect``) and the library sizes.

    Parameters
    ----------
    n_cells
        Number of simulated biological cells.
    modalities
        Modalities to simulate, two or three of ``"rna"``, ``"atac"``, ``"adt"``.
    n_batches
        Number of batches (cells are assigned uniformly).
    n_cell_types
        Number of cell types.
    n_genes, n_peaks, n_proteins
        Number of features of the RNA, ATAC and ADT modalities.
    paired_fraction
        Fraction of cells observed in every modality (``obs['split'] == 'train'``, same obs name everywhere). The
        other cells are observed in each modality separately, as unpaired cells named ``'{mod}:cell_{i}'``.
    batch_effect
        Scale of the batch effect on log abundances.
    library_size
        Mean counts per cell for each modality (defaults: RNA 1,500, ATAC 2,500, ADT 2,000).
    pairing
        Partial pairing of three modalities (as TEA-seq or DOGMA-seq panels lose one assay for some cells): the
        fraction of the paired cells measured in each combination of at least two modalities, named by joining the
        modality names with ``+``, e.g. ``{"rna+atac+adt": 0.6, "rna+atac": 0.2, "atac+adt": 0.2}`` (fractions
        summing to 1). A paired cell is left out of the modalities its combination lacks (it keeps its name and
        ``obs['split'] == 'train'`` in the others; ``match_true`` covers the unpaired cells only, as without
        ``pairing``). ``None``: every paired cell in every modality.
    seed
        Random seed.

    Returns
    -------
    A MuData with, in every modality, counts in ``.X`` and ``.layers['counts']`` (float32 CSR), ``obs['batch']``,
    ``obs['split']``, ``obs['cell_type']``, ``obs['state']``; and ``mdata.obsp['match_true']``, the ground truth of
    the unpaired cells (rows: a modality's unpaired cells, columns: the same cells in a later modality).

    Examples
    --------
    >>> import mumatch as mm
    >>> mdata = mm.datasets.simulate_paired(500, ("rna", "adt"), n_genes=300, n_proteins=20)
    >>> mdata["rna"].n_obs, mdata["adt"].n_vars
    (500, 20)
    """
    check_int(n_cells, "n_cells", minimum=2)
    check_int(n_batches, "n_batches")
    check_int(n_cell_types, "n_cell_types")
    modalities = list(modalities)
    unknown = [mod for mod in modalities if mod not in FEATURE_TYPES]
    if unknown or not 2 <= len(modalities) <= 3 or len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities={modalities!r}: choose two or three distinct names of {list(FEATURE_TYPES)}")
    check_int(seed, "seed", minimum=0)
    if not is_number(paired_fraction) or not 0.0 <= paired_fraction <= 1.0:
        raise ValueError(f"paired_fraction must be a number in [0, 1], got {paired_fraction!r}")
    n_features = {"rna": n_genes, "atac": n_peaks, "adt": n_proteins}
    for mod in modalities:
        check_int(n_features[mod], FEATURE_ARGUMENTS[mod])
    if not is_number(batch_effect) or not np.isfinite(batch_effect) or batch_effect < 0:
        raise ValueError(f"batch_effect must be a finite number >= 0, got {batch_effect!r}")
    sizes = {**DEFAULT_LIBRARY_SIZE, **_check_library_size(library_size, modalities)}
    combinations = _check_pairing(pairing, modalities)

    start = logg.info(f"simulating {n_cells} cells: {', '.join(modalities)}")
    rng = np.random.default_rng(seed)
    cell_type = rng.integers(0, n_cell_types, n_cells)
    state_bin = rng.integers(0, N_STATE_BINS, n_cells)
    batch = rng.integers(0, n_batches, n_cells)
    # Sorting cells by (type, state, batch) lets the samplers treat each group as one contiguous block of rows.
    order = np.lexsort((batch, state_bin, cell_type))
    cell_type, state_bin, batch = cell_type[order], state_bin[order], batch[order]
    neighbour_type = (cell_type + 1) % n_cell_types
    # Halving the trajectory keeps each cell nearer its own type than the neighbouring one.
    state = state_bin / (N_STATE_BINS - 1) * 0.5
    depth = rng.lognormal(0.0, 0.35, n_cells) * rng.lognormal(0.0, 0.2, n_batches)[batch]
    paired = rng.random(n_cells) < paired_fraction
    cell_names = np.array([f"cell_{i}" for i in rng.permutation(n_cells)], dtype=object)
    measured = {mod: np.ones(n_cells, dtype=bool) for mod in modalities}
    if combinations:
        # Its own stream, so that the cells, counts and names are those of the same seed without pairing.
        drawn = np.random.default_rng([seed, len(modalities) + 1]).choice(
            len(combinations), size=n_cells, p=[fraction for _, fraction in combinations]
        )
        for mod in modalities:
            lacking = [position for position, (members, _) in enumerate(combinations) if mod not in members]
            measured[mod] = ~(paired & np.isin(drawn, lacking))
        empty = [mod for mod in modalities if not measured[mod].any()]
        if empty:
            raise ValueError(
                f"pairing={dict(pairing)!r} with paired_fraction={paired_fraction} leaves {empty} without cells; "
                "name each modality in a combination or lower paired_fraction"
            )
    obs_base = pd.DataFrame(
        {
            "batch": pd.Categorical([f"batch{b}" for b in batch]),
            "split": pd.Categorical(np.where(paired, "train", "test"), categories=["train", "test"]),
            "cell_type": pd.Categorical([f"type{t}" for t in cell_type]),
            "state": state.astype(np.float32),
        }
    )

    mods = {}
    for mod in modalities:
        mod_rng = np.random.default_rng([seed, modalities.index(mod) + 1])
        log_profiles = _profiles(mod_rng, n_features[mod], n_cell_types, mod)
        batch_shift = mod_rng.normal(0.0, batch_effect, (n_batches, n_features[mod]))
        library = sizes[mod] * depth * mod_rng.lognormal(0.0, 0.15, n_cells)
        if mod == "adt":
            counts = _sample_dense_nb(
                mod_rng, log_profiles, cell_type, neighbour_type, state, batch, batch_shift, library
            )
        else:
            counts = _sample_sparse(
                mod_rng, log_profiles, cell_type, neighbour_type, state, state_bin, batch, batch_shift, library
            )
        obs = obs_base.copy()
        obs.index = pd.Index(np.where(paired, cell_names, f"{mod}:" + cell_names), dtype=str)
        prefix = {"rna": "gene", "atac": "peak", "adt": "protein"}[mod]
        var = pd.DataFrame(
            {"feature_types": FEATURE_TYPES[mod]},
            index=pd.Index([f"{prefix}_{i}" for i in range(n_features[mod])], dtype=str),
        )
        # Rows in their own random order per modality: sorted by group and aligned across modalities, an unpaired
        # cell's partner would sit at its own row, and any method breaking ties by position would look perfect.
        # Reordered before the AnnData exists, so that no more than two copies of the counts are ever alive.
        shuffled = np.random.default_rng([seed, modalities.index(mod) + 1, 1]).permutation(n_cells)
        rows = shuffled[measured[mod][shuffled]]
        counts, obs = counts[rows], obs.iloc[rows]
        adata = ad.AnnData(X=counts, obs=obs, var=var)
        del counts
        adata.layers["counts"] = adata.X.copy()  # normalising .X in place must leave the raw counts alone
        mods[mod] = adata
    mdata = MuData(mods)

    unpaired = np.flatnonzero(~paired)
    rows, cols = [], []
    for i, mod1 in enumerate(modalities):
        for mod2 in modalities[i + 1 :]:
            rows.append(mdata.obs_names.get_indexer(f"{mod1}:" + cell_names[unpaired]))
            cols.append(mdata.obs_names.get_indexer(f"{mod2}:" + cell_names[unpaired]))
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    mdata.obsp["match_true"] = sp.csr_matrix(
        (np.ones(rows.size, dtype=np.float32), (rows, cols)), shape=(mdata.n_obs, mdata.n_obs)
    )
    mdata.uns["simulation"] = {
        "params": {
            "n_cells": n_cells,
            "modalities": modalities,
            "n_batches": n_batches,
            "n_cell_types": n_cell_types,
            "paired_fraction": paired_fraction,
            "batch_effect": batch_effect,
            "seed": seed,
            **{name: n_features[mod] for mod, name in FEATURE_ARGUMENTS.items() if mod in modalities},
            "library_size": {mod: float(sizes[mod]) for mod in modalities},
            "pairing": {"+".join(members): fraction for members, fraction in combinations} or "none",
        }
    }
    logg.info("    finished", time=start)
    return mdata


def _check_pairing(pairing: Mapping[str, float] | None, modalities: list[str]) -> list[tuple[tuple[str, ...], float]]:
    """The combinations of ``pairing`` as (modalities, fraction), checked; empty for None."""
    if pairing is None:
        return []
    if not isinstance(pairing, Mapping) or not pairing:
        raise ValueError(f"pairing must map combinations such as 'rna+atac' to fractions, got {pairing!r}")
    combinations = []
    for name, fraction in pairing.items():
        members = tuple(str(name).split("+"))
        if len(members) < 2 or len(set(members)) != len(members) or not set(members) <= set(modalities):
            raise KeyError(
                f"pairing names {name!r}; a combination joins two or more of {modalities} with '+', e.g. "
                f"'{'+'.join(modalities[:2])}'"
            )
        if not is_number(fraction) or not np.isfinite(fraction) or fraction < 0:
            raise ValueError(f"pairing[{name!r}] must be a fraction >= 0, got {fraction!r}")
        combinations.append((members, float(fraction)))
    total = sum(fraction for _, fraction in combinations)
    if not np.isclose(total, 1.0):
        raise ValueError(f"the fractions of pairing must sum to 1, got {total:g}")
    return [(members, fraction / total) for members, fraction in combinations]


def _check_library_size(library_size: Mapping[str, float] | None, modalities: list[str]) -> dict[str, float]:
    """The mean library sizes the caller set: for simulated modalities, finite and > 0."""
    if library_size is None:
        return {}
    if not isinstance(library_size, Mapping):
        raise ValueError(f"library_size must map modality names to mean counts per cell, got {library_size!r}")
    unknown = [mod for mod in library_size if mod not in modalities]
    if unknown:
        raise KeyError(f"library_size names {unknown}, which are not simulated; use names from {modalities}")
    for mod, size in library_size.items():
        if not is_number(size) or not np.isfinite(size) or size <= 0:
            raise ValueError(f"library_size['{mod}'] must be a finite number > 0, got {size!r}")
    return {mod: float(size) for mod, size in library_size.items()}
