"""Both modalities' cells in the shared embedding: one UMAP of the stacked cells, coloured by modality or any label."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from matplotlib.axes import Axes
from mudata import MuData
from scanpy import logging as logg

from .._layout import array_fingerprint, check_one_space, embedding_mods, label_name, plain_values
from .._validate import check_int, check_mods, check_mudata, check_rep, obs_column
from ._utils import AUTO, CELL_TYPE, category_colors, check_save, finish, stored_colors

MODALITY = "modality"
# From this many cells on, scanpy finds neighbours with an approximate index (pynndescent), as umap does.
APPROXIMATE_KNN_CELLS = 8192


def _stack(mdata: MuData, mods: list[str], basis: str) -> np.ndarray:
    """The embeddings of every cell of ``mods``, one modality after the other."""
    blocks = [check_rep(mdata, mod, basis, "basis") for mod in mods]
    widths = {mod: block.shape[1] for mod, block in zip(mods, blocks, strict=True)}
    if len(set(widths.values())) != 1:
        raise ValueError(
            f"basis={basis!r} has different widths per modality ({widths}); a joint embedding needs one shared space"
        )
    return np.concatenate(blocks).astype(np.float32)


def _cell_column(mdata: MuData, mod: str, key: str) -> pd.Series | None:
    """Column ``key`` for the cells of ``mod``: the modality's own ``.obs[key]``, else the MuData's ``.obs[key]``.

    A label kept at the MuData level (e.g. ``mdata.obs["cell_type"]``, or muon's ``"rna:cell_type"`` after
    ``mdata.update()``) is read for the modality's cells by obs name; None when neither has it (or the MuData's obs
    names repeat, so that a name does not say which row).
    """
    if key not in mdata[mod].obs and not mdata.obs_names.is_unique:
        return None  # obs_column would raise; joint_embedding says so for a colour that only mdata.obs has
    return obs_column(mdata, mod, key)


def _has_column(mdata: MuData, mods: list[str], key: str) -> bool:
    """Whether any of ``mods`` has column ``key`` (its own or the MuData's, see :func:`_cell_column`)."""
    return any(_cell_column(mdata, mod, key) is not None for mod in mods)


def _obs_column(mdata: MuData, mods: list[str], key: str) -> pd.Series:
    """One obs column over the stacked cells; cells of a modality without it get NaN."""
    columns = {mod: _cell_column(mdata, mod, key) for mod in mods}
    parts = [
        column.reset_index(drop=True) if column is not None else pd.Series(np.nan, index=range(mdata[mod].n_obs))
        for mod, column in columns.items()
    ]
    values = pd.concat(parts, ignore_index=True)
    if any(column is not None and not pd.api.types.is_numeric_dtype(column) for column in columns.values()):
        labels = values.astype(object).where(values.notna(), None)
        present = list(dict.fromkeys(label_name(label) for label in labels.dropna()))
        ordered = []
        for column in columns.values():
            if column is not None and isinstance(column.dtype, pd.CategoricalDtype):
                names = [label_name(category) for category in column.cat.categories]
                ordered += [name for name in names if name in present and name not in ordered]
        ordered += sorted(label for label in present if label not in ordered)
        return pd.Series(
            pd.Categorical(labels.map(lambda label: None if label is None else label_name(label)), ordered)
        )
    return values.astype(float)


def _colors(mdata: MuData, mods: list[str], key: str, categories: list[str]) -> list[str] | None:
    """Colours of the stacked categories from ``.uns[f"{key}_colors"]`` (the first modality's first).

    A modality's own column takes its colours from the modality's ``.uns``, a MuData-level column from
    ``mdata.uns``. None when none is stored, so that scanpy picks its palette as for any AnnData.
    """
    known: dict[str, str] = {}
    for mod in reversed(mods):
        column = _cell_column(mdata, mod, key)
        if column is not None:
            uns = mdata[mod].uns if key in mdata[mod].obs else mdata.uns
            known.update(stored_colors(column, uns.get(f"{key}_colors")))
    if not any(category in known for category in categories):
        return None
    return list(category_colors(categories, known).values())


def _cache_mods(mdata: MuData, key_added: str) -> list[str] | None:
    """The modalities whose ``.obsm[key_added]`` still holds what this function cached; None when it cached none.

    The cached rows are recorded (a float32 pair is one 64-bit key): coordinates a user has since put under that name
    are theirs, while after subsetting the rows left are all among the recorded ones and the cache, stale, is still
    this function's.
    """
    stored = mdata.uns.get(key_added)
    params = stored.get("params") if isinstance(stored, Mapping) else None
    # The embedding's fingerprint is recorded by this function alone: it marks a cache written here.
    if not (isinstance(params, Mapping) and "fingerprint" in params and "basis" in params):
        return None
    written_rows = stored.get("rows")
    if not isinstance(written_rows, Mapping):  # a cache written before its rows were recorded
        return [str(mod) for mod in plain_values(params.get("mods", []))]

    def ours(mod: str, written: object) -> bool:
        if mod not in mdata.mod or key_added not in mdata[mod].obsm:
            return False
        rows = _row_keys(np.asarray(mdata[mod].obsm[key_added]))
        return rows is not None and bool(np.isin(rows, np.asarray(written)).all())

    return [str(mod) for mod, written in written_rows.items() if ours(mod, written)]


def _foreign(mdata: MuData, mods: list[str], key_added: str) -> list[str]:
    """The slots named ``key_added`` that hold something this function did not write (a user's UMAP, the basis...)."""
    written = _cache_mods(mdata, key_added)
    slots = [f"mdata['{mod}'].obsm" for mod in mods if key_added in mdata[mod].obsm and mod not in (written or [])]
    return slots + ([] if written is not None or key_added not in mdata.uns else ["mdata.uns"])


def _row_keys(coordinates: np.ndarray) -> np.ndarray | None:
    """Each row of 2-d float32 coordinates as one uint64 (the row's bytes), sorted; None for other arrays."""
    if coordinates.ndim != 2 or coordinates.shape[1] != 2 or coordinates.dtype != np.float32:
        return None
    return np.sort(np.ascontiguousarray(coordinates).view(np.uint64).ravel())


def _cached(mdata: MuData, mods: list[str], key_added: str, params: dict[str, Any]) -> bool:
    stored = mdata.uns.get(key_added)
    if not isinstance(stored, dict) or "params" not in stored:
        return False
    same_params = {name: plain_values(value) for name, value in stored["params"].items()} == params
    shapes_fit = all(
        key_added in mdata[mod].obsm and mdata[mod].obsm[key_added].shape == (mdata[mod].n_obs, 2) for mod in mods
    )
    return same_params and shapes_fit


def joint_embedding(
    mdata: MuData,
    basis: str = "X_clip",
    *,
    mods: Sequence[str] | None = None,
    color: str | Sequence[str] | None = AUTO,
    n_neighbors: int = 15,
    min_dist: float = 0.5,
    random_state: int = 0,
    key_added: str | None = None,
    recompute: bool = False,
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | os.PathLike | None = None,
    **kwargs: Any,
) -> Axes | list[Axes] | None:
    """UMAP of every cell of several modalities in their shared embedding, coloured by modality and by labels.

    The modalities' embeddings ``.obsm[basis]`` are stacked (a paired cell appears once per modality), a neighbour
    graph and a UMAP are computed on them with scanpy, and the result is drawn with :func:`scanpy.pl.embedding`. Well
    mixed modalities with cell types that stay apart is what a good shared embedding looks like.

    The UMAP is cached once the figure is drawn (and saved): adds ``mdata[mod].obsm[key_added]`` (the 2-d
    coordinates of the modality's cells) and ``mdata.uns[key_added]`` (``params``, with a fingerprint of the embedding,
    and the cached ``rows``); a later call with the same parameters and the same embedding reuses it. A
    ``key_added`` already holding something else (e.g. a modality's own ``X_umap``) is left as it is, with a warning,
    and the UMAP is not cached.
    Categories are coloured as ``.uns[f"{key}_colors"]`` of the modalities (or of the MuData, for its own columns)
    says, when it is set.

    Parameters
    ----------
    mdata
        MuData whose modalities hold the shared embedding in ``.obsm[basis]``.
    basis
        The shared embedding (e.g. ``"X_clip"`` from :func:`mumatch.tl.train_clip`); the same width in every modality.
    mods
        Modalities to show (default: every modality that has ``basis`` and, when a training recorded it in
        ``mdata.uns[basis]``, that training's modalities: another may hold an earlier model's space under the name).
    color
        What to colour by, one panel each: ``"modality"`` or columns of the modalities' ``.obs`` (categorical or
        numeric, e.g. ``"cell_type"``, ``"split"``, ``"match_confidence"``), or of ``mdata.obs`` for a modality without
        its own (read by obs name); cells of a modality with neither are grey. ``"auto"`` (default):
        ``["modality", "cell_type"]`` when a shown modality (or ``mdata.obs``) has ``"cell_type"``, else
        ``"modality"``.
    n_neighbors, min_dist, random_state
        Passed to :func:`scanpy.pp.neighbors` and :func:`scanpy.tl.umap`.
    key_added
        Where the UMAP is cached (default: ``f"{basis}_umap"``); only a cache written by this function is
        overwritten.
    recompute
        Recompute the UMAP even when a cached one fits.
    ax
        Axes to draw into (only with one colour).
    show
        Show the figure (default: ``scanpy.settings.autoshow``); a shown figure returns None.
    save
        As in scanpy: ``True`` writes ``{figdir}/joint_embedding{plot_suffix}.{file_format_figs}``
        (``scanpy.settings``); a string without a directory is appended to the name there (``"_x.png"`` →
        ``joint_embedding_x.png``); a path with a directory, or a :class:`~pathlib.Path`, is written as it is.
        ``None`` follows ``scanpy.settings.autosave``.
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (``size``, ``palette``, ``legend_loc``, ...).

    Returns
    -------
    The Axes (a list with several colours), unless shown.

    Examples
    --------
    >>> import mumatch as mm
    >>> mdata = mm.datasets.bmmc_starter("multiome")
    >>> mm.pp.lsi_harmony(mdata)  # doctest: +SKIP
    >>> models = mm.tl.train_clip(mdata, "rna", "atac")  # doctest: +SKIP
    >>> mm.pl.joint_embedding(mdata, "X_clip", color=["modality", "cell_type"])  # doctest: +SKIP
    """
    check_mudata(mdata)
    if mods is None:
        # The modalities of the last training under basis: others may keep an earlier model's space there.
        trained = embedding_mods(mdata, basis)
        mods = [mod for mod in mdata.mod if basis in mdata[mod].obsm and (trained is None or mod in trained)]
        if not mods:
            raise KeyError(
                f"basis={basis!r} is in no modality's .obsm; compute a shared embedding first, e.g. mm.tl.train_clip"
            )
    mods = check_mods(mdata, mods)
    check_one_space(mdata, mods, basis, "basis")
    if color == AUTO:
        color = [MODALITY, CELL_TYPE] if _has_column(mdata, mods, CELL_TYPE) else MODALITY
    colors = [color] if isinstance(color, str) else list(color or [])
    for key in colors:
        if key != MODALITY and not _has_column(mdata, mods, key):
            if key in mdata.obs.columns:  # there, but unreadable by obs name (see _cell_column)
                raise ValueError(
                    f"color={key!r} is a column of mdata.obs only, and mdata.obs_names repeats names, so it cannot be "
                    "read cell by cell; make the names unique (e.g. mdata.obs_names_make_unique()) or put the column "
                    "in each modality's .obs"
                )
            raise KeyError(
                f"color={key!r} is not a column of .obs in any of {mods} nor of mdata.obs; use '{MODALITY}' or an obs "
                "column"
            )
    if ax is not None and len(colors) > 1:
        raise ValueError(f"ax= draws one panel but color= asks for {len(colors)}; pass one colour or ax=None")
    check_int(n_neighbors, "n_neighbors", minimum=2)
    check_save(save)
    stacked = _stack(mdata, mods, basis)
    if stacked.shape[0] <= n_neighbors:
        raise ValueError(f"{stacked.shape[0]} cells are too few for n_neighbors={n_neighbors}")
    key_added = key_added or f"{basis}_umap"
    params = {
        "basis": basis,
        "mods": list(mods),
        "n_neighbors": n_neighbors,
        "min_dist": float(min_dist),
        "random_state": random_state,
        "fingerprint": array_fingerprint(stacked),
    }

    modality = pd.Categorical(np.repeat(mods, [mdata[mod].n_obs for mod in mods]), categories=list(mods))
    names = np.concatenate([(f"{mod}:" + mdata[mod].obs_names).to_numpy() for mod in mods])
    obs = pd.DataFrame({MODALITY: modality}, index=pd.Index(names, dtype=str))
    cells = ad.AnnData(X=stacked, obs=obs)
    for key in colors:
        if key != MODALITY:
            # .values keeps a categorical's order (a plain array would be re-sorted by scanpy).
            cells.obs[key] = _obs_column(mdata, mods, key).values
            if isinstance(cells.obs[key].dtype, pd.CategoricalDtype):
                stored = _colors(mdata, mods, key, list(cells.obs[key].cat.categories))
                if stored is not None:
                    cells.uns[f"{key}_colors"] = stored

    foreign = _foreign(mdata, mods, key_added)
    start = None
    if not recompute and not foreign and _cached(mdata, mods, key_added, params):
        cells.obsm["X_umap"] = np.concatenate([np.asarray(mdata[mod].obsm[key_added]) for mod in mods])
    else:
        start = logg.info(f"computing a UMAP of {basis!r} over {', '.join(mods)}")
        _neighbors(cells, n_neighbors, random_state)
        sc.tl.umap(cells, min_dist=min_dist, random_state=random_state)
    coordinates = cells.obsm["X_umap"].astype(np.float32)
    # Drawn in random order, so that no modality hides the other under it.
    shuffled = cells[np.random.default_rng(random_state).permutation(cells.n_obs)].copy()
    options = {"frameon": False, **kwargs}
    axes = sc.pl.embedding(shuffled, "umap", color=colors or None, ax=ax, show=False, **options)
    shown = finish(axes, show, save, "joint_embedding")

    # Written last, once drawing and saving succeeded, so that a failed call leaves the MuData as it was.
    if start is not None and foreign:
        logg.warning(
            f"key_added={key_added!r} already names something in {', '.join(foreign)} that mm.pl.joint_embedding did "
            "not write: left as it is, and the UMAP is not cached; pass another key_added to cache it"
        )
    elif start is not None:
        # The cache holds one UMAP: coordinates of an earlier one in modalities not drawn now are dropped (kept, they
        # would look like someone else's data to the next call).
        for mod in _cache_mods(mdata, key_added) or []:
            if mod not in mods and mod in mdata.mod and key_added in mdata[mod].obsm:
                del mdata[mod].obsm[key_added]
        offsets = np.cumsum([0] + [mdata[mod].n_obs for mod in mods])
        for position, mod in enumerate(mods):
            mdata[mod].obsm[key_added] = coordinates[offsets[position] : offsets[position + 1]]
        mdata.uns[key_added] = {
            "params": params,
            "rows": {mod: _row_keys(mdata[mod].obsm[key_added]) for mod in mods},
        }
        logg.info(
            "    finished",
            time=start,
            deep=f"added\n    .obsm['{key_added}'] in {', '.join(mods)}, the UMAP coordinates\n"
            f"    .uns['{key_added}'], its parameters",
        )
    return shown


class _MatrixGraph:
    """A k-NN transformer whose graph comes back as a ``scipy.sparse.csr_matrix``.

    scanpy 1.11 reads the graph with ``.getnnz``, which scipy 1.17's sparse arrays (what pynndescent 0.7 returns)
    no longer have: from 8,192 cells on, ``sc.pp.neighbors`` failed with an ``AttributeError``.
    """

    def __init__(self, transformer: Any) -> None:
        self.transformer = transformer

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return self.transformer.get_params(deep)

    def fit(self, x: np.ndarray, y: None = None) -> _MatrixGraph:
        self.transformer.fit(x)
        return self

    def transform(self, x: np.ndarray) -> sp.csr_matrix:
        return sp.csr_matrix(self.transformer.transform(x))

    def fit_transform(self, x: np.ndarray, y: None = None) -> sp.csr_matrix:
        return sp.csr_matrix(self.transformer.fit_transform(x))


def _neighbors(cells: ad.AnnData, n_neighbors: int, random_state: int) -> None:
    """``sc.pp.neighbors`` on ``cells.X``, with scanpy's own choice of index, whatever scipy's sparse type."""
    transformer = None
    if cells.n_obs >= APPROXIMATE_KNN_CELLS:
        from pynndescent import PyNNDescentTransformer

        # scanpy's settings for this many cells (those of umap's nearest_neighbors).
        transformer = _MatrixGraph(
            PyNNDescentTransformer(
                n_neighbors=n_neighbors,
                metric="euclidean",
                random_state=random_state,
                n_jobs=sc.settings.n_jobs,
                n_trees=min(64, 5 + round(cells.n_obs**0.5 / 20.0)),
                n_iters=max(5, round(np.log2(cells.n_obs))),
            )
        )
    sc.pp.neighbors(cells, n_neighbors=n_neighbors, use_rep="X", random_state=random_state, transformer=transformer)
