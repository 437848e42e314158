import logging
import warnings

import numpy as np
import pandas as pd
import pytest

import mumatch as mm
from tests.helpers import assert_unchanged, snapshot
from tests.model.test_clip import TINY, add_pca

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="lightning")

FAST = {"max_epochs": 3, "progress_bar": False, "batch_size": 128}


@pytest.fixture(scope="module")
def _three_batches():
    mdata = mm.datasets.simulate_paired(240, ("rna", "atac"), n_batches=3, n_genes=120, n_peaks=200, seed=4)
    return add_pca(mdata)


@pytest.fixture
def three_batches(_three_batches):
    return _three_batches.copy()


def test_one_model_per_held_out_batch(three_batches):
    models = mm.tl.train_clip(
        three_batches, "rna", "atac", use_rep="X_pca", ensemble="batch", model_kwargs=TINY, **FAST
    )
    assert len(models) == 3
    held_out = sorted(model.train_info["validation"] for model in models)
    assert held_out == sorted(f"held-out batches ['{level}']" for level in ("batch0", "batch1", "batch2"))
    for mod in ("rna", "atac"):
        embedding = three_batches[mod].obsm["X_clip"]
        assert embedding.shape == (three_batches[mod].n_obs, 3 * TINY["n_latent"])
        np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)
    record = three_batches.uns["X_clip"]
    assert record["params"]["n_models"] == 3 and record["params"]["use_rep"] == {"rna": "X_pca", "atac": "X_pca"}
    # everything needed to train again: the model's and the training's options
    assert record["params"]["n_latent"] == TINY["n_latent"] and record["params"]["max_epochs"] == FAST["max_epochs"]
    assert record["params"]["n_hidden"] == {"rna": [16], "atac": [16]} and record["params"]["batch_size"] == 128


def test_ensemble_similarity_is_mean_of_members(three_batches):
    models = mm.tl.train_clip(
        three_batches, "rna", "atac", use_rep="X_pca", ensemble=2, key_added="ens", model_kwargs=TINY, **FAST
    )
    rna, atac = three_batches["rna"].obsm["ens"], three_batches["atac"].obsm["ens"]
    members = [
        model.get_latent_representation(three_batches, "rna") @ model.get_latent_representation(three_batches, "atac").T
        for model in models
    ]
    np.testing.assert_allclose(rna @ atac.T, np.mean(members, axis=0), atol=1e-5)


def test_single_model_with_one_batch(cite):
    add_pca(cite)
    models = mm.tl.train_clip(cite, "rna", "adt", use_rep="X_pca", ensemble="batch", model_kwargs=TINY, **FAST)
    assert len(models) == 1
    assert models[0].train_info["validation"] == "random 20% of paired cells"
    assert cite["adt"].obsm["X_clip"].shape == (cite["adt"].n_obs, TINY["n_latent"])


def test_bad_inputs_leave_data_unchanged(three_batches):
    before = snapshot(three_batches)
    with pytest.raises(KeyError, match="use_rep='X_lsi_harmony' not found"):
        mm.tl.train_clip(three_batches, "rna", "atac", **FAST)
    with pytest.raises(KeyError, match="mod2='adt' is not a modality"):
        mm.tl.train_clip(three_batches, "rna", "adt", use_rep="X_pca", **FAST)
    with pytest.raises(ValueError, match="must differ"):
        mm.tl.train_clip(three_batches, "rna", "rna", use_rep="X_pca", **FAST)
    with pytest.raises(ValueError, match="ensemble='fold'"):
        mm.tl.train_clip(three_batches, "rna", "atac", use_rep="X_pca", ensemble="fold", **FAST)
    with pytest.raises(FloatingPointError):
        mm.tl.train_clip(three_batches, "rna", "atac", use_rep="X_pca", ensemble=None, lr=1e30, **FAST)
    for bad in ({"random_state": -1}, {"random_state": 1.5}, {"key_added": 5}, {"key_added": ""}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            mm.tl.train_clip(three_batches, "rna", "atac", use_rep="X_pca", **bad, **FAST)
    # The embedding written over a modality's input would leave the returned models unable to embed its cells.
    with pytest.raises(ValueError, match=r"key_added='X_pca' is the input representation \(use_rep\) of \['atac'"):
        mm.tl.train_clip(three_batches, "rna", "atac", use_rep="X_pca", key_added="X_pca", **FAST)
    assert_unchanged(before, three_batches)


def test_paired_cells_without_a_batch_label_hold_out_no_member(three_batches):
    for mod in ("rna", "atac"):  # unlabelled in both modalities (a label in either one names the cell's batch)
        obs = three_batches[mod].obs
        obs["batch"] = obs["batch"].astype(object)
        obs.loc[obs["batch"] == "batch2", "batch"] = None
    models = mm.tl.train_clip(
        three_batches, "rna", "atac", use_rep="X_pca", ensemble="batch", model_kwargs=TINY, **FAST
    )
    held_out = sorted(model.train_info["validation"] for model in models)
    assert held_out == ["held-out batches ['batch0']", "held-out batches ['batch1']"]


def _relabel_paired(mdata, source, target, keep):
    """Move all but ``keep`` paired cells of batch ``source`` to batch ``target`` in both modalities."""
    shared = mdata["rna"].obs_names.intersection(mdata["atac"].obs_names)
    moved = shared[(mdata["rna"].obs.loc[shared, "batch"] == source).to_numpy()][keep:]
    for mod in ("rna", "atac"):
        obs = mdata[mod].obs
        obs["batch"] = obs["batch"].astype(object)
        obs.loc[moved, "batch"] = target
        obs["batch"] = obs["batch"].astype("category")


def test_batches_too_small_or_too_large_are_not_held_out(three_batches):
    from mumatch._layout import held_out_batches
    from mumatch._pipeline import ensemble_choice

    # 113 paired cells: batch0 43, batch1 25, batch2 45. batch1 keeps 5: too few to validate on; it trains every
    # member, and batch0 (63 cells, 56 %) and batch2 are held out.
    _relabel_paired(three_batches, "batch1", "batch0", keep=5)
    kept, reasons = held_out_batches(three_batches, "rna", "atac", "batch")
    assert sorted(kept) == ["batch0", "batch2"] and len(reasons) == 1 and "'batch1' has 5 paired cells" in reasons[0]
    models = mm.tl.train_clip(
        three_batches, "rna", "atac", use_rep="X_pca", ensemble="batch", model_kwargs=TINY, **FAST
    )
    assert sorted(model.train_info["validation"] for model in models) == [
        "held-out batches ['batch0']",
        "held-out batches ['batch2']",
    ]
    # batch2 keeps 5 too: batch0 then holds 103 of the 113 paired cells, and no batch is left to hold out. One
    # model on a random 20 % (a member trained on 10 cells, and one validated on 5, scored near random).
    _relabel_paired(three_batches, "batch2", "batch0", keep=5)
    kept, reasons = held_out_batches(three_batches, "rna", "atac", "batch")
    assert kept == [] and any("holds 103 of the 113" in reason for reason in reasons)
    models = mm.tl.train_clip(
        three_batches, "rna", "atac", use_rep="X_pca", ensemble="batch", model_kwargs=TINY, **FAST
    )
    assert len(models) == 1 and models[0].train_info["validation"] == "random 20% of paired cells"
    # CLIP's own "auto" choice and the pipeline's ensemble follow the same rule.
    assert ensemble_choice(three_batches, "rna", "atac") != "batch"


def test_too_small_validation_or_minibatch_is_refused(three_batches):
    model_setup = {"mod1": "rna", "mod2": "atac", "rep_key": "X_pca"}
    mm.model.CLIP.setup_mudata(three_batches, **model_setup)
    model = mm.model.CLIP(three_batches, **TINY)
    # A minibatch or a validation set of one cell has no negative: the contrastive loss is 0 whatever the weights.
    with pytest.raises(ValueError, match="batch_size must be an integer >= 2"):
        model.train(batch_size=1, **{k: v for k, v in FAST.items() if k != "batch_size"})
    _relabel_paired(three_batches, "batch1", "batch0", keep=1)
    with pytest.raises(ValueError, match=r"validation batches \['batch1'\] hold 1 paired cell"):
        model.train(validation="batch1", **FAST)


def test_too_few_paired_cells_for_a_random_validation(three_batches):
    # 5 paired cells: a random 20 % is one cell. "auto" then trains without validation; an explicit fraction is refused.
    keep = three_batches["rna"].obs_names.intersection(three_batches["atac"].obs_names)[5:]
    atac = three_batches["atac"].obs_names
    three_batches.mod["atac"] = three_batches["atac"][~atac.isin(keep)].copy()
    three_batches.update()
    mm.model.CLIP.setup_mudata(three_batches, mod1="rna", mod2="atac", rep_key="X_pca", batch_key=None)
    model = mm.model.CLIP(three_batches, **TINY)
    model.train(**FAST)
    assert model.train_info["validation"] == "none (too few paired cells)"
    with pytest.raises(ValueError, match="holds out 1 of 5 paired cells"):
        model.train(validation=0.2, **FAST)


def test_repeated_cell_names_refused_before_the_ensemble_pairs_cells(three_batches):
    names = three_batches["rna"].obs_names.tolist()
    names[1] = names[0]
    three_batches["rna"].obs_names = names
    with pytest.raises(ValueError, match=r"mdata\['rna'\].obs_names repeats names"):
        mm.tl.train_clip(three_batches, "rna", "atac", use_rep="X_pca", ensemble="batch", **FAST)


def test_many_batches_are_held_out_in_ten_balanced_groups():
    from mumatch._layout import paired_batch_labels
    from mumatch.tl._train import MAX_BATCH_MEMBERS, _ensemble_members, batch_groups

    # 13 batches of ~60 paired cells each: 13 models one by one; ten groups of batches instead.
    mdata = mm.datasets.simulate_paired(1600, ("rna", "atac"), n_batches=13, n_genes=20, n_peaks=40, seed=2)
    members = _ensemble_members(mdata, "rna", "atac", "batch", "batch")
    assert len(members) == MAX_BATCH_MEMBERS
    held_out = [level for member in members for level in member["validation"]]
    assert sorted(held_out) == sorted(f"batch{i}" for i in range(13))  # each batch held out by exactly one model
    labels = pd.Series(paired_batch_labels(mdata, "rna", "atac", "batch"))
    sizes = [int(labels.isin(member["validation"]).sum()) for member in members]
    assert max(sizes) <= 2 * labels.value_counts().max()  # no group is more than two batches' worth
    # Ten batches or fewer: one model per batch, as before.
    assert batch_groups({"a": 5, "b": 4, "c": 3}, 10) == [["a"], ["b"], ["c"]]
    assert batch_groups({"a": 9, "b": 5, "c": 3, "d": 1}, 2) == [["a"], ["b", "c", "d"]]
    assert batch_groups({"a": 9, "b": 5, "c": 4, "d": 1}, 2) == [["a", "d"], ["b", "c"]]  # ties: the earlier group


def test_key_added_may_name_the_input_of_a_modality_not_trained(three_batches):
    # One use_rep dict for every modality, a pair trained at a time: only the trained pair's inputs are replaced.
    use_rep = {"rna": "X_pca", "atac": "X_pca", "adt": "X_joint"}
    mm.tl.train_clip(three_batches, "rna", "atac", use_rep=use_rep, key_added="X_joint", ensemble=None, **FAST)
    assert "X_joint" in three_batches["rna"].obsm


@pytest.mark.parametrize(
    ("model_kwargs", "message"),
    [
        ({"random_state": 3}, r"model_kwargs.*random_state.*train_clip\(random_state="),
        ({"lr": 0.1}, r"model_kwargs.*'lr'"),
    ],
)
def test_model_kwargs_that_are_not_model_arguments_are_refused(three_batches, model_kwargs, message):
    before = snapshot(three_batches)
    with pytest.raises(ValueError, match=message):
        mm.tl.train_clip(three_batches, use_rep="X_pca", model_kwargs={**TINY, **model_kwargs}, **FAST)
    assert_unchanged(before, three_batches)


def test_representation_without_columns_is_refused_by_train_clip(three_batches):
    for mod in ("rna", "atac"):
        three_batches[mod].obsm["X_empty"] = np.zeros((three_batches[mod].n_obs, 0), dtype=np.float32)
    before = snapshot(three_batches)
    with pytest.raises(ValueError, match=r"X_empty.*no columns"):
        mm.tl.train_clip(three_batches, use_rep="X_empty", model_kwargs=TINY, **FAST)
    assert_unchanged(before, three_batches)


def test_a_failure_while_embedding_leaves_the_mudata_as_it_was(three_batches, monkeypatch):
    before = snapshot(three_batches)

    def fail(*args, **kwargs):
        raise RuntimeError("embedding failed")

    monkeypatch.setattr(mm.model.CLIP, "get_latent_representation", fail)
    with pytest.raises(RuntimeError, match="embedding failed"):
        mm.tl.train_clip(three_batches, "rna", "atac", use_rep="X_pca", model_kwargs=TINY, **FAST)
    assert_unchanged(before, three_batches)
    assert "_mumatch_setup" not in three_batches.uns
