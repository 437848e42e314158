"""How sure the matcher is about each cell: the distribution of per-cell match confidence per group."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from mudata import MuData

from .._validate import check_mods, check_mudata, check_obs_key
from ._utils import AUTO, as_labels, category_colors, check_save, finish, ordered_categories, resolve_groupby

VALUES = ("confidence", "entropy")


def confidence(
    mdata: MuData,
    key: str = "match",
    *,
    groupby: str | None = AUTO,
    mods: Sequence[str] | None = None,
    value: Literal["confidence", "entropy"] = "confidence",
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | os.PathLike | None = None,
) -> Axes | None:
    """Violin plot of the per-cell match confidence in each group, one colour per modality.

    ``mumatch.tl.match_ot`` writes, for every matched cell, ``mdata[mod].obs[f"{key}_confidence"]`` (its largest
    weight in the full OT plan, before ``top_k`` or the mass threshold, after normalising the cell's row or column to
    1) and ``f"{key}_entropy"`` (of that normalised row, in nats). Groups of cells the matcher is unsure about (low
    confidence, high entropy) are those whose partners are hard to tell apart. Both depend on the number ``n`` of
    cells a cell could be matched to (those of the other modality in its batch block): a plan that does not tell them
    apart gives confidence ``1/n`` and entropy ``ln(n)``, one partner alone confidence 1 and entropy 0. Each group's
    label gives its number of matched cells in each modality, in the legend's order (e.g. ``NK (41 / 38)``); with
    ``groupby=None``, one violin per modality, its number of matched cells.

    Parameters
    ----------
    mdata
        MuData with the per-cell columns written by the matcher.
    key
        The plan's key (``key_added`` of the matcher).
    groupby
        Column of the modalities' ``.obs`` to group by (e.g. ``"cell_type"``); ``None``: one group per modality;
        ``"auto"`` (default): ``"cell_type"`` when every shown modality has it, else ``None``.
    mods
        Modalities to show (default: those that have the column).
    value
        ``"confidence"`` or ``"entropy"``.
    ax
        Axes to draw into (default: a new figure).
    show
        Show the figure (default: ``scanpy.settings.autoshow``); a shown figure returns None.
    save
        As in scanpy: ``True`` writes ``{figdir}/confidence{plot_suffix}.{file_format_figs}`` (``scanpy.settings``);
        a string without a directory is appended to the name there (``"_x.png"`` → ``confidence_x.png``); a path with a
        directory, or a :class:`~pathlib.Path`, is written as it is. ``None`` follows ``scanpy.settings.autosave``.

    Returns
    -------
    The Axes, unless shown.

    Examples
    --------
    >>> import mumatch as mm
    >>> mm.tl.match_ot(mdata, "rna", "atac", use_rep="X_clip")  # doctest: +SKIP
    >>> mm.pl.confidence(mdata, "match", groupby="cell_type")  # doctest: +SKIP
    """
    check_mudata(mdata)
    if value not in VALUES:
        raise ValueError(f"value={value!r}; choose one of {list(VALUES)}")
    check_save(save)
    column = f"{key}_{value}"
    if mods is None:
        mods = [mod for mod in mdata.mod if column in mdata[mod].obs]
        if not mods:
            raise KeyError(
                f"no modality has obs[{column!r}]; run mm.tl.match_ot(..., key_added={key!r}) first or pass the key"
            )
    mods = check_mods(mdata, mods)
    groupby = resolve_groupby(mdata, mods, groupby)
    for mod in mods:
        check_obs_key(mdata, mod, column, "key")
        if groupby is not None:
            check_obs_key(mdata, mod, groupby, "groupby", allow_none=True)

    frames = []
    for mod in mods:
        obs = mdata[mod].obs
        matched = obs[column].notna().to_numpy()
        groups = as_labels(obs[groupby]) if groupby is not None else pd.Series(mod, index=obs.index).to_numpy()
        frames.append(pd.DataFrame({"modality": mod, "group": groups[matched], value: obs[column][matched].to_numpy()}))
    data = pd.concat(frames, ignore_index=True)
    if data.empty:
        raise ValueError(f"obs[{column!r}] is missing (NaN) for every cell of {mods}; no cell was matched")
    if groupby is not None:
        order = ordered_categories(*(mdata[mod].obs[groupby] for mod in mods))
        order += [label for label in pd.unique(data["group"]) if label not in order]
    else:
        order = list(mods)
    order = [label for label in order if label in set(data["group"])]

    if ax is None:
        _, ax = plt.subplots(figsize=(5, max(2.5, 0.32 * len(order) + 1)))
    palette = category_colors(list(mods))
    sns.violinplot(
        data=data,
        x=value,
        y="group",
        hue="modality",
        order=order,
        hue_order=list(mods),
        palette=palette,
        cut=0,
        density_norm="width",
        inner="quart",
        linewidth=0.6,
        ax=ax,
    )
    counts = data.groupby(["group", "modality"]).size().unstack(fill_value=0).reindex(columns=list(mods), fill_value=0)
    if groupby is not None:
        # Cells per modality, in the legend's order.
        names = [f"{label} ({' / '.join(map(str, counts.loc[label]))})" for label in order]
    else:
        # One group per modality, without a legend: its own count ('rna (441 / 0)' read as a count of nothing).
        names = [f"{label} ({counts.loc[label, label]})" for label in order]
    ax.set_yticks(range(len(order)), names)
    ax.set_ylabel(groupby or "")
    ax.set_xlabel(f"match {value} ({key})" if value == "confidence" else f"match entropy, nats ({key})")
    ax.grid(False)
    if groupby is not None:
        ax.legend(title="", loc="best", fontsize="small", frameon=False)
    elif ax.get_legend() is not None:
        ax.get_legend().remove()
    return finish(ax, show, save, "confidence")
