from __future__ import annotations

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
        np.testing.assert_array_equal(small[mod].obsm["emb"], model.get_latent_representation(modality=mod))
    params = small.uns["emb"]["params"]
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
    assert_unchanged(before, small)
    assert SETUP_KEY not in small.uns
