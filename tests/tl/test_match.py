from __future__ import annotations

import logging

import anndata
import mudata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

import mumatch as mm
from mumatch._layout import paired_positions, unpaired_mask
from mumatch.datasets._neurips2021 import prediction_matrix

from ..helpers import assert_unchanged, snapshot


def shared_embedding(mdata: mudata.MuData, mod1: str, mod2: str, n_comps: int = 20, key: str = "X_shared") -> None:
    """A simple shared space: PCA of log-normalised counts per modality, mod2 mapped onto mod1 by least squares
    fitted on the paired (training) cells."""
    components = {}
    for mod in (mod1, mod2):
        counts = mdata[mod].layers["counts"]
        counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
        logged = np.log1p(1e4 * counts / np.maximum(counts.sum(1, keepdims=True), 1))
        logged -= logged.mean(0)
        u, s, _ = np.linalg.svd(logged, full_matrices=False)
        components[mod] = u[:, :n_comps] * s[:n_comps]
    rows1, rows2 = paired_positions(mdata, mod1, mod2)
    weights, *_ = np.linalg.lstsq(components[mod2][rows2], components[mod1][rows1], rcond=None)
    mdata[mod1].obsm[key] = components[mod1].astype(np.float32)
    mdata[mod2].obsm[key] = (components[mod2] @ weights).astype(np.float32)


@pytest.fixture(scope="module")
def _embedded(_bundled) -> dict[str, mudata.MuData]:
    embedded = {}
    for task, mod2 in (("cite", "adt"), ("multiome", "atac")):
        mdata = _bundled[task].copy()
        shared_embedding(mdata, "rna", mod2)
        embedded[task] = mdata
    return embedded


@pytest.fixture
def cite_embedded(_embedded):
    return _embedded["cite"].copy()


@pytest.fixture
def multiome_embedded(_embedded):
    return _embedded["multiome"].copy()


@pytest.mark.parametrize("task", ["cite", "multiome"])
def test_match_ot_beats_random_on_the_starters(task, _embedded, tmp_path):
    mdata, mod2 = _embedded[task].copy(), "adt" if task == "cite" else "atac"
    mm.tl.match_ot(mdata, "rna", mod2, use_rep="X_shared")
    plan = mdata.obsp["match"]
    assert sp.isspmatrix_csr(plan) and plan.shape == (mdata.n_obs, mdata.n_obs)
    n_test = int(unpaired_mask(mdata, "rna", mod2).sum())
    score = mm.metrics.match_score(mdata, key="match", mod1="rna", mod2=mod2)
    random = 1 / n_test
    # The multiome starter carries little signal (221 training cells, 600 features): MatchCLOT and CLUE score about
    # 2.5 x random there (/work/shared/PEERS.md), the CITE starter much more.
    assert score > (5 if task == "cite" else 1.8) * random, (score, random)
    # Every test cell of mod1 is matched; rows sum to 1, only unpaired cells carry entries.
    rows = mm._layout.obs_positions(mdata, "rna")[unpaired_mask(mdata, "rna", mod2)]
    np.testing.assert_allclose(plan[rows].sum(1).A1, 1, rtol=1e-5)
    assert plan.nnz == plan[rows].nnz
    path = tmp_path / "prediction.h5ad"
    mm.datasets.write_prediction(mdata, "match", path)
    reread = anndata.read_h5ad(path)
    assert reread.shape == (n_test, n_test)
    assert (np.diff(sp.csr_matrix(reread.X).indptr) <= 1000).all()
    truth = prediction_matrix(mdata, "match_true", "rna", mod2)
    assert mm.metrics.match_score(sp.csr_matrix(reread.X), truth) == pytest.approx(score, rel=1e-4)


def test_outputs_and_diagnostics(cite_embedded):
    mdata = cite_embedded
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", key_added="m")
    uns = mdata.uns["m"]
    assert uns["params"]["epsilon"] == 0.01 and uns["params"]["method"] == "sinkhorn"
    assert "tau" not in uns["params"]  # None is left out (not storable in .h5mu)
    assert 0 < uns["params"]["memory_budget"] <= 2 * 2**30  # the automatic budget, as resolved
    (block,) = uns["blocks"].values()
    assert block["status"] == "solved" and block["converged"]
    assert block["n_cells1"] == block["n_cells2"] == 289
    assert block["marginal_error"] <= 1e-3 and block["n_iter"] >= 1
    # The potentials recompute the plan: its rows, normalised, agree with the stored sparse rows.
    rna = mdata["rna"]
    cells1 = rna.obs_names.get_indexer(block["cells1"])
    cells2 = mdata["adt"].obs_names.get_indexer(block["cells2"])
    x = rna.obsm["X_shared"][cells1]
    y = mdata["adt"].obsm["X_shared"][cells2]
    cost = {"kind": block["cost_kind"], "offset": block["cost_offset"], "scale": block["cost_scale"]}
    full = mm.ot.plan_tile(x, y, block["f"], block["g"], 0.01, cost)
    assert abs(full.sum() - 1) < 2e-3
    stored = mm._layout.extract_block(mdata, mdata.obsp["m"], "rna", "adt", cells1, cells2).toarray()
    np.testing.assert_array_equal(stored.argmax(1), full.argmax(1))
    # Confidence and entropy describe the full plan: its normalised rows for rna, its normalised columns for adt.
    for mod, cells, normalised in (
        ("rna", cells1, full / full.sum(1, keepdims=True)),
        ("adt", cells2, (full / full.sum(0, keepdims=True)).T),
    ):
        obs = mdata[mod].obs.iloc[cells]
        np.testing.assert_allclose(obs["m_confidence"], normalised.max(1), rtol=1e-3)
        entropy = -(normalised * np.log(np.maximum(normalised, 1e-300))).sum(1)
        np.testing.assert_allclose(obs["m_entropy"], entropy, rtol=1e-3, atol=1e-4)
    for mod in ("rna", "adt"):
        confidence = mdata[mod].obs["m_confidence"]
        entropy = mdata[mod].obs["m_entropy"]
        unpaired = unpaired_mask(mdata, mod, "adt" if mod == "rna" else "rna")
        assert confidence[unpaired].between(0, 1).all() and np.isnan(confidence[~unpaired]).all()
        assert (entropy[unpaired] >= -1e-9).all() and np.isnan(entropy[~unpaired]).all()


def test_epsilon_and_top_k_given_are_the_ones_solved_and_recorded(cite_embedded):
    mdata = cite_embedded
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", epsilon=0.05, top_k=3, batch_key=None)
    params = mdata.uns["match"]["params"]
    assert params["epsilon"] == 0.05 and params["top_k"] == 3
    (block,) = mdata.uns["match"]["blocks"].values()
    assert block["epsilon_schedule"][-1] == 0.05
    cells1 = mdata["rna"].obs_names.get_indexer(block["cells1"])
    cells2 = mdata["adt"].obs_names.get_indexer(block["cells2"])
    x, y = mdata["rna"].obsm["X_shared"][cells1], mdata["adt"].obsm["X_shared"][cells2]
    cost = {"kind": block["cost_kind"], "offset": block["cost_offset"], "scale": block["cost_scale"]}
    # The potentials are those of epsilon 0.05: at that epsilon (and not at the default 0.01) they give the marginals.
    full = mm.ot.plan_tile(x, y, block["f"], block["g"], params["epsilon"], cost)
    np.testing.assert_allclose(full.sum(1), 1 / x.shape[0], rtol=1e-3)
    assert np.abs(full.sum(0) - 1 / y.shape[0]).sum() <= 2e-3
    stored = mm._layout.extract_block(mdata, mdata.obsp["match"], "rna", "adt", cells1, cells2)
    assert (np.diff(stored.indptr) == 3).all()
    # Each stored row is the full plan's three largest entries of that row, renormalised (sparsified at 0.05 too).
    top = np.sort(full, axis=1)[:, -3:]
    np.testing.assert_allclose(np.sort(stored.toarray(), axis=1)[:, -3:], top / top.sum(1, keepdims=True), rtol=1e-3)


def test_plan_survives_h5mu_round_trip(cite_embedded, tmp_path):
    mdata = cite_embedded
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared")
    path = tmp_path / "matched.h5mu"
    mdata.write(path)
    back = mudata.read_h5mu(path)
    assert (back.obsp["match"] != mdata.obsp["match"]).nnz == 0
    np.testing.assert_allclose(back.uns["match"]["blocks"]["block0"]["f"], mdata.uns["match"]["blocks"]["block0"]["f"])
    pd.testing.assert_series_equal(back["rna"].obs["match_confidence"], mdata["rna"].obs["match_confidence"])
    assert mm.metrics.match_score(back, key="match", mod1="rna", mod2="adt") == pytest.approx(
        mm.metrics.match_score(mdata, key="match", mod1="rna", mod2="adt")
    )


def test_a_torch_dtype_is_recorded_by_name_and_the_plan_is_written(cite_embedded, tmp_path):
    mdata = cite_embedded
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", dtype=torch.float64, device=torch.device("cpu"))
    assert mdata.uns["match"]["params"]["dtype"] == "float64"
    mdata.write(tmp_path / "matched.h5mu")
    assert mudata.read_h5mu(tmp_path / "matched.h5mu").uns["match"]["params"]["dtype"] == "float64"


def test_knn_matches_in_the_precision_asked_for(cite_embedded):
    mdata = cite_embedded
    for dtype in ("float32", "float64"):
        mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", method="knn", dtype=dtype, key_added=dtype)
    assert mdata.uns["float64"]["params"]["dtype"] == "float64"
    # The same links, weighed on a cost rounded differently.
    assert (mdata.obsp["float32"] != 0).sum() == (mdata.obsp["float64"] != 0).sum()
    assert (mdata.obsp["float32"] != mdata.obsp["float64"]).nnz > 0


@pytest.mark.parametrize("method", ["exact", "knn"])
def test_other_methods_same_format(cite_embedded, method):
    mdata = cite_embedded
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", method=method, key_added=method)
    plan = mdata.obsp[method]
    rows = mm._layout.obs_positions(mdata, "rna")[unpaired_mask(mdata, "rna", "adt")]
    np.testing.assert_allclose(plan[rows].sum(1).A1, 1, rtol=1e-5)
    assert mm.metrics.match_score(mdata, key=method, mod1="rna", mod2="adt") > 2 / 289
    assert mdata.uns[method]["blocks"]["block0"]["block_time_s"] > 0
    if method == "exact":
        assert plan.nnz == 289 and (mdata["rna"].obs["exact_confidence"].dropna() == 1).all()


def test_top_k_and_copy(cite_embedded):
    mdata = cite_embedded
    before = snapshot(mdata)
    result = mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", top_k=5, copy=True)
    assert_unchanged(before, mdata)
    rows = mm._layout.obs_positions(result, "rna")[unpaired_mask(result, "rna", "adt")]
    assert (np.diff(result.obsp["match"][rows].indptr) == 5).all()


def test_ensemble_of_representations(cite_embedded):
    mdata = cite_embedded
    for mod in ("rna", "adt"):
        mdata[mod].obsm["X_twice"] = np.hstack([mdata[mod].obsm["X_shared"]] * 2)
    # Both solved far below the default tolerance, so that the comparison sees the costs, not where each solve
    # happened to stop (two costs equal up to rounding can take different accelerated trajectories); rows are cut
    # at 99.9 % of their mass, so an entry at that threshold may be kept in one plan and not the other.
    tight = {"tol": 1e-5, "max_iter": 5000}
    mm.tl.match_ot(mdata, "rna", "adt", use_rep=["X_shared", "X_shared"], key_added="ensemble", **tight)
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", key_added="single", **tight)
    # The mean of identical cosine similarities is the similarity itself.
    np.testing.assert_allclose(mdata.obsp["ensemble"].toarray(), mdata.obsp["single"].toarray(), atol=1e-3)
    assert list(mdata.uns["ensemble"]["params"]["use_rep"]["rna"]) == ["X_shared", "X_shared"]


@pytest.mark.parametrize("cost", ["cosine", "sqeuclidean"])
def test_ensemble_of_different_representations_averages_their_costs(cite_embedded, cost):
    # Two members of different scales and geometry. The documented ensemble: the mean of the members' cosine
    # similarities (cosine), of their squared distances (sqeuclidean), i.e. the plan of the members side by side,
    # each unit-normalised for the cosine cost (built here by hand).
    mdata = cite_embedded
    mixing = np.random.default_rng(0).normal(size=(20, 20))
    for mod in ("rna", "adt"):
        first = mdata[mod].obsm["X_shared"].astype(np.float64)
        second = 30.0 * np.tanh(first @ mixing)
        mdata[mod].obsm["X_second"] = second
        if cost == "cosine":
            first = first / np.linalg.norm(first, axis=1, keepdims=True)
            second = second / np.linalg.norm(second, axis=1, keepdims=True)
        mdata[mod].obsm["X_side_by_side"] = np.hstack([first, second])
    tight = {"tol": 1e-5, "max_iter": 5000, "cost": cost}
    mm.tl.match_ot(mdata, "rna", "adt", use_rep=["X_shared", "X_second"], key_added="ensemble", **tight)
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_side_by_side", key_added="by_hand", **tight)
    for member in ("X_shared", "X_second"):  # each member alone gives another plan
        mm.tl.match_ot(mdata, "rna", "adt", use_rep=member, key_added=member, **tight)
        assert abs(mdata.obsp[member] - mdata.obsp["by_hand"]).sum(axis=1).max() > 0.1
    np.testing.assert_allclose(mdata.obsp["ensemble"].toarray(), mdata.obsp["by_hand"].toarray(), atol=1e-3)


def test_batches_make_blocks(simulated, caplog):
    mdata = simulated
    mods = list(mdata.mod)
    rng = np.random.default_rng(0)
    for mod in mods:  # the blocks, not the match quality, are under test here
        mdata[mod].obsm["X_shared"] = rng.normal(size=(mdata[mod].n_obs, 8)).astype(np.float32)
    mm.tl.match_ot(mdata, *mods, use_rep="X_shared")
    blocks = mdata.uns["match"]["blocks"]
    n_levels = mdata[mods[0]].obs["batch"][unpaired_mask(mdata, mods[0], mods[1])].nunique()
    assert len(blocks) == n_levels > 1
    plan = mdata.obsp["match"].tocoo()
    batch = pd.concat([mdata[mod].obs["batch"].astype(str) for mod in mods])
    batch = batch[~batch.index.duplicated()].reindex(mdata.obs_names).to_numpy()
    assert (batch[plan.row] == batch[plan.col]).all()


@pytest.fixture
def many_batches(simulated):
    """Random embeddings and a column 'b' of six batch levels: the blocks, not the match quality, are under test."""
    rng = np.random.default_rng(0)
    for mod in ("rna", "atac"):
        simulated[mod].obsm["X_shared"] = rng.normal(size=(simulated[mod].n_obs, 8)).astype(np.float32)
        simulated[mod].obs["b"] = (simulated[mod].obs_names.str.slice(-1).astype(int) % 6).astype(str)
    return simulated


@pytest.mark.parametrize("method", ["sinkhorn", "knn"])
def test_plan_is_the_sum_of_its_blocks_plans(many_batches, monkeypatch, method):
    from mumatch._layout import batch_blocks, embed_block
    from mumatch.tl import _match

    solved = []

    def recording(x, y, *args, **kwargs):
        sparse = solve_block(x, y, *args, **kwargs)
        solved.append(sparse.plan)
        return sparse

    solve_block = _match._solve_block
    monkeypatch.setattr(_match, "_solve_block", recording)
    mm.tl.match_ot(many_batches, "rna", "atac", use_rep="X_shared", batch_key="b", method=method)
    masks = [unpaired_mask(many_batches, "rna", "atac"), unpaired_mask(many_batches, "atac", "rna")]
    blocks, _ = batch_blocks(many_batches, "rna", "atac", *masks, "b")
    assert len(blocks) == len(solved) == 6
    # What match_ot built before the plan was written in one piece: a running sum of each block's embedding.
    expected = sp.csr_matrix((many_batches.n_obs, many_batches.n_obs), dtype=np.float32)
    for block, plan in zip(blocks, solved, strict=True):
        expected = expected + embed_block(many_batches, "rna", "atac", plan, block.index1, block.index2)
    expected = sp.csr_matrix(expected, dtype=np.float32)
    expected.sort_indices()
    plan = many_batches.obsp["match"]
    assert plan.dtype == np.float32
    np.testing.assert_array_equal(plan.indptr, expected.indptr)
    np.testing.assert_array_equal(plan.indices, expected.indices)
    np.testing.assert_array_equal(plan.data, expected.data)


def test_cells_are_placed_in_the_plan_once_whatever_the_number_of_blocks(many_batches, monkeypatch):
    # Looking the cells up in mdata.obs_names for every block cost O(blocks × cells): 52 s for 1000 batches of 100k.
    from mumatch import _layout

    calls = []
    obs_positions = _layout.obs_positions
    monkeypatch.setattr(_layout, "obs_positions", lambda *args: calls.append(args) or obs_positions(*args))
    for batch_key, n_blocks in ((None, 1), ("b", 6)):
        calls.clear()
        mm.tl.match_ot(many_batches, "rna", "atac", use_rep="X_shared", batch_key=batch_key, method="knn")
        assert len(many_batches.uns["match"]["blocks"]) == n_blocks
        assert len(calls) == 2


def test_missing_batch_labels_give_one_block(cite_embedded, caplog):
    # The starters' test mod2 cells have no batch label.
    with caplog.at_level(logging.WARNING):
        mm.tl.match_ot(cite_embedded, "rna", "adt", use_rep="X_shared")
    assert len(cite_embedded.uns["match"]["blocks"]) == 1
    assert "no selected cell of 'adt' has a 'batch' label" in cite_embedded.uns["match"]["notes"][0]


def test_cells_without_a_label_among_labelled_ones_keep_the_batches_apart(simulated):
    mdata = simulated
    rng = np.random.default_rng(0)
    for mod in ("rna", "atac"):
        mdata[mod].obsm["X_shared"] = rng.normal(size=(mdata[mod].n_obs, 8)).astype(np.float32)
    unpaired = {mod: np.flatnonzero(unpaired_mask(mdata, mod, "atac" if mod == "rna" else "rna")) for mod in mdata.mod}
    for mod, n_unlabelled in (("rna", 1), ("atac", 3)):
        obs = mdata[mod].obs
        obs["batch"] = obs["batch"].astype(object)
        obs.iloc[unpaired[mod][:n_unlabelled], obs.columns.get_loc("batch")] = np.nan
    mm.tl.match_ot(mdata, "rna", "atac", use_rep="X_shared")
    blocks = {block["name"]: block for block in mdata.uns["match"]["blocks"].values()}
    assert len(blocks) == mdata["rna"].obs["batch"].nunique() + 1
    assert (blocks["nan"]["n_cells1"], blocks["nan"]["n_cells2"]) == (1, 3)
    assert "1 of 'rna' and 3 of 'atac' selected cells have no 'batch' label" in mdata.uns["match"]["notes"][0]
    plan = mdata.obsp["match"].tocoo()
    batch = pd.concat([mdata[mod].obs["batch"].astype(str) for mod in ("rna", "atac")])
    batch = batch[~batch.index.duplicated()].reindex(mdata.obs_names).to_numpy()
    assert (batch[plan.row] == batch[plan.col]).all()  # no mass between batches, nor between labelled and not


def test_empty_block_is_skipped_and_reported(cite_embedded):
    mdata = cite_embedded
    for mod in ("rna", "adt"):
        obs = mdata[mod].obs
        obs["b"] = np.where(np.arange(mdata[mod].n_obs) % 2 == 0, "even", "odd")
    mdata["adt"].obs.loc[mdata["adt"].obs["b"] == "odd", "b"] = "even"
    mdata["rna"].obs["b"] = mdata["rna"].obs["b"].astype(str)
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", batch_key="b")
    statuses = {block["name"]: block["status"] for block in mdata.uns["match"]["blocks"].values()}
    assert statuses["even"] == "solved" and statuses["odd"].startswith("skipped")
    odd = (mdata["rna"].obs["b"] == "odd").to_numpy() & unpaired_mask(mdata, "rna", "adt")
    assert np.isnan(mdata["rna"].obs["match_confidence"][odd]).all()


def test_batches_spelt_differently_in_each_modality_are_refused(cite_embedded):
    # Every block one-sided: an empty plan would pass on silently (and transfer_labels predict nothing).
    mdata = cite_embedded
    mdata["rna"].obs["b"] = "s1d1"
    mdata["adt"].obs["b"] = "S1D1"
    before = snapshot(mdata)
    with pytest.raises(ValueError, match=r"no level of batch_key='b'.*'rna': \['s1d1'\], 'adt': \['S1D1'\]"):
        mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", batch_key="b")
    assert_unchanged(before, mdata)


def test_boolean_cell_selection(cite_embedded):
    mdata = cite_embedded
    for mod in ("rna", "adt"):
        mdata[mod].obs["chosen"] = unpaired_mask(mdata, mod, "adt" if mod == "rna" else "rna")
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", cells="chosen", key_added="chosen")
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", key_added="default")
    assert (mdata.obsp["chosen"] != mdata.obsp["default"]).nnz == 0
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", cells="all", batch_key=None, key_added="all")
    assert mdata.uns["all"]["blocks"]["block0"]["n_cells1"] == 600


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"use_rep": "X_missing"}, KeyError, "X_missing"),
        ({"mod1": "protein"}, KeyError, "protein"),
        ({"mod2": "rna"}, ValueError, "differ"),
        ({"epsilon": 0}, ValueError, "epsilon"),
        ({"epsilon": -0.1}, ValueError, "epsilon"),
        ({"top_k": 0}, ValueError, "top_k"),
        ({"key_added": "a/b"}, ValueError, "must not contain"),
        ({"method": "greedy"}, ValueError, "method"),
        ({"cost": "l1"}, ValueError, "cost"),
        ({"cells": "nope"}, KeyError, "cells"),
        ({"tau": 0}, ValueError, "tau"),
        ({"use_rep": {"rna": "X_shared"}}, KeyError, "adt"),
        ({"device": "tpu"}, ValueError, "device"),
        ({"memory_budget": 0}, ValueError, "memory_budget"),
        ({"method": "knn", "top_k": 1}, ValueError, "top_k applies to method='sinkhorn'"),
        ({"method": "exact", "tau": 1.0}, ValueError, "tau applies to method='sinkhorn'"),
        ({"cells": "none_chosen"}, ValueError, "selects no cell"),
        ({"cells": "with_missing"}, ValueError, "missing values"),
    ],
)
def test_bad_inputs_leave_mudata_unchanged(cite_embedded, kwargs, error, message):
    mdata = cite_embedded
    for mod in ("rna", "adt"):
        mdata[mod].obs["none_chosen"] = False
        mdata[mod].obs["with_missing"] = pd.array([True, None] + [True] * (mdata[mod].n_obs - 2), dtype="boolean")
    before = snapshot(mdata)
    arguments = {"mod1": "rna", "mod2": "adt", "use_rep": "X_shared", **kwargs}
    with pytest.raises(error, match=message):
        mm.tl.match_ot(mdata, **arguments)
    assert_unchanged(before, mdata)


def test_width_mismatch_and_non_finite_embeddings(cite_embedded):
    mdata = cite_embedded
    before = snapshot(mdata)
    mdata["adt"].obsm["X_narrow"] = mdata["adt"].obsm["X_shared"][:, :5]
    mdata["rna"].obsm["X_narrow"] = mdata["rna"].obsm["X_shared"]
    before = snapshot(mdata)
    with pytest.raises(ValueError, match="dimensions"):
        mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_narrow")
    assert_unchanged(before, mdata)
    mdata["rna"].obsm["X_shared"][3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared")
    assert_unchanged(before, mdata)


def test_no_unpaired_cells_is_an_error_not_an_empty_plan(cite_embedded):
    mdata = cite_embedded
    paired = mdata["rna"].obs_names.intersection(mdata["adt"].obs_names)
    mdata = mudata.MuData({mod: mdata[mod][paired].copy() for mod in ("rna", "adt")})
    before = snapshot(mdata)
    with pytest.raises(ValueError, match="every cell of 'rna' is also measured in 'adt'"):
        mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared")
    assert_unchanged(before, mdata)


def test_duplicate_or_stale_obs_names_are_refused(cite_embedded):
    mdata = cite_embedded
    names = mdata["adt"].obs_names.to_numpy().copy()
    names[1] = names[0]
    mdata["adt"].obs_names = names
    with pytest.raises(ValueError, match=r"repeats names .*obs_names_make_unique"):
        mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared")
    mdata["adt"].obs_names = [f"renamed{i}" for i in range(mdata["adt"].n_obs)]  # without mdata.update()
    with pytest.raises(ValueError, match=r"mdata.update\(\)"):
        mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared")


def test_repeated_names_in_a_third_modality_are_named(cite_embedded):
    # The MuData's own obs names repeat another modality's: plans and labels are indexed by them.
    mdata = cite_embedded
    extra = mdata["adt"][:3].copy()
    extra.obs_names = [mdata["adt"].obs_names[0]] * 3
    mdata = mudata.MuData({"rna": mdata["rna"], "adt": mdata["adt"], "protein2": extra})
    before = snapshot(mdata)
    for call in (
        lambda: mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared"),
        lambda: mm.tl.transfer_labels(mdata, label_key="cell_type", source_mod="rna", target_mod="adt"),
    ):
        with pytest.raises(ValueError, match=r"mdata\['protein2'\].obs_names repeats names"):
            call()
    assert_unchanged(before, mdata)


def test_nullable_boolean_selection_and_numpy_scalars(cite_embedded):
    mdata = cite_embedded
    for mod, other in (("rna", "adt"), ("adt", "rna")):
        mdata[mod].obs["chosen"] = pd.array(unpaired_mask(mdata, mod, other), dtype="boolean")
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", cells="chosen", key_added="chosen")
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", key_added="default")
    assert (mdata.obsp["chosen"] != mdata.obsp["default"]).nnz == 0
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", method="knn", epsilon=np.float32(0.05), key_added="knn")
    assert mdata.obsp["knn"].nnz > 0


def test_integer_and_whole_float_batch_labels_name_the_same_batches(cite_embedded):
    mdata = cite_embedded
    mdata["rna"].obs["b"] = np.arange(mdata["rna"].n_obs) % 2
    mdata["adt"].obs["b"] = (np.arange(mdata["adt"].n_obs) % 2).astype(float)
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", batch_key="b")
    blocks = mdata.uns["match"]["blocks"].values()
    assert sorted(block["name"] for block in blocks) == ["0", "1"]
    assert all(block["status"] == "solved" for block in blocks)


def test_squared_euclidean_plan_ignores_the_embeddings_offset_and_scale(cite_embedded):
    # The cost is divided by its largest entry: a common offset or scale changes nothing. In float32 an offset of
    # 1000 lost every distance to rounding, and values of 1e20 overflowed.
    mdata = cite_embedded
    for mod in ("rna", "adt"):
        mdata[mod].obsm["X_huge"] = mdata[mod].obsm["X_shared"].astype(np.float64) * 1e20
        mdata[mod].obsm["X_far"] = mdata[mod].obsm["X_shared"] + 1000.0
        mdata[mod].obsm["X_tiny"] = mdata[mod].obsm["X_shared"].astype(np.float64) * 1e-19
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", cost="sqeuclidean", key_added="plain")
    for rep in ("X_huge", "X_far", "X_tiny"):
        mm.tl.match_ot(mdata, "rna", "adt", use_rep=rep, cost="sqeuclidean", key_added=rep)
        difference = abs(mdata.obsp[rep] - mdata.obsp["plain"]).sum(axis=1).max()
        assert difference < 0.05, rep


def test_a_plan_is_scored_and_drawn_whichever_way_round_it_was_solved(cite_embedded):
    mdata = cite_embedded
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", key_added="forward")
    mm.tl.match_ot(mdata, "adt", "rna", use_rep="X_shared", key_added="backward")
    forward = mm.metrics.match_score(mdata, key="forward", mod1="rna", mod2="adt")
    backward = mm.metrics.match_score(mdata, key="backward", mod1="rna", mod2="adt")
    # The same balanced plan solved from either side (rows renormalised); read the wrong way round it scored 0.
    assert backward > 2 / 289
    np.testing.assert_allclose(backward, forward, rtol=0.05)
    mdata.uns["backward"]["params"]["mod2"] = "protein"
    with pytest.raises(ValueError, match="matches 'adt' \\(rows\\) to 'protein'"):
        mm.metrics.match_score(mdata, key="backward", mod1="rna", mod2="adt")


def test_default_batch_key_in_neither_modality_warns_and_matches_one_block(cite_embedded):
    for mod in ("rna", "adt"):
        del cite_embedded[mod].obs["batch"]
    mm.tl.match_ot(cite_embedded, "rna", "adt", use_rep="X_shared")
    assert "batch_key='batch' is not a column" in cite_embedded.uns["match"]["notes"][0]
    assert list(cite_embedded.uns["match"]["blocks"]) == ["block0"]
    assert cite_embedded.uns["match"]["blocks"]["block0"]["block_time_s"] > 0
    with pytest.raises(KeyError, match="batch_key='bacth' is not a column"):
        mm.tl.match_ot(cite_embedded, "rna", "adt", use_rep="X_shared", batch_key="bacth")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (pd.Series([1.0, 2.0, np.nan]), ["1", "2", "nan"]),
        (pd.Series([1.0, 2.0, np.nan]).astype("category"), ["1", "2", "nan"]),
        (pd.Series([1.0, "2", None], dtype=object), ["1", "2", "nan"]),
        (pd.Series([1.0, 1.5]), ["1", "1.5"]),
        (pd.Series([1e20, 3.0]), ["100000000000000000000", "3"]),
        (pd.Series(["a", "b"]), ["a", "b"]),
    ],
)
def test_batch_labels_name_whole_number_floats_as_integers(values, expected):
    from mumatch._layout import batch_labels

    mdata = mudata.MuData({"m": anndata.AnnData(np.zeros((len(values), 1)), obs=pd.DataFrame({"b": values.values}))})
    assert batch_labels(mdata, "m", "b").tolist() == expected


def test_a_plan_solved_the_other_way_round_is_written_and_drawn_for_the_reader(cite_embedded, tmp_path):
    from mumatch.datasets._neurips2021 import prediction_matrix

    mdata = cite_embedded
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", key_added="forward")
    mm.tl.match_ot(mdata, "adt", "rna", use_rep="X_shared", key_added="backward")
    mdata.write_h5mu(tmp_path / "plans.h5mu")
    mdata = mudata.read_h5mu(tmp_path / "plans.h5mu")
    forward, backward = (prediction_matrix(mdata, key, "rna", "adt") for key in ("forward", "backward"))
    assert backward.shape == forward.shape and backward.nnz > 0
    # The same problem solved from either side: the rows' argmaxes agree almost everywhere.
    agree = np.mean(forward.argmax(axis=1).A1 == backward.argmax(axis=1).A1)
    assert agree > 0.9
    assert mm.metrics.match_score(mdata, key="backward", mod1="rna", mod2="adt") > 2 / 289
    mm.pl.plan(mdata, key="backward", mod1="rna", mod2="adt", show=False)


def test_blocks_of_very_different_sizes_suggest_tau(simulated):
    mdata = simulated
    rng = np.random.default_rng(0)
    for mod, n_selected in (("rna", 20), ("atac", 200)):
        mdata[mod].obsm["X_shared"] = rng.normal(size=(mdata[mod].n_obs, 8)).astype(np.float32)
        mdata[mod].obs["chosen"] = np.arange(mdata[mod].n_obs) < n_selected
    mm.tl.match_ot(mdata, "rna", "atac", use_rep="X_shared", cells="chosen", batch_key=None)
    (note,) = [note for note in mdata.uns["match"]["notes"] if "times as many cells" in note]
    assert "'all' (20 × 200) hold at least 4 times as many cells" in note and "pass tau" in note
    mm.tl.match_ot(mdata, "rna", "atac", use_rep="X_shared", cells="chosen", batch_key=None, tau=0.5)
    assert not any("times as many cells" in note for note in mdata.uns["match"].get("notes", []))
    mdata["rna"].obs["chosen"] = np.arange(mdata["rna"].n_obs) < 60  # 60 × 200: not flagged
    mm.tl.match_ot(mdata, "rna", "atac", use_rep="X_shared", cells="chosen", batch_key=None)
    assert not any("times as many cells" in note for note in mdata.uns["match"].get("notes", []))


def test_per_modality_projections_of_equal_width_are_not_one_space(simulated):
    # lsi_harmony embeds each modality in its own basis: at equal widths nothing in the arithmetic fails, and RNA's
    # and ATAC's components compared as one space match at random.
    mm.pp.lsi_harmony(simulated, n_comps=12, harmony=False)
    before = snapshot(simulated)
    message = r"use_rep='X_lsi_harmony' holds each modality's own projection"
    with pytest.raises(ValueError, match=message):
        mm.tl.match_ot(simulated, "rna", "atac", use_rep="X_lsi_harmony")
    with pytest.raises(ValueError, match=message):
        mm.tl.match_ot(simulated, "rna", "atac", use_rep=["X_lsi_harmony"])
    with pytest.raises(ValueError, match="basis='X_lsi_harmony' holds each modality's own projection"):
        mm.pl.joint_embedding(simulated, "X_lsi_harmony", show=False)
    assert_unchanged(before, simulated)
    # Projections of one fit (lsi_harmony_transform carries the fit's identity) are one space.
    fit = simulated["rna"].uns["X_lsi_harmony"]["params"]["fit_id"]
    simulated["atac"].uns["X_lsi_harmony"]["params"]["fit_id"] = fit
    mm.tl.match_ot(simulated, "rna", "atac", use_rep="X_lsi_harmony")
    assert "match" in simulated.obsp


def test_a_trained_embedding_over_an_earlier_lsi_harmony_key_is_one_space(simulated):
    # lsi_harmony's per-modality record left in .uns[key] describes the projection a training replaced: the training's
    # own record (mdata.uns[key]['embedded'], fingerprints still matching) says the .obsm[key] are one space.
    mm.pp.lsi_harmony(simulated, n_comps=12, harmony=False, key_added="X_emb")
    mm.pp.lsi_harmony(simulated, n_comps={"rna": 12, "atac": 16}, harmony=False, key_added="X_lsi")
    mm.tl.train_clip(
        simulated, "rna", "atac", use_rep="X_lsi", key_added="X_emb", ensemble=None, max_epochs=2, progress_bar=False
    )
    assert simulated["rna"].uns["X_emb"]["params"]["fit_id"] != simulated["atac"].uns["X_emb"]["params"]["fit_id"]
    mm.tl.match_ot(simulated, "rna", "atac", use_rep="X_emb")
    assert "match" in simulated.obsp
    # Changed since the training (by hand), the embeddings are again each modality's own: refused.
    simulated["atac"].obsm["X_emb"] = simulated["atac"].obsm["X_emb"] * 2
    with pytest.raises(ValueError, match="holds each modality's own projection"):
        mm.tl.match_ot(simulated, "rna", "atac", use_rep="X_emb", key_added="again")
