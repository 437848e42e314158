"""Helpers shared by the plot families: showing and saving as scanpy does, colours of categories."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import is_color_like, to_hex
from matplotlib.legend import Legend
from mudata import MuData
from scanpy import logging as logg
from scanpy import settings
from scanpy.plotting import palettes

from .._layout import label_name

# The cell-type column of the readers, the bundled data and scanpy's tutorials: what the plots show by default, when the
# data has it.
CELL_TYPE = "cell_type"
AUTO = "auto"


def resolve_groupby(mdata: MuData, mods: Sequence[str], groupby: str | None) -> str | None:
    """``groupby`` itself, or for ``"auto"`` :data:`CELL_TYPE` when every one of ``mods`` has it, else None."""
    if groupby != AUTO:
        return groupby
    return CELL_TYPE if all(CELL_TYPE in mdata[mod].obs for mod in mods) else None


def check_save(save: object) -> None:
    """Raise a ValueError unless ``save`` is what ``finish`` accepts (checked before a plot writes anything)."""
    if save is not None and not isinstance(save, bool | str | os.PathLike):
        raise ValueError(f"save must be True, a file name suffix or a path, got {save!r}")


def save_path(save: bool | str | os.PathLike | None, plot_name: str, formats: Sequence[str] = ()) -> Path | None:
    """Where ``save`` asks a plot named ``plot_name`` to be written, by scanpy's rule (None: not saved).

    As ``scanpy.pl``'s ``savefig_or_show``: ``None`` follows ``scanpy.settings.autosave``; ``True`` writes
    ``settings.figdir / f"{plot_name}{settings.plot_suffix}.{settings.file_format_figs}"``; a string without a
    directory (e.g. ``"_rna.png"``) is appended to ``plot_name`` in ``settings.figdir``, its extension (one of
    ``formats``) choosing the format. A path with a directory, or a :class:`os.PathLike`, is written as it is (its
    folders created when missing).
    """
    check_save(save)
    if save is None:
        save = settings.autosave
    if save is False:
        return None
    if isinstance(save, os.PathLike) or (isinstance(save, str) and os.path.dirname(save)):
        return Path(save)
    suffix = "" if save is True else save
    extension = settings.file_format_figs
    stem, dot, written = suffix.rpartition(".")
    if dot and written.lower() in formats:
        suffix, extension = stem, written
    return Path(settings.figdir) / f"{plot_name}{suffix}{settings.plot_suffix}.{extension}"


def finish(
    axes: Axes | Sequence[Axes], show: bool | None, save: bool | str | os.PathLike | None, plot_name: str
) -> Axes | list[Axes] | None:
    """Save the figure of ``axes`` as :func:`save_path` says, then show it or return the Axes (scanpy's contract).

    ``show=None`` follows ``scanpy.settings.autoshow``; a shown figure returns None.
    """
    first = axes if isinstance(axes, Axes) else axes[0]
    figure = first.get_figure()
    path = save_path(save, plot_name, list(figure.canvas.get_supported_filetypes()))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)  # as scanpy does for its figure directory
        if path.parent == Path(settings.figdir):
            logg.warning(f"saving figure to file {path}")  # scanpy announces its files loudly
        figure.savefig(path, bbox_inches="tight")  # dpi: rcParams["savefig.dpi"], set by scanpy
    if settings.autoshow if show is None else show:
        plt.show()
        return None
    return axes if isinstance(axes, Axes) else list(axes)


def widen_for_legend(legend: Legend) -> None:
    """Widen the (constrained layout) figure of a legend drawn beside its panels by the legend's width.

    Without it the layout makes room for the legend by narrowing the panels: one panel with a long legend was
    squeezed to a third of its width.
    """
    figure = legend.figure
    figure.set_figwidth(figure.get_figwidth() + legend.get_window_extent().width / figure.dpi)


def column_categories(values: pd.Series) -> list[str]:
    """Every category of a label column, named as :func:`as_labels` names them.

    A categorical's own order (used categories or not: ``.uns['{key}_colors']`` follows it), else the distinct
    values sorted, numbers by value.
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        names = [label_name(value) for value in values.cat.categories]
    else:
        names = sorted({label_name(value) for value in values.dropna()}, key=_natural_key)
    return list(dict.fromkeys(names))


def _natural_key(name: str) -> tuple[int, float, str]:
    """Numbers first and by value ('2' before '10'), then the other names alphabetically."""
    try:
        number = float(name)
    except ValueError:
        return 1, 0.0, name
    return (0, number, name) if np.isfinite(number) else (1, 0.0, name)


def ordered_categories(*labels: pd.Series) -> list[str]:
    """The categories present in one or several label columns: their categorical order when they have one, else sorted.

    Whole-number floats name the same category as integers (``1.0`` is ``'1'``, as in ``mumatch.tl.transfer_labels``).
    """
    order = list(dict.fromkeys(name for values in labels for name in column_categories(values)))
    present = {label_name(value) for values in labels for value in values.dropna()}
    return [name for name in order if name in present]


def as_labels(values: pd.Series, missing: str = "NA") -> np.ndarray:
    """Labels as strings (named by :func:`mumatch._layout.label_name`), with missing values named ``missing``."""
    known = values.notna().to_numpy()
    return np.array(
        [label_name(value) if present else missing for value, present in zip(values, known, strict=True)], dtype=str
    )


def stored_colors(values: pd.Series, stored: Sequence[str] | np.ndarray | None) -> dict[str, str]:
    """The colours of ``.uns['{key}_colors']`` by category name.

    scanpy stores the colour of ``values.cat.categories[i]`` at position ``i``, for every category, used or not;
    a list too short or holding something that is not a colour is ignored (scanpy would replace it too).
    """
    if stored is None:
        return {}
    # One entry per category: a name, a hex string or an RGB(A) tuple/row (not flattened into its numbers).
    colors = [tuple(color) if isinstance(color, np.ndarray) else color for color in stored]
    categories = column_categories(values)
    if len(colors) < len(categories) or not all(is_color_like(color) for color in colors):
        return {}
    return {category: to_hex(color) for category, color in zip(categories, colors, strict=False)}


def category_colors(
    categories: Sequence[str], known: Mapping[str, str] | None = None, *, order: Sequence[str] | None = None
) -> dict[str, str]:
    """A colour per category: its colour in ``known`` (e.g. from :func:`stored_colors`), else one of scanpy's palettes.

    Palette colours go by position in ``order`` (default: ``categories``), the full category list of the column,
    so that a category keeps its colour when others are absent from the cells drawn.
    """
    categories = list(categories)
    known = dict(known or {})
    order = list(dict.fromkeys([*(order or []), *categories]))
    if len(order) <= 20:
        palette = palettes.default_20
    elif len(order) <= 28:
        palette = palettes.default_28
    else:
        palette = palettes.default_102
    position = {category: number for number, category in enumerate(order)}
    palette = [to_hex(color) for color in palette]
    # Over the full category list, so that the result does not depend on which categories are drawn: a category
    # keeps its stored colour, else its own palette colour unless a stored colour already uses it; the displaced
    # ones then take the next palette colours nobody uses (two types never share a colour, and one clash moves
    # one colour, not every later one).
    colors = {category: to_hex(known[category]) for category in order if category in known}
    taken = set(colors.values())
    displaced = []
    for category in order:
        if category in colors:
            continue
        own = palette[position[category] % len(palette)]
        if own in taken:
            displaced.append(category)
        else:
            colors[category] = own
            taken.add(own)
    for category in displaced:
        start = position[category]
        free = [palette[(start + step) % len(palette)] for step in range(len(palette))]
        colors[category] = next((color for color in free if color not in taken), free[0])
        taken.add(colors[category])
    return {category: colors[category] for category in categories}
