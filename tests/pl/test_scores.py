import numpy as np
import pandas as pd
import pytest

import mumatch as mm
from tests.pl.conftest import assert_drawn, legend_covers


@pytest.fixture
def table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [
        {"method": method, "dataset": dataset, "seed": seed, "match score": rng.random(), "FOSCTTM": rng.random()}
        for method in ("mumatch", "MatchCLOT")
        for dataset in ("cite", "multiome")
        for seed in range(3)
    ]
    return pd.DataFrame(rows)


def test_scores_panel_per_metric_with_error_bars(table, tmp_path):
    axes = mm.pl.scores(table, show=False)
    assert [ax.get_title() for ax in axes] == ["match score", "FOSCTTM (lower is better)"]
    assert_drawn(axes[0].get_figure(), tmp_path)
    bars = [patch for patch in axes[0].patches if patch.get_height() > 0]
    assert len(bars) == 4  # 2 methods × 2 data sets
    mean = table.query("method == 'mumatch' and dataset == 'cite'")["match score"].mean()
    assert any(np.isclose(bar.get_height(), mean) for bar in bars)
    assert len(axes[0].lines) >= 4  # standard-deviation error bars over the seeds


def test_scores_of_a_score_table_indexed_by_method(table, tmp_path):
    summary = table.groupby("method")[["match score"]].mean()
    ax = mm.pl.scores(summary, save=tmp_path / "s.png", show=False)
    assert [label.get_text() for label in ax.get_xticklabels()] == ["MatchCLOT", "mumatch"]
    assert (tmp_path / "s.png").stat().st_size > 2_000


def test_scores_long_method_names_stay_clear_of_the_other_panels():
    # Without a data set, the rotated method names under each panel ran into the panels beside and below it.
    methods = ["MatchCLOT reference implementation", "mumatch CLIP+OT", "mumatch CLUE+OT", "random"]
    summary = pd.DataFrame(
        np.random.default_rng(0).random((4, 5)), index=pd.Index(methods, name="method"), columns=list("abcde")
    )
    axes = mm.pl.scores(summary, show=False)
    figure = axes[0].get_figure()
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    boxes = [ax.get_tightbbox(renderer) for ax in axes]
    overlapping = [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    assert not overlapping


def test_scores_legend_beside_one_panel_leaves_the_panel_its_width(table):
    table = table.replace({"MatchCLOT": "MatchCLOT reference implementation"})
    ax = mm.pl.scores(table, metrics="match score", show=False)
    figure = ax.get_figure()
    figure.canvas.draw()
    # Data sets × methods ask for 0.45 inch a bar: the legend must not squeeze the panel to make room for itself.
    assert ax.get_position().width * figure.get_figwidth() > 0.45 * 4
    legend_box = ax.get_legend().get_window_extent()
    assert legend_box.x1 <= figure.bbox.x1  # and it is inside the figure


def test_scores_legend_stays_inside_an_axes_given_by_the_caller(table):
    # In the caller's own grid, a legend beside the panel covered the panel next to it.
    import matplotlib.pyplot as plt

    figure, (given, neighbour) = plt.subplots(1, 2, figsize=(8, 3))
    try:
        ax = mm.pl.scores(table, metrics="match score", ax=given, show=False)
        assert ax is given and figure.get_figwidth() == 8
        assert not legend_covers(ax, neighbour)
        assert [text.get_text() for text in ax.get_legend().get_texts()] == ["mumatch", "MatchCLOT"]
    finally:
        plt.close(figure)


def test_scores_of_score_tables_concatenated_by_dataset(table, tmp_path):
    # Two printed score tables (indexed by method) concatenated by data set: indexed by (dataset, method).
    tables = {name: part.groupby("method")[["match score"]].mean() for name, part in table.groupby("dataset")}
    combined = pd.concat(tables, names=["dataset"])
    ax = mm.pl.scores(combined, show=False)
    assert sorted(label.get_text() for label in ax.get_xticklabels()) == ["cite", "multiome"]
    assert len([patch for patch in ax.patches if patch.get_height() > 0]) == 4
    with pytest.raises(KeyError, match="name every index level"):
        mm.pl.scores(pd.concat(tables), show=False)
    with pytest.raises(KeyError, match="not a column nor an index level"):
        mm.pl.scores(combined, method_key="tool", show=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"metrics": "top-1"}, KeyError, "top-1"),
        ({"metrics": "dataset"}, ValueError, "not numeric"),
        ({"method_key": "tool"}, KeyError, "method_key"),
    ],
)
def test_scores_bad_input(table, kwargs, error, message):
    before = table.copy()
    with pytest.raises(error, match=message):
        mm.pl.scores(table, show=False, **kwargs)
    pd.testing.assert_frame_equal(table, before)


def test_scores_rejects_non_tables():
    with pytest.raises(TypeError, match="DataFrame"):
        mm.pl.scores({"a": 1}, show=False)
    with pytest.raises(ValueError, match="empty"):
        mm.pl.scores(pd.DataFrame(), show=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ncols": 0}, "ncols"),
        ({"ncols": 1.5}, "ncols"),
        ({"metrics": []}, "'metrics' is empty"),
        ({"save": 3}, "save"),
    ],
)
def test_scores_rejects_bad_layout_and_save(table, kwargs, message):
    with pytest.raises(ValueError, match=message):
        mm.pl.scores(table, show=False, **kwargs)


def test_scores_save_follows_scanpy(table, figdir, tmp_path):
    import scanpy as sc

    mm.pl.scores(table, save=True, show=False)
    assert (figdir / "scores.png").stat().st_size > 2_000
    mm.pl.scores(table, save="_demo.pdf", show=False)  # a suffix: after the plot's name, its extension the format
    assert (figdir / "scores_demo.pdf").exists()
    explicit = tmp_path / "elsewhere" / "table.png"
    explicit.parent.mkdir()
    mm.pl.scores(table, save=str(explicit), show=False)  # a path with a directory is written as it is
    assert explicit.exists()
    (figdir / "scores.png").unlink()
    sc.settings.autosave = True  # restored by the figdir fixture
    mm.pl.scores(table, metrics="FOSCTTM", show=False)  # save=None follows autosave
    assert sorted(path.name for path in figdir.iterdir()) == ["scores.png", "scores_demo.pdf"]
