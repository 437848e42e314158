from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import mumatch as mm
from mumatch.pl._training import split_metric_name
from tests.pl.conftest import assert_drawn, legend_covers


def _history(scale: float = 1.0) -> dict[str, pd.DataFrame]:
    epochs = pd.Index(np.arange(20), name="epoch")
    values = {
        "train_loss": scale * (1 + np.exp(-epochs / 5)),
        "validation_loss": scale * (1.1 + np.exp(-epochs / 6)),
        "temperature": np.linspace(1, 2, 20),
    }
    return {name: pd.DataFrame({name: value}, index=epochs) for name, value in values.items()}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("train_loss", ("train", "loss")),
        ("validation_loss", ("validation", "loss")),
        ("train_loss_epoch", ("train", "loss")),
        ("elbo_validation", ("validation", "elbo")),
        ("reconstruction_loss_train", ("train", "reconstruction_loss")),
        ("temperature", ("", "temperature")),
    ],
)
def test_split_metric_name(name, expected):
    assert split_metric_name(name) == expected


def test_training_curves(tmp_path):
    model = SimpleNamespace(history=_history(), train_info={"best_epoch": 12})
    axes = mm.pl.training(model, show=False)
    assert [ax.get_title() for ax in axes] == ["loss", "temperature"]
    assert_drawn(axes[0].get_figure(), tmp_path)
    styles = sorted(line.get_linestyle() for line in axes[0].lines if np.size(line.get_xdata()) == 20)
    assert styles == ["-", "--"]
    assert any(line.get_linestyle() == ":" for line in axes[0].lines)  # best epoch


def test_training_ensemble_and_history_dict(tmp_path):
    models = [SimpleNamespace(history=_history(scale), train_info={}) for scale in (1.0, 2.0)]
    ax = mm.pl.training(models, metrics="loss", log_y=True, save=tmp_path / "t.png", show=False)
    assert len(ax.lines) == 4
    assert ax.get_yscale() == "log"
    # Colours name the models, line styles the stages.
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["model 0", "model 1", "train", "validation"]
    assert mm.pl.training(_history(), metrics=["temperature"], show=False).get_title() == "temperature"
    single = mm.pl.training([models[0]], metrics="loss", show=False)
    assert [text.get_text() for text in single.get_legend().get_texts()] == ["train", "validation"]


def _overlap(first, second) -> bool:
    return first.width > 0 and second.width > 0 and first.overlaps(second)


def test_training_legend_is_one_key_beside_the_panels_not_over_the_curves():
    # An ensemble of three with a best epoch each: six curves per panel.
    models = [SimpleNamespace(history=_history(scale), train_info={"best_epoch": 3 + scale}) for scale in (1, 2, 3)]
    axes = mm.pl.training(models, show=False)
    with_legend = [ax for ax in axes if ax.get_legend() is not None]
    assert with_legend == [axes[-1]]  # one legend, for every panel
    legend = axes[-1].get_legend()
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels == ["model 0", "model 1", "model 2", "train", "validation", "best epoch"]
    figure = axes[0].get_figure()
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    assert not any(_overlap(box, ax.get_window_extent(renderer)) for ax in axes)  # outside every panel
    assert box.x1 <= figure.bbox.x1  # inside the figure, which is widened for it
    loss = mm.pl.training(models, metrics="loss", show=False)
    assert loss.get_position().width * loss.get_figure().get_figwidth() > 2.5  # not squeezed by the legend


def test_training_legend_stays_inside_an_axes_given_by_the_caller():
    # In the caller's own grid, a legend beside the panel covered the panel next to it.
    models = [SimpleNamespace(history=_history(scale), train_info={"best_epoch": 3 + scale}) for scale in (1, 2)]
    figure, (given, neighbour) = plt.subplots(1, 2, figsize=(8, 3))
    try:
        ax = mm.pl.training(models, metrics="loss", ax=given, show=False)
        assert ax is given and figure.get_figwidth() == 8
        assert not legend_covers(ax, neighbour)
        assert [text.get_text() for text in ax.get_legend().get_texts()][-1] == "best epoch"
    finally:
        plt.close(figure)


def test_training_one_stage_panel_and_best_epoch_are_explained():
    # A metric recorded for validation only (CLUE's FOSCTTM) is dashed: the key must say what dashed means.
    history = {"validation_foscttm": pd.DataFrame({"validation_foscttm": np.linspace(0.4, 0.1, 12)})}
    ax = mm.pl.training(SimpleNamespace(history=history, train_info={"best_epoch": 9}), show=False)
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["validation", "best epoch"]


def test_training_epochs_are_whole_numbers_and_panels_do_not_overlap():
    epochs = pd.Index(np.arange(3), name="epoch")
    history = {
        "train_loss": pd.DataFrame({"train_loss": [8.0, 5.5, 5.3]}, index=epochs),
        "lr": pd.DataFrame({"lr": [1.75e-4] * 3}, index=epochs),
        "train_logit_scale": pd.DataFrame({"train_logit_scale": [54.598, 54.589, 54.58]}, index=epochs),
    }
    axes = mm.pl.training(history, show=False)
    figure = axes[0].get_figure()
    figure.canvas.draw()
    for ax in axes:
        ticks = ax.get_xticks()
        assert np.allclose(ticks, np.round(ticks)), ticks
    # The learning rate's long tick labels stay clear of the panel beside it.
    renderer = figure.canvas.get_renderer()
    boxes = [ax.get_tightbbox(renderer) for ax in axes]
    assert not any(_overlap(boxes[i], boxes[j]) for i in range(len(boxes)) for j in range(i + 1, len(boxes)))


def test_training_bad_input():
    with pytest.raises(ValueError, match="train it first"):
        mm.pl.training(SimpleNamespace(history={}), show=False)
    with pytest.raises(KeyError, match="not in the history"):
        mm.pl.training(_history(), metrics="accuracy", show=False)
    with pytest.raises(TypeError, match="history"):
        mm.pl.training(object(), show=False)
    with pytest.raises(ValueError, match="empty"):
        mm.pl.training([], show=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ncols": 0}, "ncols"),
        ({"ncols": -2}, "ncols"),
        ({"metrics": []}, "'metrics' is empty"),
        ({"save": 1.0}, "save"),
    ],
)
def test_training_rejects_bad_layout_and_save(kwargs, message):
    model = SimpleNamespace(history=_history(), train_info={})
    with pytest.raises(ValueError, match=message):
        mm.pl.training(model, show=False, **kwargs)


def test_training_save_true_writes_into_figdir(figdir):
    mm.pl.training(_history(), save=True, show=False)
    assert (figdir / "training.png").stat().st_size > 2_000
