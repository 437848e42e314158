"""Three modalities of the same cells: each pair trained, matched and scored between its own modalities."""

from __future__ import annotations

import numpy as np
import pytest

import mumatch as mm
from tests.model.test_clip import TINY, add_pca

FAST = {"max_epochs": 2, "progress_bar": False, "ensemble": None}


@pytest.fixture
def trio():
    mdata = mm.datasets.simulate_paired(300, ("rna", "atac", "adt"), n_genes=40, n_peaks=80, n_proteins=10, seed=5)
    return add_pca(mdata)


def test_a_key_reused_for_another_pair_is_not_compared_across_spaces(trio, monkeypatch):
    from scanpy import logging as logg

    messages = []
    monkeypatch.setattr(logg, "warning", lambda message, *args, **kwargs: messages.append(message))
    mm.tl.train_clip(trio, "rna", "adt", use_rep="X_pca", model_kwargs=TINY, **FAST)
    first = trio["rna"].obsm["X_clip"].copy()
    mm.tl.train_clip(trio, "atac", "adt", use_rep="X_pca", model_kwargs=TINY, **FAST)
    # rna keeps the first model's embedding, adt now holds the second's: same width, different spaces.
    np.testing.assert_array_equal(trio["rna"].obsm["X_clip"], first)
    assert any("['rna'] keep(s) the .obsm['X_clip'] of an earlier training" in message for message in messages)
    with pytest.raises(ValueError, match=r"use_rep='X_clip': .*on \['atac', 'adt'\].*of \['rna'\] comes from an"):
        mm.tl.match_ot(trio, "rna", "adt", use_rep="X_clip")
    with pytest.raises(ValueError, match="key='X_clip'"):
        mm.metrics.foscttm(trio, key="X_clip", mod1="rna", mod2="adt")
    # The trained pair itself still matches, is scored between its own modalities and is plotted alone.
    mm.tl.match_ot(trio, "atac", "adt", use_rep="X_clip", key_added="match_atac_adt")
    assert 0 <= mm.metrics.match_score(trio, key="match_atac_adt") <= 1
    assert 0 <= mm.metrics.foscttm(trio, key="X_clip") <= 1  # the pair train_clip recorded, not rna/atac
    monkeypatch.setattr("scanpy.pp.neighbors", lambda *args, **kwargs: None)
    monkeypatch.setattr("scanpy.tl.umap", lambda adata, **kwargs: adata.obsm.__setitem__("X_umap", adata.X[:, :2]))
    mm.pl.joint_embedding(trio, "X_clip", color="modality", show=False)
    assert trio.uns["X_clip_umap"]["params"]["mods"] == ["atac", "adt"]
    with pytest.raises(ValueError, match="basis='X_clip'"):
        mm.pl.joint_embedding(trio, "X_clip", mods=["rna", "adt"], show=False)


def test_metrics_score_a_plan_between_its_own_modalities(trio):
    rng = np.random.default_rng(0)
    for mod in trio.mod:
        trio[mod].obsm["X_shared"] = rng.normal(size=(trio[mod].n_obs, 6)).astype(np.float32)
    mm.tl.match_ot(trio, "rna", "adt", use_rep="X_shared", key_added="m")
    # No reader's record, and the first two modalities are rna and atac: the plan's own pair is scored.
    explicit = mm.metrics.match_score(trio, key="m", mod1="rna", mod2="adt")
    assert mm.metrics.match_score(trio, key="m") == explicit
    assert mm.metrics.top_k_accuracy(trio, key="m", k=5) == mm.metrics.top_k_accuracy(
        trio, key="m", k=5, mod1="rna", mod2="adt"
    )
    # Without a reader's task, a plan is scored in the direction it was solved in, not in mdata.mod's order.
    mm.tl.match_ot(trio, "atac", "rna", use_rep="X_shared", key_added="m2")
    assert mm.metrics.match_score(trio, key="m2") == mm.metrics.match_score(trio, key="m2", mod1="atac", mod2="rna")
    assert mm.metrics.match_score(trio, key="m2") != mm.metrics.match_score(trio, key="m2", mod1="rna", mod2="atac")


def test_lightnings_progress_bar_switch_is_progress_bar(trio):
    (model,) = mm.tl.train_clip(
        trio, "rna", "adt", use_rep="X_pca", model_kwargs=TINY, max_epochs=1, ensemble=None, enable_progress_bar=False
    )
    assert model.is_trained


def test_the_record_speaks_only_for_the_embeddings_it_fingerprinted(trio, tmp_path):
    import mudata

    from tests.model.test_clue import QUICK
    from tests.model.test_clue import TINY as CLUE_TINY

    mm.tl.train_clip(trio, "rna", "atac", use_rep="X_pca", model_kwargs=TINY, **FAST)
    # The record survives a file round trip, and still refuses the modality the training did not embed.
    mudata.write_h5mu(tmp_path / "trio.h5mu", trio)
    back = mudata.read_h5mu(tmp_path / "trio.h5mu")
    back["adt"].obsm["X_clip"] = np.zeros((back["adt"].n_obs, back["rna"].obsm["X_clip"].shape[1]), np.float32)
    with pytest.raises(ValueError, match=r"of \['adt'\] comes from an earlier model"):
        mm.tl.match_ot(back, "rna", "adt", use_rep="X_clip")
    # A model used directly rewrites rna and adt: the record no longer describes rna's embedding, so it says nothing.
    mm.model.CLIP.setup_mudata(back, "rna", "adt", rep_key="X_pca")
    model = mm.model.CLIP(back, **TINY)
    model.train(max_epochs=1, progress_bar=False)
    for mod in ("rna", "adt"):
        back[mod].obsm["X_clip"] = model.get_latent_representation(back, mod)
    mm.tl.match_ot(back, "rna", "adt", use_rep="X_clip")
    # A plan's record is no embedding's: an .obsm key of the same name is the user's.
    for mod in trio.mod:
        trio[mod].obsm["match"] = np.random.default_rng(0).normal(size=(trio[mod].n_obs, 4)).astype(np.float32)
    mm.tl.match_ot(trio, "atac", "adt", use_rep="match", key_added="match")
    mm.tl.match_ot(trio, "rna", "atac", use_rep="match", key_added="match_2")
    # A modality without the key is a missing key, and a CLUE pair is scored between its own modalities by default.
    mm.tl.train_clue(trio, ["atac", "adt"], use_rep="X_pca", model_kwargs=CLUE_TINY, **QUICK)
    with pytest.raises(KeyError, match="not found in mdata\\['rna'\\].obsm"):
        mm.metrics.foscttm(trio, key="X_clue", mod1="rna", mod2="adt")
    assert mm.metrics.foscttm(trio, key="X_clue") == mm.metrics.foscttm(trio, key="X_clue", mod1="atac", mod2="adt")


def test_a_plan_replaced_by_another_pair_takes_its_certainty_columns_along(trio, monkeypatch):
    from scanpy import logging as logg

    messages = []
    monkeypatch.setattr(logg, "warning", lambda message, *args, **kwargs: messages.append(message))
    rng = np.random.default_rng(0)
    for mod in trio.mod:
        trio[mod].obsm["X_shared"] = rng.normal(size=(trio[mod].n_obs, 6)).astype(np.float32)
    mm.tl.match_ot(trio, "rna", "atac", use_rep="X_shared", cells="all")
    assert "match_confidence" in trio["atac"].obs
    copied = mm.tl.match_ot(trio, "rna", "adt", use_rep="X_shared", cells="all", copy=True)
    assert "match_confidence" in trio["atac"].obs  # the caller's object is untouched by a copy
    for mdata in (copied, trio):
        if mdata is trio:
            mm.tl.match_ot(trio, "rna", "adt", use_rep="X_shared", cells="all")
        # atac's columns described the replaced plan; rna's and adt's describe the new one
        assert not {"match_confidence", "match_entropy"} & set(mdata["atac"].obs)
        assert mdata["adt"].obs["match_confidence"].notna().all()
    assert any("removing mdata['atac'].obs" in message for message in messages)


def test_unpaired_cells_are_those_measured_in_one_modality_only():
    # A TEA-seq panel that lost an assay for some cells: cells measured in RNA+ADT or ATAC+ADT are paired (training)
    # cells, with no partner to find among the ATAC or RNA test cells.
    pairing = {"rna+atac+adt": 0.5, "rna+adt": 0.25, "atac+adt": 0.25}
    trio = mm.datasets.simulate_paired(
        300, ("rna", "atac", "adt"), n_genes=20, n_peaks=20, n_proteins=5, pairing=pairing, seed=1
    )
    rng = np.random.default_rng(0)
    for mod in trio.mod:
        trio[mod].obsm["X_shared"] = rng.normal(size=(trio[mod].n_obs, 4)).astype(np.float32)
    mm.tl.match_ot(trio, "rna", "atac", use_rep="X_shared", batch_key=None)
    rows, cols = trio.obsp["match"].nonzero()
    for mod, positions in (("rna", rows), ("atac", cols)):
        matched = trio.obs_names[np.unique(positions)]
        test = trio[mod].obs_names[(trio[mod].obs["split"] == "test").to_numpy()]
        assert set(matched) == set(test)
    # Every cell of 'rna' is measured in another modality: the message names the other modalities.
    both = trio["rna"].obs_names.intersection(trio["adt"].obs_names)
    with pytest.raises(ValueError, match=r"every cell of 'rna' is also measured in another of \['atac', 'adt'\]"):
        mm.tl.match_ot(trio[both].copy(), "rna", "adt", use_rep="X_shared")


def test_metrics_refuse_one_modality_for_both_sides(trio):
    rng = np.random.default_rng(0)
    for mod in trio.mod:
        trio[mod].obsm["X_shared"] = rng.normal(size=(trio[mod].n_obs, 4)).astype(np.float32)
    mm.tl.match_ot(trio, "atac", "adt", use_rep="X_shared", key_added="m")
    # mod1 given alone takes the default mod2 ('atac', the second modality): said so, not "the truth pairs no cell".
    for call in (
        lambda: mm.metrics.match_score(trio, key="m", mod1="atac"),
        lambda: mm.metrics.top_k_accuracy(trio, key="m", mod1="atac"),
        lambda: mm.metrics.foscttm(trio, key="m", mod1="atac"),
    ):
        with pytest.raises(ValueError, match=r"mod1 and mod2 are both 'atac' \(mod2 by default\).*pass both mod1="):
            call()
    with pytest.raises(ValueError, match="mod1 and mod2 are both 'rna'; "):
        mm.metrics.foscttm(trio, key="X_shared", mod1="rna", mod2="rna")
