"""Training curves from a model's ``history`` (train and validation losses per epoch)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from .._validate import check_int
from ._utils import check_save, finish, widen_for_legend

STAGES = (("train_", "train"), ("validation_", "validation"), ("val_", "validation"))
SUFFIXES = (("_train", "train"), ("_validation", "validation"))
STEP_SUFFIXES = ("_epoch", "_step")


def split_metric_name(name: str) -> tuple[str, str]:
    """The ``(stage, metric)`` of a history key.

    ``"train_loss"`` → ``("train", "loss")``, ``"elbo_validation"`` → ``("validation", "elbo")``; keys of neither
    stage (e.g. ``"temperature"``) have stage ``""``.
    """
    for suffix in STEP_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    for prefix, stage in STAGES:
        if name.startswith(prefix):
            return stage, name[len(prefix) :]
    for suffix, stage in SUFFIXES:
        if name.endswith(suffix):
            return stage, name[: -len(suffix)]
    return "", name


def _histories(model: Any) -> list[tuple[str, Mapping[str, pd.DataFrame], dict]]:
    """(label, history, train_info) of one model, of each model of an ensemble, or of a history dict."""
    if isinstance(model, Mapping):
        return [("", model, {})]
    if isinstance(model, Sequence) and not isinstance(model, str):
        if not model:
            raise ValueError("'model' is an empty sequence; pass a trained model or a list of them")
        if len(model) == 1:
            return _histories(model[0])
        return [(f"model {position}", *_histories(item)[0][1:]) for position, item in enumerate(model)]
    if not hasattr(model, "history"):
        raise TypeError(f"'model' must have a .history (a trained mumatch or scvi-tools model), got {type(model)}")
    return [("", model.history, getattr(model, "train_info", {}) or {})]


def _series(frame: pd.DataFrame | pd.Series, name: str) -> pd.Series:
    if isinstance(frame, pd.Series):
        return frame.astype(float)
    column = name if name in frame.columns else frame.columns[0]
    return frame[column].astype(float)


def training(
    model: Any,
    *,
    metrics: str | Sequence[str] | None = None,
    log_y: bool = False,
    ncols: int = 3,
    ax: Axes | None = None,
    show: bool | None = None,
    save: bool | str | os.PathLike | None = None,
) -> Axes | list[Axes] | None:
    """Loss curves per epoch from ``model.history``: one panel per metric, train solid and validation dashed.

    Works with mumatch's models (:class:`mumatch.model.CLIP`, :class:`mumatch.model.CLUE`) and scvi-tools' (their
    ``history`` is a dict of one-column DataFrames indexed by epoch, with keys such as ``train_loss`` /
    ``validation_loss`` or ``elbo_train`` / ``elbo_validation``). The best validation epoch, when the model
    records it in ``train_info['best_epoch']``, is marked with a dotted line. One legend, beside the first row of
    panels (inside the panel drawn into ``ax``), names the line styles (and the colours of an ensemble's models). A
    validation curve that turns up while the training one keeps falling is overfitting.

    Parameters
    ----------
    model
        A trained model, a list of models (an ensemble, one curve each) or a history dict itself.
    metrics
        Metric names to show without the stage (e.g. ``"loss"``; default: all).
    log_y
        Logarithmic y axis.
    ncols
        Panels per row.
    ax
        Axes to draw into (only with one metric).
    show
        Show the figure (default: ``scanpy.settings.autoshow``); a shown figure returns None.
    save
        As in scanpy: ``True`` writes ``{figdir}/training{plot_suffix}.{file_format_figs}`` (``scanpy.settings``);
        a string without a directory is appended to the name there (``"_x.png"`` → ``training_x.png``); a path with a
        directory, or a :class:`~pathlib.Path`, is written as it is. ``None`` follows ``scanpy.settings.autosave``.

    Returns
    -------
    The Axes (a list with several metrics), unless shown.

    Examples
    --------
    >>> import mumatch as mm
    >>> model = mm.tl.train_clip(mdata, "rna", "atac")  # doctest: +SKIP
    >>> mm.pl.training(model, metrics="loss")  # doctest: +SKIP
    """
    check_int(ncols, "ncols", minimum=1)
    check_save(save)
    histories = _histories(model)
    curves: dict[str, list[tuple[str, str, pd.Series]]] = {}
    for label, history, _ in histories:
        for name, frame in history.items():
            stage, metric = split_metric_name(str(name))
            series = _series(frame, name).dropna()
            if not series.empty:
                curves.setdefault(metric, []).append((label, stage, series))
    if not curves:
        raise ValueError("the model has no training history; train it first (model.train(...))")
    if metrics is not None:
        wanted = [metrics] if isinstance(metrics, str) else list(metrics)
        if not wanted:
            raise ValueError("'metrics' is empty; pass None for every metric of the history")
        unknown = [name for name in wanted if name not in curves]
        if unknown:
            raise KeyError(f"metrics {unknown} are not in the history; it has {list(curves)}")
        curves = {name: curves[name] for name in wanted}
    if ax is not None and len(curves) > 1:
        raise ValueError(f"ax= draws one panel but the history has {len(curves)} metrics; pass metrics= or ax=None")

    if ax is None:
        n_cols = min(ncols, len(curves))
        n_rows = int(np.ceil(len(curves) / n_cols))
        # Constrained: long tick labels (a learning rate's 0.0001825) would run into the next panel with fixed spacing.
        _, grid = plt.subplots(
            n_rows, n_cols, figsize=(3.6 * n_cols, 2.9 * n_rows), squeeze=False, layout="constrained"
        )
        for extra in grid.ravel()[len(curves) :]:
            extra.remove()
        axes = list(grid.ravel()[: len(curves)])
    else:
        axes = [ax]
    labels = [label for label, _, _ in histories]
    colors = {label: plt.get_cmap("tab10")(position % 10) for position, label in enumerate(labels)}
    styles = {"train": "-", "validation": "--", "": "-"}
    stage_order = {"train": 0, "validation": 1, "": 2}
    stages = set()
    best_marked = False
    for panel, (metric, lines) in zip(axes, curves.items(), strict=True):
        for label, stage, series in sorted(lines, key=lambda line: (labels.index(line[0]), stage_order[line[1]])):
            name = " ".join(part for part in (label, stage) if part) or metric
            panel.plot(series.index, series.to_numpy(), styles[stage], color=colors[label], linewidth=1.2, label=name)
            stages.add(stage)
        for label, _, info in histories:
            if info.get("best_epoch") is not None:
                panel.axvline(info["best_epoch"], color=colors[label], linestyle=":", linewidth=0.8)
                best_marked = True
        if log_y:
            panel.set_yscale("log")
        panel.set_title(metric)
        panel.set_xlabel("epoch")
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 0.5
        panel.spines[["top", "right"]].set_visible(False)
        panel.grid(False)
    # One key for every panel, beside the first row: per-panel legends covered the curves of an ensemble, and a panel
    # with one stage (e.g. validation FOSCTTM) or the best-epoch line had none.
    single = labels[0] if len(labels) == 1 else None
    handles = [] if single is not None else [Line2D([], [], color=colors[label], label=label) for label in labels]
    handles += [
        Line2D([], [], linestyle=styles[stage], color=colors[single] if single is not None else "0.3", label=stage)
        for stage in ("train", "validation")
        if stage in stages
    ]
    if best_marked:
        handles.append(Line2D([], [], linestyle=":", linewidth=0.8, color="0.3", label="best epoch"))
    if handles and ax is not None:
        # The caller's Axes, perhaps in a grid of their own: beside it, the legend would cover the next panel.
        ax.legend(handles=handles, loc="best", fontsize="small", frameon=False)
    elif handles:
        legend = axes[min(ncols, len(axes)) - 1].legend(
            handles=handles, bbox_to_anchor=(1.02, 1), loc="upper left", fontsize="small", frameon=False
        )
        widen_for_legend(legend)
    return finish(axes[0] if len(axes) == 1 else axes, show, save, "training")
