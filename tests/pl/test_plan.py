import numpy as np
import pytest
from matplotlib.axes import Axes

import mumatch as mm
from tests.helpers import assert_unchanged, snapshot
from tests.pl.conftest import assert_drawn


def test_plan_draws_block_diagonal_heatmap(matched, tmp_path):
    ax = mm.pl.plan(matched, "match", show=False)
    assert isinstance(ax, Axes)
    assert_drawn(ax.get_figure(), tmp_path)
    weights = np.asarray(ax.images[0].get_array())
    assert weights.shape == (279, 279)
    # Columns sit at their true partner's row: the fixture's truth weight (0.3) lines the diagonal.
    assert np.diag(weights).min() > 0.25
    assert any(ax.collections), "the truth overlay is drawn"
    strip_labels = [label.get_text() for label in ax.get_figure().axes[2].get_yticklabels()]
    assert "CD14+ Mono" in strip_labels


def test_plan_saves_file_and_subsamples(matched, tmp_path):
    path = tmp_path / "plan.png"
    ax = mm.pl.plan(matched, "match", max_cells=50, save=path, show=False)
    assert path.stat().st_size > 5_000
    assert ax.images[0].get_array().shape == (50, 50)
    assert "50 of 279" in ax.get_xlabel()


def test_plan_without_groupby_or_truth(matched, tmp_path):
    ax = mm.pl.plan(matched, "match", groupby=None, truth=False, show=False)
    assert not ax.collections
    assert_drawn(ax.get_figure(), tmp_path)


def test_plan_of_the_truth_itself_is_a_permutation(matched):
    ax = mm.pl.plan(matched, "match_true", show=False)
    weights = np.asarray(ax.images[0].get_array())
    assert np.array_equal(weights.sum(axis=1), np.ones(weights.shape[0]))
    # Columns follow their true partner's row, so the truth is the identity after ordering.
    assert np.array_equal(weights, np.eye(weights.shape[0]))


def test_plan_into_given_axes(matched):
    import matplotlib.pyplot as plt

    _, ax = plt.subplots()
    assert mm.pl.plan(matched, "match", ax=ax, show=False) is ax


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"key": "missing"}, KeyError, "run mm.tl.match_ot"),
        ({"groupby": "not_a_column"}, KeyError, "groupby"),
        ({"mod1": "adt"}, KeyError, "mod1"),
        ({"mod1": "rna", "mod2": "rna"}, ValueError, "both"),
        ({"block": "s9d9"}, ValueError, "batch level"),
        ({"truth": True, "truth_key": "nope"}, KeyError, "truth_key"),
        ({"max_cells": 0}, ValueError, "max_cells"),
    ],
)
def test_plan_bad_input(matched, kwargs, error, message):
    before = snapshot(matched)
    kwargs = {"key": "match", **kwargs}
    with pytest.raises(error, match=message):
        mm.pl.plan(matched, show=False, **kwargs)
    assert_unchanged(before, matched)


def test_plan_rejects_plan_between_other_modalities(matched):
    matched.obsp["empty"] = matched.obsp["match"].T.tocsr()
    with pytest.raises(ValueError, match="links no cell"):
        mm.pl.plan(matched, "empty", mod1="rna", mod2="atac", show=False)
