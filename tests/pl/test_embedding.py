import numpy as np
import pytest

import mumatch as mm
from tests.helpers import assert_unchanged, snapshot
from tests.pl.conftest import assert_drawn


def _cache_umap(mdata, basis="X_shared"):
    """Store coordinates as joint_embedding would, so that plotting tests skip the UMAP itself."""
    from mumatch._layout import array_fingerprint
    from mumatch.pl._embedding import _stack

    stacked = _stack(mdata, ["rna", "atac"], basis)
    params = {
        "basis": basis,
        "mods": ["rna", "atac"],
        "n_neighbors": 15,
        "min_dist": 0.5,
        "random_state": 0,
        "fingerprint": array_fingerprint(stacked),
    }
    for mod in ("rna", "atac"):
        mdata[mod].obsm[f"{basis}_umap"] = mdata[mod].obsm[basis][:, :2].copy()
    mdata.uns[f"{basis}_umap"] = {"params": params}


def test_joint_embedding_computes_and_caches_umap(matched, tmp_path):
    axes = mm.pl.joint_embedding(matched, "X_shared", show=False)
    assert [ax.get_title() for ax in axes] == ["modality", "cell_type"]
    assert_drawn(axes[0].get_figure(), tmp_path)
    first = matched["rna"].obsm["X_shared_umap"].copy()
    assert first.shape == (matched["rna"].n_obs, 2)
    assert np.isfinite(first).all()
    assert matched.uns["X_shared_umap"]["params"]["mods"] == ["rna", "atac"]
    # A paired cell's two views lie close in the shared space, hence in the UMAP.
    paired = matched["atac"].obs_names.get_indexer(matched["rna"].obs_names[:221])
    gap = np.linalg.norm(first[:221] - matched["atac"].obsm["X_shared_umap"][paired], axis=1)
    spread = np.linalg.norm(first - first.mean(0), axis=1).mean()
    assert np.median(gap) < spread


def test_neighbours_of_many_cells_come_as_a_sparse_matrix(monkeypatch):
    # From 8,192 cells on, scanpy's approximate index (pynndescent 0.7) returns a scipy sparse array, which scanpy
    # 1.11 cannot read under scipy 1.17 (no .getnnz): joint_embedding crashed on ~10k cells. The threshold is
    # lowered here so that a small set takes that path.
    import anndata as ad
    import scipy.sparse as sp

    from mumatch.pl import _embedding

    monkeypatch.setattr(_embedding, "APPROXIMATE_KNN_CELLS", 100)
    graphs = []
    fit_transform = _embedding._MatrixGraph.fit_transform
    monkeypatch.setattr(
        _embedding._MatrixGraph,
        "fit_transform",
        lambda self, x, y=None: graphs.append(fit_transform(self, x)) or graphs[-1],
    )
    cells = ad.AnnData(np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32))
    _embedding._neighbors(cells, n_neighbors=10, random_state=0)
    assert len(graphs) == 1 and isinstance(graphs[0], sp.csr_matrix)
    assert cells.obsp["connectivities"].shape == (300, 300) and (cells.obsp["distances"].getnnz(axis=1) >= 9).all()


def test_joint_embedding_reuses_cache_until_embedding_changes(matched, monkeypatch):
    _cache_umap(matched)
    calls = []
    monkeypatch.setattr("scanpy.tl.umap", lambda *args, **kwargs: calls.append(1))
    mm.pl.joint_embedding(matched, "X_shared", color="cell_type", show=False)
    assert not calls
    matched["rna"].obsm["X_shared"] = matched["rna"].obsm["X_shared"][::-1].copy()
    with pytest.raises(KeyError):  # the patched umap wrote nothing: proof that it was called
        mm.pl.joint_embedding(matched, "X_shared", color="cell_type", show=False)
    assert calls


def test_joint_embedding_numeric_and_partial_columns(matched, tmp_path):
    _cache_umap(matched)
    matched["rna"].obs["only_rna"] = "x"
    axes = mm.pl.joint_embedding(matched, "X_shared", color=["match_confidence", "only_rna", "split"], show=False)
    assert len(axes) == 3
    path = tmp_path / "joint.png"
    mm.pl.joint_embedding(matched, "X_shared", color="modality", save=path, show=False)
    assert path.stat().st_size > 5_000


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"basis": "X_missing"}, KeyError, "train_clip"),
        ({"color": "not_a_column"}, KeyError, "color"),
        ({"mods": ["rna", "adt"]}, KeyError, "mods"),
        ({"n_neighbors": 1}, ValueError, "n_neighbors"),
    ],
)
def test_joint_embedding_bad_input(matched, kwargs, error, message):
    before = snapshot(matched)
    with pytest.raises(error, match=message):
        mm.pl.joint_embedding(matched, **{"basis": "X_shared", **kwargs}, show=False)
    assert_unchanged(before, matched)


def test_joint_embedding_rejects_different_widths(matched):
    matched["atac"].obsm["X_shared"] = matched["atac"].obsm["X_shared"][:, :8]
    before = snapshot(matched)
    with pytest.raises(ValueError, match="different widths"):
        mm.pl.joint_embedding(matched, "X_shared", show=False)
    assert_unchanged(before, matched)


def test_joint_embedding_rejects_ax_with_several_colors(matched):
    import matplotlib.pyplot as plt

    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="one panel"):
        mm.pl.joint_embedding(matched, "X_shared", ax=ax, show=False)


@pytest.fixture
def fast_umap(monkeypatch):
    """Stand-ins for scanpy's neighbours and UMAP: these tests are about what is written where, not the layout."""

    def umap(adata, **kwargs):
        adata.obsm["X_umap"] = np.asarray(adata.X)[:, :2].copy()

    monkeypatch.setattr("scanpy.pp.neighbors", lambda *args, **kwargs: None)
    monkeypatch.setattr("scanpy.tl.umap", umap)


@pytest.fixture
def logged_warnings(monkeypatch) -> list[str]:
    """The messages of scanpy.logging.warning (its logger does not propagate to pytest's caplog)."""
    from scanpy import logging as logg

    messages: list[str] = []
    monkeypatch.setattr(logg, "warning", lambda message, *args, **kwargs: messages.append(message))
    return messages


@pytest.mark.parametrize(
    "kwargs",
    [{"legend_loc": "not-a-location"}, {"save": "{a file}/joint.png"}, {"save": 3}],
)
def test_joint_embedding_failing_to_draw_or_save_leaves_mudata_unchanged(matched, fast_umap, kwargs, tmp_path):
    if isinstance(kwargs.get("save"), str):  # a folder that cannot be made: its name is a file's
        (tmp_path / "file").write_text("")
        kwargs = {"save": kwargs["save"].replace("{a file}", str(tmp_path / "file"))}
    before = snapshot(matched)
    with pytest.raises((ValueError, OSError)):
        mm.pl.joint_embedding(matched, "X_shared", color="cell_type", show=False, **kwargs)
    assert_unchanged(before, matched)


@pytest.mark.parametrize("key_added", ["X_umap", "X_shared"])
def test_joint_embedding_keeps_keys_it_did_not_write(matched, fast_umap, logged_warnings, key_added):
    # A modality's own UMAP, or the embedding itself: drawn, with a warning, and not overwritten.
    own = np.random.default_rng(0).normal(size=(matched["rna"].n_obs, 2)).astype(np.float32)
    matched["rna"].obsm["X_umap"] = own
    embedding = matched["rna"].obsm["X_shared"].copy()
    before = snapshot(matched)
    axes = mm.pl.joint_embedding(matched, "X_shared", key_added=key_added, show=False)
    assert len(axes) == 2
    assert any("not cached" in message for message in logged_warnings)
    assert_unchanged(before, matched)
    assert np.array_equal(matched["rna"].obsm["X_umap"], own)
    assert np.array_equal(matched["rna"].obsm["X_shared"], embedding)


def test_joint_embedding_overwrites_its_own_cache(matched, fast_umap, logged_warnings):
    mm.pl.joint_embedding(matched, "X_shared", color="cell_type", key_added="X_joint", show=False)
    first = matched["rna"].obsm["X_joint"].copy()
    matched["rna"].obsm["X_shared"] = matched["rna"].obsm["X_shared"][:, ::-1].copy()
    mm.pl.joint_embedding(matched, "X_shared", color="cell_type", key_added="X_joint", show=False)
    assert not logged_warnings
    assert not np.array_equal(matched["rna"].obsm["X_joint"], first)
    assert matched.uns["X_joint"]["params"]["fingerprint"]


def test_joint_embedding_uses_stored_category_colors(matched, fast_umap):
    from matplotlib.colors import to_hex
    from scanpy.plotting import palettes

    categories = list(matched["rna"].obs["cell_type"].cat.categories)
    stored = [to_hex(color) for color in reversed(palettes.default_102[: len(categories)])]
    matched["rna"].uns["cell_type_colors"] = np.array(stored)
    ax = mm.pl.joint_embedding(matched, "X_shared", color="cell_type", show=False)
    drawn = {to_hex(color) for color in ax.collections[0].get_facecolors()}
    present = set(matched["rna"].obs["cell_type"].astype(str)) | set(matched["atac"].obs["cell_type"].astype(str))
    assert drawn == {color for category, color in zip(categories, stored, strict=True) if category in present}
    assert "cell_type_colors" not in matched["atac"].uns  # only the temporary AnnData was coloured


def test_joint_embedding_colours_by_a_mudata_level_column(matched, fast_umap):
    import pandas as pd
    from matplotlib.colors import to_hex

    # A label kept only in mdata.obs (as after mu.pp.intersect_obs or a user's own annotation), for the RNA cells.
    rna_names = matched["rna"].obs_names
    labels = pd.Series(np.where(np.arange(rna_names.size) % 2 == 0, "even", "odd"), index=rna_names)
    matched.obs["parity"] = pd.Categorical(labels.reindex(matched.obs_names))
    matched.uns["parity_colors"] = np.array(["#ff0000", "#0000ff"])
    ax = mm.pl.joint_embedding(matched, "X_shared", color="parity", show=False)
    drawn = {to_hex(color) for color in ax.collections[0].get_facecolors()}
    assert {"#ff0000", "#0000ff"} <= drawn  # the MuData's colours, read by obs name for both modalities
    from mumatch.pl._embedding import _obs_column

    stacked = _obs_column(matched, ["rna", "atac"], "parity")
    assert list(stacked[: rna_names.size]) == list(labels)
    atac = matched["atac"].obs_names
    shared = atac.isin(rna_names)
    assert list(stacked[rna_names.size :][shared]) == list(labels.reindex(atac[shared]))
    assert stacked[rna_names.size :][~shared].isna().all()  # ATAC-only cells have no RNA label


def test_joint_embedding_prefers_a_modality_column_to_the_mudata_one(matched, fast_umap):
    import pandas as pd

    from mumatch.pl._embedding import _obs_column

    matched.obs["cell_type"] = pd.Categorical(["global"] * matched.n_obs)
    stacked = _obs_column(matched, ["rna", "atac"], "cell_type")
    assert "global" not in set(stacked.dropna())


def test_joint_embedding_save_follows_scanpy(matched, fast_umap, figdir):
    mm.pl.joint_embedding(matched, "X_shared", color="cell_type", save="_demo.png", show=False)
    assert (figdir / "joint_embedding_demo.png").stat().st_size > 2_000


def test_joint_embedding_over_other_modalities_replaces_its_cache(fast_umap, logged_warnings):
    # rna + atac, then rna + adt, then rna + atac again: each call's cache is its own, never "someone else's".
    mdata = mm.datasets.simulate_paired(90, ("rna", "atac", "adt"), n_genes=40, n_peaks=50, n_proteins=10, seed=0)
    rng = np.random.default_rng(0)
    for mod in mdata.mod:
        mdata[mod].obsm["X_shared"] = rng.standard_normal((mdata[mod].n_obs, 5)).astype(np.float32)
    for mods in (["rna", "atac"], ["rna", "adt"], ["rna", "atac"]):
        mm.pl.joint_embedding(mdata, "X_shared", mods=mods, color="modality", n_neighbors=5, show=False)
        assert list(mdata.uns["X_shared_umap"]["params"]["mods"]) == mods
        assert [mod for mod in mdata.mod if "X_shared_umap" in mdata[mod].obsm] == [m for m in mdata.mod if m in mods]
    assert not logged_warnings


def test_stored_colors_as_rgb_tuples_and_partial_coverage():
    import pandas as pd
    from matplotlib.colors import to_hex

    from mumatch.pl._utils import category_colors, stored_colors

    values = pd.Series(pd.Categorical(["B", "NK", "T"]))
    rgb = [(1.0, 0.0, 0.0), (0.0, 0.5, 0.0), (0.0, 0.0, 1.0)]
    assert stored_colors(values, rgb) == {"B": "#ff0000", "NK": "#008000", "T": "#0000ff"}
    assert stored_colors(values, np.array(rgb)) == {"B": "#ff0000", "NK": "#008000", "T": "#0000ff"}
    # Stored colours for some categories only: the others never take a colour already in use.
    palette = category_colors(["B", "NK", "T"])
    known = {"B": palette["B"], "T": palette["NK"]}
    colors = category_colors(["B", "NK", "T"], known)
    assert len({to_hex(color) for color in colors.values()}) == 3 and colors["T"] == palette["NK"]


def test_joint_embedding_never_deletes_coordinates_a_user_put_under_its_name(fast_umap):
    mdata = mm.datasets.simulate_paired(90, ("rna", "atac", "adt"), n_genes=40, n_peaks=50, n_proteins=10, seed=0)
    rng = np.random.default_rng(0)
    for mod in mdata.mod:
        mdata[mod].obsm["X_shared"] = rng.standard_normal((mdata[mod].n_obs, 5)).astype(np.float32)
    mm.pl.joint_embedding(mdata, "X_shared", mods=["rna", "atac"], color="modality", n_neighbors=5, show=False)
    mine = np.full((mdata["atac"].n_obs, 2), 7.0, dtype=np.float32)
    mdata["atac"].obsm["X_shared_umap"] = mine  # the user's own coordinates, since
    mm.pl.joint_embedding(mdata, "X_shared", mods=["rna", "adt"], color="modality", n_neighbors=5, show=False)
    np.testing.assert_array_equal(mdata["atac"].obsm["X_shared_umap"], mine)


def test_palette_colours_skip_every_colour_already_given():
    from mumatch.pl._utils import category_colors

    palette = category_colors(["A", "B", "C"])
    colors = category_colors(["A", "B", "C"], {"C": palette["A"]})  # C stored with A's palette colour
    assert len(set(colors.values())) == 3 and colors["C"] == palette["A"]
    assert colors["B"] == palette["B"]  # only the displaced category moves
    assert category_colors(["B"], {"C": palette["A"]}, order=["A", "B", "C"])["B"] == colors["B"]


def test_joint_embedding_recomputes_its_cache_after_subsetting_without_a_warning(matched, fast_umap, logged_warnings):
    mm.pl.joint_embedding(matched, "X_shared", color="cell_type", key_added="X_joint", show=False)
    keep = matched.obs_names[::2]
    subset = matched[keep].copy()
    assert subset["rna"].n_obs < matched["rna"].n_obs and "X_joint" in subset["rna"].obsm
    mm.pl.joint_embedding(subset, "X_shared", color="cell_type", key_added="X_joint", show=False)
    assert not logged_warnings  # the subset's cache is the earlier call's, not "something it did not write"
    assert {mod: len(rows) for mod, rows in subset.uns["X_joint"]["rows"].items()} == {
        mod: subset[mod].n_obs for mod in ("rna", "atac")
    }
    # Drawn from the subset's own embedding (the stand-in UMAP is its first two columns).
    np.testing.assert_allclose(subset["rna"].obsm["X_joint"], subset["rna"].obsm["X_shared"][:, :2], rtol=1e-6)


def test_joint_embedding_still_keeps_a_users_coordinates_of_the_same_cells(matched, fast_umap, logged_warnings):
    mm.pl.joint_embedding(matched, "X_shared", color="cell_type", key_added="X_joint", show=False)
    mine = np.zeros((matched["rna"].n_obs, 2), dtype=np.float32)
    matched["rna"].obsm["X_joint"] = mine  # same cells, other coordinates: the user's
    matched["rna"].obsm["X_shared"] = matched["rna"].obsm["X_shared"][:, ::-1].copy()
    mm.pl.joint_embedding(matched, "X_shared", color="cell_type", key_added="X_joint", show=False)
    assert any("not cached" in message for message in logged_warnings)
    np.testing.assert_array_equal(matched["rna"].obsm["X_joint"], mine)


def test_joint_embedding_keeps_a_users_coordinates_of_a_subset(matched, fast_umap, logged_warnings):
    # Subset, then the user's own per-modality UMAP under the same key (scanpy's X_umap): theirs, not a stale cache.
    mm.pl.joint_embedding(matched, "X_shared", color="cell_type", key_added="X_umap", show=False)
    subset = matched[matched.obs_names[::2]].copy()
    mine = np.random.default_rng(1).normal(size=(subset["rna"].n_obs, 2)).astype(np.float32)
    subset["rna"].obsm["X_umap"] = mine
    mm.pl.joint_embedding(subset, "X_shared", color="cell_type", key_added="X_umap", show=False)
    assert any("not cached" in message for message in logged_warnings)
    np.testing.assert_array_equal(subset["rna"].obsm["X_umap"], mine)


def test_joint_embedding_cache_record_survives_h5mu(matched, fast_umap, logged_warnings, tmp_path):
    import mudata

    mm.pl.joint_embedding(matched, "X_shared", color="cell_type", key_added="X_joint", show=False)
    matched.write_h5mu(tmp_path / "m.h5mu")
    subset = mudata.read_h5mu(tmp_path / "m.h5mu")
    subset = subset[subset.obs_names[::3]].copy()
    mm.pl.joint_embedding(subset, "X_shared", color="cell_type", key_added="X_joint", show=False)
    assert not logged_warnings


def test_default_groups_follow_the_data(matched, fast_umap):
    # With cell types the defaults show them; without, every plot still draws (by modality), while asking for the
    # missing column by name is still an error that names it.
    assert [ax.get_title() for ax in mm.pl.joint_embedding(matched, "X_shared", show=False)] == [
        "modality",
        "cell_type",
    ]
    with_types = mm.pl.confidence(matched, show=False)
    assert len(with_types.get_yticklabels()) > 2
    for mod in ("rna", "atac"):
        del matched[mod].obs["cell_type"]
    ax = mm.pl.joint_embedding(matched, "X_shared", show=False)
    assert ax.get_title() == "modality"
    ax = mm.pl.confidence(matched, show=False)
    assert [label.get_text().split(" (")[0] for label in ax.get_yticklabels()] == ["rna", "atac"]
    mm.pl.plan(matched, "match", show=False)
    with pytest.raises(KeyError, match="groupby='cell_type' not found"):
        mm.pl.confidence(matched, groupby="cell_type", show=False)
    with pytest.raises(KeyError, match="color='cell_type' is not a column"):
        mm.pl.joint_embedding(matched, "X_shared", color=["modality", "cell_type"], show=False)


def test_joint_embedding_says_why_a_mudata_column_cannot_colour_repeated_names():
    # Barcodes repeated within a modality make mdata.obs_names repeat: a column there exists but cannot be read by
    # name, which the error must say (not that mdata.obs lacks it).
    import anndata as ad
    import mudata as md
    import pandas as pd

    rng = np.random.default_rng(0)
    rna = ad.AnnData(np.zeros((40, 3), dtype=np.float32))
    rna.obs_names = [f"c{i % 20}" for i in range(40)]
    atac = ad.AnnData(np.zeros((30, 3), dtype=np.float32))
    atac.obs_names = [f"a{i}" for i in range(30)]
    for adata in (rna, atac):
        adata.obsm["X_shared"] = rng.normal(size=(adata.n_obs, 4)).astype(np.float32)
    mdata = md.MuData({"rna": rna, "atac": atac})
    assert not mdata.obs_names.is_unique
    mdata.obs["sample"] = pd.Categorical(np.where(np.arange(mdata.n_obs) % 2, "s1", "s2"))
    with pytest.raises(ValueError, match=r"color='sample' is a column of mdata.obs only.*obs_names_make_unique"):
        mm.pl.joint_embedding(mdata, "X_shared", color="sample", show=False)
