"""Benchmark tables (methods × data sets × metrics) as grouped bar charts, as in the benchmark documentation."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from .._validate import check_int
from ._utils import category_colors, check_save, finish, widen_for_legend

NOT_METRICS = ("seed", "random_state", "replicate", "n_cells")
LOWER_IS_BETTER = ("foscttm", "time", "seconds", "memory", "rss")


def _long_table(table: pd.DataFrame, method_key: str) -> pd.DataFrame:
    """The table with the methods as a column (a score table indexed by method is accepted as it is printed).

    Named index levels become columns: ``pd.concat({"cite": t1, "multiome": t2}, names=["dataset"])`` of two score
    tables is indexed by (dataset, method).
    """
    if method_key in table.columns:
        return table.reset_index(drop=True)
    if isinstance(table.index, pd.MultiIndex):
        if method_key not in table.index.names:
            raise KeyError(f"method_key={method_key!r} is not a column nor an index level: {list(table.index.names)}")
        if any(name is None for name in table.index.names):
            raise KeyError(f"name every index level of the table (its levels are {list(table.index.names)})")
        return table.reset_index()
    if table.index.name == method_key or (table.index.name is None and not isinstance(table.index, pd.RangeIndex)):
        return table.rename_axis(method_key).reset_index()
    raise KeyError(f"method_key={method_key!r} is not a column nor the index name; columns: {list(table.columns)}")


def scores(
    table: pd.DataFrame,
    *,
    metrics: str | Sequence[str] | None = None,
    method_key: str = "method",
    dataset_key: str | None = "dataset",
    ncols: int = 4,
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | os.PathLike | None = None,
) -> Axes | list[Axes] | None:
    """Grouped bar chart of a table of scores: one panel per metric, data sets on the x axis, one bar per method.

    Several rows for the same method and data set (e.g. seeds) are averaged, with their standard deviation as error
    bars. Panel titles say when lower is better (FOSCTTM, times, memory).

    Parameters
    ----------
    table
        One row per (method, data set[, seed]) with numeric metric columns; a score table indexed by method (as
        printed by ``mumatch demo``) works as it is.
    metrics
        Metric columns to plot (default: every numeric column except ``seed``-like ones).
    method_key
        Column (or index name) naming the method.
    dataset_key
        Column naming the data set; ``None`` or absent: one group with every method.
    ncols
        Panels per row.
    ax
        Axes to draw into (only with one metric); the legend then goes inside it.
    show
        Show the figure (default: ``scanpy.settings.autoshow``); a shown figure returns None.
    save
        As in scanpy: ``True`` writes ``{figdir}/scores{plot_suffix}.{file_format_figs}`` (``scanpy.settings``);
        a string without a directory is appended to the name there (``"_x.png"`` → ``scores_x.png``); a path with a
        directory, or a :class:`~pathlib.Path`, is written as it is. ``None`` follows ``scanpy.settings.autosave``.

    Returns
    -------
    The Axes (a list with several metrics), unless shown.

    Examples
    --------
    >>> import pandas as pd
    >>> import mumatch as mm
    >>> table = pd.DataFrame(
    ...     {"method": ["mumatch", "MatchCLOT"] * 2, "dataset": ["cite"] * 2 + ["multiome"] * 2,
    ...      "match score": [0.06, 0.04, 0.05, 0.03]}
    ... )
    >>> mm.pl.scores(table, show=False)  # doctest: +SKIP
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"'table' must be a pandas.DataFrame, got {type(table).__name__}")
    if table.empty:
        raise ValueError("'table' is empty; nothing to plot")
    check_int(ncols, "ncols", minimum=1)
    check_save(save)
    data = _long_table(table, method_key)
    has_dataset = dataset_key is not None and dataset_key in data.columns
    if metrics is None:
        metrics = [
            name
            for name in data.columns
            if name not in (method_key, dataset_key)
            and str(name).lower() not in NOT_METRICS
            and pd.api.types.is_numeric_dtype(data[name])
        ]
        if not metrics:
            raise ValueError(f"the table has no numeric metric column (columns: {list(data.columns)})")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics:
        raise ValueError("'metrics' is empty; pass None for every numeric column")
    for name in metrics:
        if name not in data.columns:
            raise KeyError(f"metric {name!r} is not a column of the table (columns: {list(data.columns)})")
        if not pd.api.types.is_numeric_dtype(data[name]):
            raise ValueError(f"metric {name!r} is not numeric")
    if ax is not None and len(metrics) > 1:
        raise ValueError(f"ax= draws one panel but {len(metrics)} metrics were asked for; pass one metric or ax=None")

    methods = [str(name) for name in pd.unique(data[method_key])]
    data = data.assign(**{method_key: data[method_key].astype(str)})
    x_key = dataset_key if has_dataset else method_key
    if ax is None:
        n_cols = min(ncols, len(metrics))
        n_rows = int(np.ceil(len(metrics) / n_cols))
        n_groups = data[x_key].nunique()
        width = max(3.0, 0.45 * n_groups * (len(methods) if has_dataset else 1) + 1.2)
        height = 3.2
        if not has_dataset:
            # Room for the method names under the bars, slanted by 30° (about 0.07 inch a character).
            longest = max(len(method) for method in methods)
            width, height = width + 0.06 * longest, height + 0.035 * longest
        # Constrained: with fixed spacing, slanted method names ran into the panels beside and below.
        _, grid = plt.subplots(
            n_rows, n_cols, figsize=(width * n_cols, height * n_rows), squeeze=False, layout="constrained"
        )
        for extra in grid.ravel()[len(metrics) :]:
            extra.remove()
        axes = list(grid.ravel()[: len(metrics)])
    else:
        axes = [ax]
    palette = category_colors(methods)
    # The legend goes beside the first row, in the last column: beside a panel of another column, the constrained
    # layout would widen that column's margin for every row.
    legend_panel = axes[min(ncols, len(axes)) - 1]
    for panel, name in zip(axes, metrics, strict=True):
        sns.barplot(
            data=data,
            x=x_key,
            y=name,
            hue=method_key,
            hue_order=methods,
            palette=palette,
            errorbar="sd",
            capsize=0.1,
            err_kws={"linewidth": 0.8},
            ax=panel,
            legend=panel is legend_panel,
        )
        lower = any(word in str(name).lower() for word in LOWER_IS_BETTER)
        panel.set_title(f"{name} (lower is better)" if lower else str(name))
        panel.set_xlabel("")
        panel.set_ylabel("")
        panel.grid(False)
        if not has_dataset:
            panel.tick_params(axis="x", labelrotation=30)
            for label in panel.get_xticklabels():
                label.set_horizontalalignment("right")
        panel.spines[["top", "right"]].set_visible(False)
    if legend_panel.get_legend() is not None:
        if has_dataset and ax is not None:
            # The caller's Axes, perhaps in a grid of their own: beside it, the legend would cover the next panel.
            legend_panel.legend(title=method_key, loc="best", fontsize="small", frameon=False)
        elif has_dataset:
            legend = legend_panel.legend(title=method_key, bbox_to_anchor=(1.02, 1), loc="upper left", frameon=False)
            widen_for_legend(legend)
        else:
            legend_panel.get_legend().remove()
    return finish(axes[0] if len(axes) == 1 else axes, show, save, "scores")
