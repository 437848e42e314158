"""Helpers shared by the plot families: showing and saving as scanpy does, colours of categories."""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from scanpy import settings
from scanpy.plotting import palettes


def finish(axes: Axes | Sequence[Axes], show: bool | None, save: str | os.PathLike | None) -> Axes | list[Axes] | None:
    """Save the figure of ``axes`` when asked, then show it or return the Axes (scanpy's contract).

    ``show=None`` follows ``scanpy.settings.autoshow``; a shown figure returns None.
    """
    first = axes if isinstance(axes, Axes) else axes[0]
    figure = first.get_figure()
    if save is not None:
        figure.savefig(os.fspath(save), bbox_inches="tight")  # dpi: rcParams["savefig.dpi"], set by scanpy
    if settings.autoshow if show is None else show:
        plt.show()
        return None
    return axes if isinstance(axes, Axes) else list(axes)


def category_colors(categories: Sequence[str], stored: Sequence[str] | None = None) -> dict[str, str]:
    """A colour per category: the colours stored in ``.uns['{key}_colors']`` when they fit, else scanpy's palettes."""
    categories = list(categories)
    if stored is not None and len(stored) >= len(categories):
        return {category: to_hex(color) for category, color in zip(categories, stored, strict=False)}
    n_categories = len(categories)
    if n_categories <= 20:
        palette = palettes.default_20
    elif n_categories <= 28:
        palette = palettes.default_28
    else:
        palette = palettes.default_102
    return {category: to_hex(palette[position % len(palette)]) for position, category in enumerate(categories)}


def ordered_categories(*labels: pd.Series) -> list[str]:
    """The categories of one or several label columns: their categorical order when they have one, else sorted."""
    order: list[str] = []
    for values in labels:
        if isinstance(values.dtype, pd.CategoricalDtype):
            candidates = [str(value) for value in values.cat.categories]
        else:
            candidates = sorted({str(value) for value in values.dropna()})
        order += [value for value in candidates if value not in order]
    present = set().union(*({str(value) for value in values.dropna()} for values in labels))
    return [value for value in order if value in present]


def as_labels(values: pd.Series, missing: str = "NA") -> np.ndarray:
    """Labels as strings, with missing values named ``missing``."""
    return values.astype(object).where(values.notna(), missing).astype(str).to_numpy()
