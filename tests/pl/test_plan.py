import matplotlib.pyplot as plt
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


def test_plan_colorbar_says_when_it_is_clipped(matched):
    # The scale ends at the 99th percentile of the drawn weights: the bar must not read as the largest weight.
    ax = mm.pl.plan(matched, "match", show=False)
    colorbar = ax.images[0].colorbar
    weights = np.asarray(ax.images[0].get_array())
    assert weights.max() > colorbar.vmax
    assert colorbar.extend == "max"
    label = colorbar.ax.get_ylabel()
    assert "clipped" in label and f"{weights.max():.3g}" in label
    # Under scanpy's figure parameters (axes.grid on), no grid lines cross the colour scale.
    with plt.rc_context({"axes.grid": True}):
        colorbar = mm.pl.plan(matched, "match", show=False).images[0].colorbar
    assert not any(line.get_visible() for line in colorbar.ax.get_ygridlines())
    # The truth, all ones, is not clipped: a plain bar.
    colorbar = mm.pl.plan(matched, "match_true", show=False).images[0].colorbar
    assert colorbar.extend == "neither"
    assert colorbar.ax.get_ylabel() == "plan weight"


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


def _strip_colors(ax) -> dict[str, str]:
    """The colour the left strip draws at each labelled group of the rows."""
    from matplotlib.colors import to_hex

    strip = ax.get_figure().axes[2]
    rgb = np.asarray(strip.images[0].get_array())[:, 0, :]
    labels = [label.get_text() for label in strip.get_yticklabels()]
    return {label: to_hex(rgb[int(round(y))]) for label, y in zip(labels, strip.get_yticks(), strict=True)}


@pytest.fixture
def two_batches():
    """Simulated RNA + ATAC in two batches, a shared embedding by cell type, and match_ot's plan in 'match'."""
    import scanpy as sc

    mdata = mm.datasets.simulate_paired(
        120, ("rna", "atac"), n_genes=100, n_peaks=200, n_batches=2, n_cell_types=4, seed=0
    )
    rng = np.random.default_rng(0)
    centres = {name: rng.normal(size=8) for name in mdata["rna"].obs["cell_type"].cat.categories}
    for mod in mdata.mod:
        types = mdata[mod].obs["cell_type"].astype(str).to_numpy()
        shared = np.stack([centres[name] for name in types]) + rng.normal(scale=0.5, size=(types.size, 8))
        mdata[mod].obsm["X_shared"] = shared.astype(np.float32)
    verbosity = sc.settings.verbosity
    sc.settings.verbosity = 0
    mm.tl.match_ot(mdata, "rna", "atac", use_rep="X_shared")
    sc.settings.verbosity = verbosity
    return mdata


def test_plan_stored_colors_follow_full_categories(matched):
    # scanpy stores the colour of cat.categories[i] at i, for every category; 'HSC' has no test cell, so the plan
    # draws 20 of the 21 categories and must not shift the colours of those after it.
    from matplotlib.colors import to_hex
    from scanpy.plotting import palettes

    categories = list(matched["rna"].obs["cell_type"].cat.categories)
    assert "HSC" in categories[:-1]
    stored = [to_hex(color) for color in reversed(palettes.default_102[: len(categories)])]
    matched["rna"].uns["cell_type_colors"] = np.array(stored)
    expected = dict(zip(categories, stored, strict=True))
    drawn = _strip_colors(mm.pl.plan(matched, "match", show=False))
    assert len(drawn) > 5
    assert drawn == {label: expected[label] for label in drawn}


def test_plan_palette_colors_do_not_depend_on_the_cells_drawn(matched):
    # Without stored colours, a category keeps its palette colour (its position among all categories) whether or not
    # the categories before it are drawn.
    from matplotlib.colors import to_hex
    from scanpy.plotting import palettes

    categories = list(matched["rna"].obs["cell_type"].cat.categories)
    drawn = _strip_colors(mm.pl.plan(matched, "match", show=False))
    assert 20 < len(categories) <= 28  # scanpy's palette for this many categories: default_28
    palette = {name: to_hex(palettes.default_28[position]) for position, name in enumerate(categories)}
    assert drawn == {label: palette[label] for label in drawn}


def test_plan_default_block_is_the_one_match_ot_used(two_batches):
    mdata = two_batches
    n_rows = mdata["rna"].obs["split"].eq("test").sum()
    batches = mdata["rna"].obs["batch"][mdata["rna"].obs["split"] == "test"]
    assert batches.nunique() == 2
    # Matched by batch: one block per batch, the first shown by default (and any on request).
    ax = mm.pl.plan(mdata, "match", truth=False, show=False)
    first = batches.astype(str).iloc[0]
    assert ax.images[0].get_array().shape[0] == (batches.astype(str) == first).sum()
    assert f"block {first} (1 of 2)" in ax.get_figure().axes[3].get_title()  # the other block is not drawn
    # Matched in one block (batch_key=None): every matched row is shown, titled as such.
    mm.tl.match_ot(mdata, "rna", "atac", use_rep="X_shared", batch_key=None, key_added="one_block")
    ax = mm.pl.plan(mdata, "one_block", truth=False, show=False)
    assert ax.images[0].get_array().shape == (n_rows, n_rows)
    assert ax.get_figure().axes[3].get_title() == "one_block: rna → atac, all cells"
    # An explicit batch_key still splits the rows.
    ax = mm.pl.plan(mdata, "one_block", batch_key="batch", truth=False, show=False)
    assert ax.images[0].get_array().shape[0] == (batches.astype(str) == first).sum()


def test_plan_shows_all_cells_when_match_ot_fell_back_to_one_block(two_batches):
    # As in the NeurIPS 2021 data, the test cells of mod2 have no batch label: match_ot matches every cell at once.
    mdata = two_batches
    atac = mdata["atac"].obs
    mdata["atac"].obs["batch"] = atac["batch"].astype(object).where(atac["split"] != "test", np.nan)
    mm.tl.match_ot(mdata, "rna", "atac", use_rep="X_shared")
    assert [block["name"] for block in mdata.uns["match"]["blocks"].values()] == ["all"]
    n_rows = mdata["rna"].obs["split"].eq("test").sum()
    ax = mm.pl.plan(mdata, "match", show=False)
    assert ax.images[0].get_array().shape == (n_rows, n_rows)
    assert ax.get_figure().axes[3].get_title().endswith("all cells")
    with pytest.raises(ValueError, match="one block"):
        mm.pl.plan(mdata, "match", block="batch0", show=False)


def test_plan_reversed_modalities_mark_the_truth(matched):
    forward = mm.pl.plan(matched, "match", truth=True, show=False)
    reverse = mm.pl.plan(matched, "match", mod1="atac", mod2="rna", truth=True, show=False)
    assert reverse.images[0].get_array().shape == (279, 279)
    assert len(reverse.collections[0].get_offsets()) == len(forward.collections[0].get_offsets()) == 279
    # The truth read transposed lines the diagonal as it does forward.
    weights = np.asarray(reverse.images[0].get_array())
    assert np.diag(weights).min() > 0


def test_plan_truth_true_without_a_true_pair_in_the_block_raises(matched):
    # A truth pairing training cells only: none of its pairs lies in the plan's block of test cells.
    import scipy.sparse as sp

    train1 = matched["rna"].obs_names[matched["rna"].obs["split"] == "train"][:5]
    train2 = matched["atac"].obs_names[matched["atac"].obs["split"] == "train"][:5]
    rows, cols = matched.obs_names.get_indexer(train1), matched.obs_names.get_indexer(train2)
    matched.obsp["other_truth"] = sp.csr_matrix((np.ones(5), (rows, cols)), shape=(matched.n_obs, matched.n_obs))
    before = snapshot(matched)
    with pytest.raises(ValueError, match="truth=True"):
        mm.pl.plan(matched, "match", truth=True, truth_key="other_truth", show=False)
    assert_unchanged(before, matched)
    ax = mm.pl.plan(matched, "match", truth_key="other_truth", show=False)  # truth=None: drawn without marks
    assert not ax.collections


def test_plan_whole_number_float_labels_are_the_integer_labels(matched):
    for mod in ("rna", "atac"):
        matched[mod].obs["cluster"] = matched[mod].obs["cell_type"].cat.codes.astype(int)
    # An integer column that gained a NaN in one modality is float there: 1.0 is still cluster '1'.
    matched["rna"].obs.loc[matched["rna"].obs_names[:3], "cluster"] = np.nan
    assert matched["rna"].obs["cluster"].dtype == float
    ax = mm.pl.plan(matched, "match", groupby="cluster", show=False)
    figure = ax.get_figure()
    labels = [label.get_text() for label in figure.axes[2].get_yticklabels()]
    assert labels and not any(label.endswith(".0") for label in labels)
    rows = {tuple(color) for color in np.asarray(figure.axes[2].images[0].get_array())[:, 0]}
    cols = {tuple(color) for color in np.asarray(figure.axes[3].images[0].get_array())[0]}
    assert rows == cols  # one colour per cluster on both axes


def test_plan_rejects_stale_obs_names(matched):
    names = matched["rna"].obs_names.to_numpy().copy()
    names[-5:] = [f"renamed{position}" for position in range(5)]
    matched.mod["rna"].obs_names = names  # without mdata.update()
    with pytest.raises(ValueError, match=r"mdata\.update\(\)"):
        mm.pl.plan(matched, "match", show=False)
