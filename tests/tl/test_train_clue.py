from __future__ import annotations

import mudata
import numpy as np
import pytest
import torch

import mumatch as mm
from mumatch.model._base import SETUP_KEY
from tests.helpers import assert_unchanged, snapshot
from tests.model.test_clue import QUICK, TINY, add_pca


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small():
    return add_pca(mm.datasets.simulate_paired(200, ("rna", "adt"), n_genes=50, n_proteins=12, seed=7))


def test_train_clue_writes_embeddings_and_params(small):
    model = mm.tl.train_clue(small, use_rep="X_pca", model_kwargs=TINY, key_added="emb", **QUICK)
    assert isinstance(model, mm.model.CLUE) and model.is_trained
    for mod in ("rna", "adt"):
        assert small[mod].obsm["emb"].shape == (small[mod].n_obs, 2 * TINY["n_latent"])
        # The model's default embedding is the one train_clue writes.
        np.testing.assert_array_equal(small[mod].obsm["emb"], model.get_latent_representation(modality=mod))
    params = small.uns["emb"]["params"]
    assert params["normalize_subspaces"] is True
    assert params["use_rep"] == "X_pca" and params["max_epochs"] == QUICK["max_epochs"]
    assert params["likelihood"] == {"rna": "nb", "adt": "nb"} and params["n_latent"] == TINY["n_latent"]
    assert small.uns["emb"]["train_info"]["epochs"] == QUICK["max_epochs"]


def test_train_clue_errors_leave_mudata_unchanged(small):
    before = snapshot(small)
    with pytest.raises(KeyError, match="X_lsi_harmony"):
        mm.tl.train_clue(small)
    with pytest.raises(KeyError, match="not a modality"):
        mm.tl.train_clue(small, ["rna", "protein"], use_rep="X_pca")
    with pytest.raises(ValueError, match="at least two modalities"):
        mm.tl.train_clue(small, ["rna"], use_rep="X_pca")
    with pytest.raises(KeyError, match="layer='raw'"):
        mm.tl.train_clue(small, use_rep="X_pca", layer="raw")
    with pytest.raises(ValueError, match="lr must be"):
        mm.tl.train_clue(small, use_rep="X_pca", model_kwargs=TINY, lr=-1.0)
    with pytest.raises(ValueError, match="monitor must be 'loss' or 'matching'"):
        mm.tl.train_clue(small, use_rep="X_pca", model_kwargs=TINY, monitor="foscttm")
    with pytest.raises(KeyError, match="use_rep='X_missing'"):
        mm.tl.train_clue(small, use_rep="X_missing")
    first, second = list(small.mod)[:2]
    with pytest.raises(KeyError, match=f"use_rep names no representation for '{second}'"):
        mm.tl.train_clue(small, use_rep={first: "X_pca"})
    with pytest.raises(TypeError, match="train_clue has no copy argument"):
        mm.tl.train_clue(small, use_rep="X_pca", model_kwargs=TINY, copy=True)
    with pytest.raises(ValueError, match=r"model_kwargs sets \[.random_state.\], which train_clue sets itself"):
        mm.tl.train_clue(small, use_rep="X_pca", model_kwargs={**TINY, "random_state": 1})
    assert_unchanged(before, small)
    assert SETUP_KEY not in small.uns


def test_numpy_integer_seeds_and_sizes_are_recorded_as_numbers(small):
    # for seed in np.arange(3): ... is how seeds are looped over; the model records them for save/load as JSON.
    model = mm.tl.train_clue(
        small, use_rep="X_pca", model_kwargs={**TINY, "n_latent": np.int64(3)}, random_state=np.int64(2), **QUICK
    )
    assert model.init_params["random_state"] == 2 and type(model.init_params["random_state"]) is int
    assert model.init_params["n_latent"] == 3 and small["rna"].obsm["X_clue"].shape[1] == 2 * 3


def test_train_clue_ensemble_averages_cosine_similarities(small):
    models = mm.tl.train_clue(small, use_rep="X_pca", model_kwargs=TINY, ensemble=2, random_state=3, **QUICK)
    assert isinstance(models, list) and len(models) == 2
    assert [model.init_params["random_state"] for model in models] == [3, 4]
    members = [
        tuple(model.get_latent_representation(modality=mod, normalize_subspaces=True) for mod in ("rna", "adt"))
        for model in models
    ]
    rna, adt = small["rna"].obsm["X_clue"], small["adt"].obsm["X_clue"]
    assert rna.shape == (small["rna"].n_obs, 2 * 2 * TINY["n_latent"]) and rna.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rna, axis=1), 1.0, rtol=1e-5)

    def cosine(x, y):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (y / np.linalg.norm(y, axis=1, keepdims=True)).T

    expected = np.mean([cosine(x, y) for x, y in members], axis=0)
    np.testing.assert_allclose(rna @ adt.T, expected, atol=1e-5)
    info = small.uns["X_clue"]
    assert info["params"]["ensemble"] == 2 and set(info["models"]) == {"0", "1"}
    assert all(member["train_s"] > 0 for member in info["models"].values())


def test_subspaces_weigh_the_same_in_the_cosine(small):
    model = mm.tl.train_clue(
        small, use_rep="X_pca", model_kwargs=TINY, normalize_subspaces=False, reduce_lr_patience=None, **QUICK
    )
    assert small.uns["X_clue"]["params"]["reduce_lr_patience"] == "none"
    raw = {mod: model.get_latent_representation(modality=mod, normalize_subspaces=False) for mod in ("rna", "adt")}
    np.testing.assert_array_equal(small["rna"].obsm["X_clue"], raw["rna"])
    assert small.uns["X_clue"]["params"]["normalize_subspaces"] is False
    balanced = {mod: model.get_latent_representation(modality=mod) for mod in raw}
    d = TINY["n_latent"]

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    for mod in raw:
        for k in range(2):  # each subspace keeps its direction, with norm 1/sqrt(K)
            np.testing.assert_allclose(
                balanced[mod][:, k * d : (k + 1) * d], unit(raw[mod][:, k * d : (k + 1) * d]) / np.sqrt(2), atol=1e-6
            )
    subspace_cosines = [
        unit(raw["rna"][:, k * d : (k + 1) * d]) @ unit(raw["adt"][:, k * d : (k + 1) * d]).T for k in range(2)
    ]
    np.testing.assert_allclose(balanced["rna"] @ balanced["adt"].T, np.mean(subspace_cosines, axis=0), atol=1e-5)


def test_train_clue_bad_normalize_subspaces_leaves_mudata_unchanged(small):
    before = snapshot(small)
    with pytest.raises(ValueError, match="normalize_subspaces must be True or False"):
        mm.tl.train_clue(small, use_rep="X_pca", model_kwargs=TINY, normalize_subspaces="yes", **QUICK)
    assert_unchanged(before, small)
    assert SETUP_KEY not in small.uns


def test_train_clue_bad_ensemble_leaves_mudata_unchanged(small):
    before = snapshot(small)
    with pytest.raises(ValueError, match="ensemble must be an integer >= 1"):
        mm.tl.train_clue(small, use_rep="X_pca", model_kwargs=TINY, ensemble=0, **QUICK)
    assert_unchanged(before, small)
    assert SETUP_KEY not in small.uns


def test_match_ot_ensemble_of_two_embeddings(small):
    # The acceptance's ensemble option: match_ot averages the cosine similarities of several representations.
    mm.tl.train_clue(small, use_rep="X_pca", model_kwargs=TINY, key_added="clue_a", random_state=0, **QUICK)
    mm.tl.train_clue(small, use_rep="X_pca", model_kwargs=TINY, key_added="clue_b", random_state=1, **QUICK)
    mm.tl.match_ot(small, "rna", "adt", use_rep=["clue_a", "clue_b"], batch_key=None, key_added="plan")
    rows = small.obs_names.get_indexer(small["rna"].obs_names[small["rna"].obs["split"] == "test"])
    row_sums = np.asarray(small.obsp["plan"][rows].sum(axis=1)).ravel()
    np.testing.assert_allclose(row_sums, 1.0, rtol=1e-3)
    assert list(small.uns["plan"]["params"]["use_rep"]["rna"]) == ["clue_a", "clue_b"]


def test_counts_in_the_backed_x_of_a_read_mudata_are_read_from_disk(small, tmp_path):
    # mudata.read_h5mu(backed=True) leaves .X on disk; lsi_harmony reads it, and so must CLUE's count decoders.
    for adata in small.mod.values():
        del adata.layers["counts"]
    small.write_h5mu(tmp_path / "counts.h5mu")
    backed = mudata.read_h5mu(tmp_path / "counts.h5mu", backed=True)
    in_memory = mudata.read_h5mu(tmp_path / "counts.h5mu")
    for data in (backed, in_memory):
        mm.tl.train_clue(data, use_rep="X_pca", layer=None, model_kwargs=TINY, **QUICK)
    for mod in ("rna", "adt"):
        np.testing.assert_array_equal(backed[mod].obsm["X_clue"], in_memory[mod].obsm["X_clue"])


def test_numpy_numbers_as_training_options_train_and_are_recorded(small):
    # for max_epochs in np.arange(...): Lightning asserts a Python int, and .uns records the options as numbers.
    mm.tl.train_clue(
        small, use_rep="X_pca", model_kwargs=TINY, max_epochs=np.int64(2), lr=np.float32(1e-3), batch_size=64
    )
    params = small.uns["X_clue"]["params"]
    assert small.uns["X_clue"]["train_info"]["epochs"] == 2
    assert params["max_epochs"] == 2 and params["lr"] == pytest.approx(1e-3)


def test_key_added_naming_the_input_representation_is_refused(small):
    # Writing the embedding over use_rep would leave the returned model unable to embed its own training cells.
    before = snapshot(small)
    with pytest.raises(ValueError, match=r"key_added='X_pca' is the input representation \(use_rep\)"):
        mm.tl.train_clue(small, use_rep="X_pca", key_added="X_pca", model_kwargs=TINY, **QUICK)
    assert_unchanged(before, small)
    np.testing.assert_array_equal(small["rna"].obsm["X_pca"].shape, (small["rna"].n_obs, 8))
