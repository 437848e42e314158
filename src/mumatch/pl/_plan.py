"""The matching plan of one batch block as a heatmap ordered by a label, so that a good matching is block diagonal."""

from __future__ import annotations

import os
from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.sparse as sp
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from mpl_toolkits.axes_grid1 import make_axes_locatable
from mudata import MuData

from .._layout import MISSING_BATCH, batch_labels, extract_block, oriented_plan, recorded_plan_mods
from .._validate import check_int, check_mod, check_mudata, check_obs_key, check_obs_names
from ._utils import (
    AUTO,
    as_labels,
    category_colors,
    check_save,
    column_categories,
    finish,
    ordered_categories,
    resolve_groupby,
    stored_colors,
)

RECORDED = "recorded"


def plan_mods(mdata: MuData, key: str, mod1: str | None, mod2: str | None) -> tuple[str, str]:
    """Modalities of the rows and columns: given, else recorded by the matcher or the reader, else the first two."""
    recorded = mdata.uns.get(key, {}).get("params", {}) if isinstance(mdata.uns.get(key), dict) else {}
    reader = mdata.uns.get("neurips2021", {})
    names = list(mdata.mod)
    mod1 = mod1 or recorded.get("mod1") or reader.get("mod1") or names[0]
    mod2 = mod2 or recorded.get("mod2") or reader.get("mod2") or (names[1] if len(names) > 1 else names[0])
    check_mod(mdata, mod1, "mod1")
    check_mod(mdata, mod2, "mod2")
    if mod1 == mod2:
        raise ValueError(f"mod1 and mod2 are both {mod1!r}; a plan matches two different modalities")
    return mod1, mod2


def plan_batch_key(mdata: MuData, key: str, batch_key: str | None) -> str | None:
    """The batch key splitting the plan into blocks: given, else the one ``match_ot`` matched with.

    ``None`` when ``match_ot`` matched every cell in one block (``batch_key=None``, or it fell back to one block
    ``'all'`` because some cells had no batch label); ``'batch'`` for a plan without its record (e.g. a truth).
    """
    if batch_key != RECORDED:
        return batch_key
    uns = mdata.uns.get(key)
    params = uns.get("params") if isinstance(uns, Mapping) else None
    if not isinstance(params, Mapping) or "method" not in params:
        return "batch"
    blocks = uns.get("blocks")
    names = [str(record.get("name")) for record in blocks.values()] if isinstance(blocks, Mapping) else []
    if names and all(name == "all" for name in names):
        return None
    # match_ot leaves a batch_key of None out of its params.
    recorded = params.get("batch_key")
    return None if recorded is None else str(recorded)


def _choose_block(
    mdata: MuData, mod1: str, rows: np.ndarray, batch_key: str | None, block: str | None
) -> tuple[str, np.ndarray, list[str]]:
    """The requested batch block (default: the first level present), its rows among the matched ones, every level."""
    labels = batch_labels(mdata, mod1, batch_key)
    if labels is None:
        if block not in (None, "all"):
            reason = (
                "the plan is shown as one block (batch_key=None, or match_ot matched every cell in one block)"
                if batch_key is None
                else f"mdata['{mod1}'] has no '{batch_key}' labels"
            )
            raise ValueError(f"block={block!r} but {reason}; pass block=None, or batch_key= naming the batch column")
        return "all", rows, ["all"]
    values = labels.to_numpy()[rows]
    levels = [str(level) for level in pd.unique(values)]
    if block is None:
        block = levels[0]
    if str(block) not in levels:
        raise ValueError(
            f"block={block!r} is not a batch level of the matched '{mod1}' cells; choose one of {levels}"
            + (f" ('{MISSING_BATCH}' marks missing labels)" if MISSING_BATCH in levels else "")
        )
    return str(block), rows[values == str(block)], levels


def _truth_block(
    mdata: MuData, truth_key: str, mod1: str, mod2: str, all1: np.ndarray, all2: np.ndarray
) -> sp.coo_matrix:
    """The truth's (cells of mod1 × cells of mod2) block, oriented as the plan is."""
    truth = extract_block(mdata, oriented_plan(mdata, truth_key, mod1, mod2), mod1, mod2, all1, all2)
    if truth.nnz == 0 and recorded_plan_mods(mdata, truth_key) is None:
        # A truth without a record (the readers' 'match_true') stores its first modality's cells along rows, as a
        # plan does: read for the reverse pair of modalities, it is transposed.
        truth = extract_block(mdata, mdata.obsp[truth_key], mod2, mod1, all2, all1).T
    return sp.coo_matrix(truth)


def _subsample(
    rows: np.ndarray,
    cols: np.ndarray,
    truth_pairs: list[tuple[int, int]],
    max_cells: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_cells`` rows and columns; the true partners of the kept rows are kept first."""
    if rows.size > max_cells:
        rows = np.sort(rng.choice(rows, max_cells, replace=False))
    if cols.size > max_cells:
        kept_rows = set(rows.tolist())
        partners = np.unique([col for row, col in truth_pairs if row in kept_rows]).astype(int)
        partners = partners[np.isin(partners, cols)][:max_cells]
        others = np.setdiff1d(cols, partners)
        extra = rng.choice(others, max_cells - partners.size, replace=False)
        cols = np.sort(np.concatenate([partners, extra]))
    return rows, cols


def _order(groups: np.ndarray, categories: list[str], within: np.ndarray) -> np.ndarray:
    """Positions sorted by group (in the categories' order), then by ``within``."""
    rank = {category: position for position, category in enumerate(categories)}
    return np.lexsort((within, np.array([rank[group] for group in groups])))


def _group_strip(ax: Axes, groups: np.ndarray, colors: dict[str, str], vertical: bool) -> None:
    strip = np.array([to_rgb(colors[group]) for group in groups])[:, None, :]
    ax.imshow(strip if vertical else strip.transpose(1, 0, 2), aspect="auto", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _boundaries(groups: np.ndarray, min_fraction: float = 0.025) -> tuple[np.ndarray, list[float], list[str]]:
    """Where each run of a group ends, and the centre and name of the runs large enough to be labelled."""
    change = np.flatnonzero(groups[1:] != groups[:-1]) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [groups.size]])
    # Labels of tiny groups would overlap their neighbours'; their colour strip still shows them.
    large = (stops - starts) >= min_fraction * groups.size
    centres = (starts + stops - 1) / 2
    return change, list(centres[large]), [str(groups[start]) for start in starts[large]]


def plan(
    mdata: MuData,
    key: str = "match",
    *,
    mod1: str | None = None,
    mod2: str | None = None,
    groupby: str | None = AUTO,
    block: str | None = None,
    batch_key: str | None = RECORDED,
    truth: bool | None = None,
    truth_key: str = "match_true",
    max_cells: int = 400,
    random_state: int = 0,
    cmap: str = "Reds",
    title: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | os.PathLike | None = None,
) -> Axes | None:
    """Heatmap of the matching plan of one batch block, cells ordered by a label on both axes.

    Rows are the matched cells of ``mod1``, columns those of ``mod2``, both sorted by ``groupby`` (e.g. cell type) with
    a colour strip per axis, so that a good matching concentrates its mass in the diagonal blocks. When the truth is
    shown, the columns of a group follow their true partners' rows, so that the true pairs (of the same label) lie on
    the diagonal, where a perfect plan puts its mass. Colours show the plan's weights (each row of a plan from
    ``mumatch.tl.match_ot`` sums to 1), on a scale that ends at the 99th percentile of the drawn non-zero weights:
    larger weights take the darkest colour (the colour bar then ends in a triangle and its label gives the largest
    weight). A plan of several batch blocks is drawn one block at a time; the title says which (e.g.
    ``block s1d2 (2 of 3)``).

    Parameters
    ----------
    mdata
        MuData with a plan in ``mdata.obsp[key]`` (over ``mdata.obs_names``, rows for ``mod1`` cells).
    key
        The plan's key in ``mdata.obsp``.
    mod1, mod2
        Modalities of the rows and columns (default: those recorded in ``mdata.uns[key]['params']`` by the matcher,
        else those of the reader, else the first two).
    groupby
        Column of both modalities' ``.obs`` ordering the cells (within a group, columns follow their true partner's
        row when a truth is shown). ``None`` keeps the cells' order; ``"auto"`` (default): ``"cell_type"`` when both
        modalities have it, else ``None``.
    block
        The batch level of the ``mod1`` cells to show (a plan from ``match_ot`` only links cells of one block).
        Default: the first level among the matched cells.
    batch_key
        Column of ``mdata[mod1].obs`` (else of ``mdata.obs``) with the batch; ``None`` shows all matched cells as one
        block. Default (``"recorded"``): the ``batch_key`` that ``mumatch.tl.match_ot`` recorded in
        ``mdata.uns[key]['params']``, ``None`` when it matched every cell in one block (``batch_key=None``, or some
        cells without a batch label), and ``"batch"`` for a plan without that record.
    truth
        Mark each cell's true partner from ``mdata.obsp[truth_key]`` (read for ``mod2`` → ``mod1`` as well, transposed):
        ``None`` marks them when the truth exists, ``True`` requires a true pair in the block shown, ``False`` never
        marks.
    truth_key
        The ground truth's key in ``mdata.obsp``.
    max_cells
        At most this many rows and columns are drawn (a random subset, true partners of the drawn rows first).
    random_state
        Seed of that subset.
    cmap
        Colour map of the weights.
    title
        Title of the plot (default: key, modalities and block, or "all cells" when shown as one block).
    ax
        Axes to draw into (default: a new figure).
    show
        Show the figure (default: ``scanpy.settings.autoshow``); a shown figure returns None.
    save
        As in scanpy: ``True`` writes ``{figdir}/plan{plot_suffix}.{file_format_figs}`` (``scanpy.settings``);
        a string without a directory is appended to the name there (``"_x.png"`` → ``plan_x.png``); a path with a
        directory, or a :class:`~pathlib.Path`, is written as it is. ``None`` follows ``scanpy.settings.autosave``.

    Returns
    -------
    The heatmap's Axes, unless shown.

    Examples
    --------
    >>> import mumatch as mm
    >>> mdata = mm.datasets.bmmc_starter("multiome")
    >>> mm.pl.plan(mdata, "match_true", show=False)  # doctest: +SKIP
    """
    check_mudata(mdata)
    if key not in mdata.obsp:
        raise KeyError(f"key={key!r} not found in mdata.obsp (it has {list(mdata.obsp)}); run mm.tl.match_ot first")
    check_int(max_cells, "max_cells", minimum=2)
    check_save(save)
    mod1, mod2 = plan_mods(mdata, key, mod1, mod2)
    for mod in (mod1, mod2):
        check_obs_names(mdata, mod)
    groupby = resolve_groupby(mdata, (mod1, mod2), groupby)
    if groupby is not None:
        check_obs_key(mdata, mod1, groupby, "groupby", allow_none=True)
        check_obs_key(mdata, mod2, groupby, "groupby", allow_none=True)
    show_truth = truth is not False and truth_key in mdata.obsp
    if truth is True and truth_key not in mdata.obsp:
        raise KeyError(f"truth_key={truth_key!r} not found in mdata.obsp (it has {list(mdata.obsp)}); pass truth=None")

    all1, all2 = np.arange(mdata[mod1].n_obs), np.arange(mdata[mod2].n_obs)
    matrix = extract_block(mdata, oriented_plan(mdata, key, mod1, mod2), mod1, mod2, all1, all2)
    matched = np.flatnonzero(matrix.getnnz(axis=1))
    if matched.size == 0:
        raise ValueError(f"mdata.obsp['{key}'] links no cell of '{mod1}' to a cell of '{mod2}'; check mod1/mod2")
    block, rows, levels = _choose_block(mdata, mod1, matched, plan_batch_key(mdata, key, batch_key), block)
    cols = np.flatnonzero(matrix[rows].getnnz(axis=0))
    truth_pairs: list[tuple[int, int]] = []
    if show_truth:
        truth_matrix = _truth_block(mdata, truth_key, mod1, mod2, all1, all2)
        truth_pairs = list(zip(truth_matrix.row.tolist(), truth_matrix.col.tolist(), strict=True))
        if truth is True:
            in_block = np.isin(truth_matrix.row, rows) & np.isin(truth_matrix.col, cols)
            if not in_block.any():
                raise ValueError(
                    f"truth=True but mdata.obsp['{truth_key}'] pairs none of the '{mod1}' cells of block {block!r} "
                    f"with a '{mod2}' cell of the plan; check mod1/mod2 and block, or pass truth=None"
                )
    rng = np.random.default_rng(random_state)
    n_rows, n_cols = rows.size, cols.size
    rows, cols = _subsample(rows, cols, truth_pairs, max_cells, rng)

    partner_row = {col: row for row, col in truth_pairs}
    groups1 = groups2 = None
    if groupby is not None:
        groups1 = as_labels(mdata[mod1].obs[groupby].iloc[rows])
        groups2 = as_labels(mdata[mod2].obs[groupby].iloc[cols])
        categories = ordered_categories(mdata[mod1].obs[groupby].iloc[rows], mdata[mod2].obs[groupby].iloc[cols])
        categories += [label for label in ("NA",) if label in set(groups1) | set(groups2)]
        row_order = _order(groups1, categories, np.arange(rows.size))
        rows, groups1 = rows[row_order], groups1[row_order]
    row_rank = {row: position for position, row in enumerate(rows)}
    # Within a group, a column sits at its true partner's row so that the truth draws a diagonal.
    col_within = np.array([row_rank.get(partner_row.get(col, -1), rows.size) for col in cols])
    if groupby is not None:
        col_order = _order(groups2, categories, col_within)
        groups2 = groups2[col_order]
    else:
        col_order = np.argsort(col_within, kind="stable")
    cols = cols[col_order]

    weights = matrix[rows][:, cols].toarray()
    positive = weights[weights > 0]
    vmax = float(np.quantile(positive, 0.99)) if positive.size else 1.0

    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 5))
    image = ax.imshow(weights, aspect="auto", interpolation="nearest", cmap=cmap, vmin=0, vmax=vmax)
    divider = make_axes_locatable(ax)
    colorbar_ax = divider.append_axes("right", size="4%", pad=0.08)
    largest = float(weights.max()) if weights.size else 0.0
    if largest > vmax:
        # Without saying so, the bar's top would read as the largest weight: it is only the 99th percentile.
        colorbar = ax.get_figure().colorbar(image, cax=colorbar_ax, extend="max")
        colorbar.set_label(f"plan weight (top 1% clipped, max {largest:.3g})")
    else:
        ax.get_figure().colorbar(image, cax=colorbar_ax, label="plan weight")
    colorbar_ax.grid(False)  # scanpy's figure parameters turn the grid on: white lines across the colour scale
    ax.set_xticks([])
    ax.set_yticks([])
    xlabel = f"{mod2} cells" + (f" ({cols.size} of {n_cols} shown)" if cols.size < n_cols else "")
    ylabel = f"{mod1} cells" + (f" ({rows.size} of {n_rows} shown)" if rows.size < n_rows else "")
    ax.set_xlabel(xlabel)
    title_ax = ax
    if groupby is not None:
        column1, column2 = mdata[mod1].obs[groupby], mdata[mod2].obs[groupby]
        # Stored colours and palette positions follow each column's full category list, as in scanpy's plots.
        known = {
            **stored_colors(column2, mdata[mod2].uns.get(f"{groupby}_colors")),
            **stored_colors(column1, mdata[mod1].uns.get(f"{groupby}_colors")),
        }
        full_order = [*column_categories(column1), *column_categories(column2)]
        labelled = [category for category in categories if category in full_order]
        colors = {"NA": "#d3d3d3", **category_colors(labelled, known, order=full_order)}
        left = divider.append_axes("left", size="3%", pad=0.03)
        title_ax = divider.append_axes("top", size="3%", pad=0.03)
        _group_strip(left, groups1, colors, vertical=True)
        _group_strip(title_ax, groups2, colors, vertical=False)
        change1, centres1, names1 = _boundaries(groups1)
        for position in change1:
            ax.axhline(position - 0.5, color="0.6", linewidth=0.4)
        for position in _boundaries(groups2)[0]:
            ax.axvline(position - 0.5, color="0.6", linewidth=0.4)
        left.set_yticks(centres1, names1, fontsize="x-small")
        left.set_ylabel(ylabel)
    else:
        ax.set_ylabel(ylabel)
    if truth_pairs:
        col_rank = {col: position for position, col in enumerate(cols)}
        marks = [(col_rank[col], row_rank[row]) for row, col in truth_pairs if row in row_rank and col in col_rank]
        if marks:
            x, y = np.array(marks).T
            # About one cell wide: a heatmap ~250 points tall shows max(rows, cols) cells.
            size = float(np.clip((250 / max(rows.size, cols.size)) ** 2, 0.3, 16))
            ax.scatter(
                x,
                y,
                s=size,
                marker="o",
                facecolors="none",
                edgecolors="tab:blue",
                linewidths=0.3,
                alpha=0.6,  # faint, so that the plan's own weight on the true partner stays visible under the ring
                label="true partner",
            )
            ax.legend(loc="lower left", fontsize="x-small", frameon=True, markerscale=max(2.0, 3 / np.sqrt(size)))
    where = "all cells" if block == "all" else f"block {block}"
    if len(levels) > 1:  # the other blocks are not drawn: say so, or the figure reads as the whole plan
        where += f" ({levels.index(block) + 1} of {len(levels)})"
    title_ax.set_title(title if title is not None else f"{key}: {mod1} → {mod2}, {where}")
    return finish(ax, show, save, "plan")
