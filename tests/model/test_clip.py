import json
import logging
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from mudata import MuData

import mumatch as mm
from mumatch._layout import paired_positions
from tests.helpers import assert_global_random_state_kept, assert_unchanged, snapshot

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", module="lightning")

FAST = {"max_epochs": 4, "progress_bar": False, "batch_size": 128}
TINY = {"n_latent": 8, "n_hidden": 16, "n_layers": 1}


def add_pca(mdata, key="X_pca", n_comps=12):
    """PCA of log-normalised counts per modality (a stand-in for lsi_harmony in these tests)."""
    for adata in mdata.mod.values():
        counts = sp.csr_matrix(adata.layers["counts"], dtype=np.float64)
        totals = np.maximum(np.asarray(counts.sum(axis=1)).ravel(), 1.0)
        logged = np.log1p(sp.diags(1e4 / totals) @ counts).toarray()
        logged -= logged.mean(axis=0)
        left, singular, _ = np.linalg.svd(logged, full_matrices=False)
        adata.obsm[key] = (left[:, :n_comps] * singular[:n_comps]).astype(np.float32)
    return mdata


@pytest.fixture(scope="module")
def _small():
    mdata = mm.datasets.simulate_paired(240, ("rna", "atac"), n_batches=2, n_genes=120, n_peaks=200, seed=3)
    return add_pca(mdata)


@pytest.fixture
def small(_small):
    return _small.copy()


def make_model(mdata, **kwargs):
    mm.model.CLIP.setup_mudata(mdata, mod1="rna", mod2="atac", rep_key="X_pca")
    return mm.model.CLIP(mdata, **{**TINY, **kwargs})


def test_train_embeds_every_cell_with_unit_norm(small):
    model = make_model(small)
    assert not model.is_trained
    model.train(**FAST)
    assert model.is_trained
    for mod in ("rna", "atac"):
        latent = model.get_latent_representation(small, mod)
        assert latent.shape == (small[mod].n_obs, 8)
        assert latent.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(latent, axis=1), 1.0, rtol=1e-5)
    assert set(model.history) >= {"train_loss", "validation_loss"}
    assert len(model.history["train_loss"]) == model.train_info["epochs"]
    assert "trained" in repr(model) and "X_pca" in repr(model)


def test_init_and_train_leave_the_callers_global_random_generators_alone(small):
    # Seeding the global generators and leaving them so gave the caller the same "random" numbers after each training.
    assert_global_random_state_kept(lambda: make_model(small).train(**{**FAST, "max_epochs": 1}))


def test_validation_auto_holds_out_first_batch(small):
    model = make_model(small)
    model.train(**FAST)
    assert model.train_info["validation"].startswith("held-out batches")
    model.train(validation=0.25, **FAST)
    assert model.train_info["validation"] == "random 25% of paired cells"
    model.train(validation=np.float32(0.25), **FAST)
    assert model.train_info["validation"] == "random 25% of paired cells"
    with pytest.raises(ValueError, match="hold no paired cell"):
        model.train(validation="no-such-batch", **FAST)
    with pytest.raises(ValueError, match="validation=True"):
        model.train(validation=True, **FAST)


def test_validation_names_an_integer_batch(small):
    small["rna"].obs["batch"] = small["rna"].obs["batch"].map({"batch0": 0, "batch1": 1}).astype(int)
    model = make_model(small)
    model.train(validation=1, **FAST)
    assert model.train_info["validation"] == "held-out batches ['1']"
    model.train(validation=small["rna"].obs["batch"].unique()[:1], **FAST)  # any iterable of names
    assert model.train_info["validation"] == "held-out batches ['0']"


def test_auto_validation_ignores_unlabelled_paired_cells(small):
    # One labelled batch and unlabelled paired cells: no batch to hold out, so a random fraction (the unlabelled
    # cells are no batch, and holding out the one real batch would train on the few unlabelled cells alone).
    obs = small["rna"].obs
    obs["batch"] = obs["batch"].astype(object)
    obs.loc[obs["batch"] == "batch1", "batch"] = None
    del small["atac"].obs["batch"]
    model = make_model(small)
    model.train(**FAST)
    assert model.train_info["validation"] == "random 20% of paired cells"


def test_batches_of_the_second_modality_serve_the_paired_cells(small):
    del small["rna"].obs["batch"]  # the batch lives in mod2 only
    model = make_model(small)
    model.train(**FAST)
    assert model.train_info["validation"] == "held-out batches ['batch0']"


def test_history_records_validation_only_on_epochs_that_validated(small):
    model = make_model(small)
    model.train(max_epochs=6, progress_bar=False, batch_size=128, early_stopping=False, check_val_every_n_epoch=3)
    assert list(model.history["validation_loss"].index) == [2, 5]
    assert list(model.history["train_loss"].index) == list(range(6))


def test_repeated_obs_names_raise_at_setup(small):
    names = list(small["atac"].obs_names)
    names[1] = names[0]
    small["atac"].obs_names = names
    with pytest.raises(ValueError, match="repeats names"):
        mm.model.CLIP.setup_mudata(small, mod1="rna", mod2="atac", rep_key="X_pca")
    assert "_mumatch_setup" not in small.uns


def test_training_aligns_paired_cells(small):
    model = make_model(small)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.train(max_epochs=30, progress_bar=False, early_stopping=False, validation=None, lr=1e-2)
    # No validation is a choice: Lightning's hint about a missing validation loader is not passed on.
    assert not [w for w in caught if "val_dataloader" in str(w.message)]
    positions = paired_positions(small, "rna", "atac")
    z1 = model.get_latent_representation(small, "rna")[positions[0]]
    z2 = model.get_latent_representation(small, "atac")[positions[1]]
    assert mm.metrics.foscttm(z1, z2) < 0.2  # 0.5 is random


def test_same_seed_same_embedding(small):
    latents = []
    for _ in range(2):
        model = make_model(small, random_state=7)
        model.train(random_state=7, **FAST)
        latents.append(model.get_latent_representation(small, "atac"))
    np.testing.assert_array_equal(latents[0], latents[1])
    other = make_model(small, random_state=8)
    other.train(random_state=8, **FAST)
    assert not np.array_equal(latents[0], other.get_latent_representation(small, "atac"))


def test_save_load_round_trip(small, tmp_path):
    model = make_model(small)
    model.train(**FAST)
    model.save(tmp_path / "clip")
    metadata = json.loads((tmp_path / "clip" / "model.json").read_text())
    assert metadata["class"] == "CLIP" and metadata["setup_args"]["mods"] == ["rna", "atac"]
    torch.load(tmp_path / "clip" / "model.pt", weights_only=True)  # a plain state_dict, no pickled objects
    with pytest.raises(FileExistsError):
        model.save(tmp_path / "clip")
    loaded = mm.model.CLIP.load(tmp_path / "clip", small.copy())
    assert loaded.is_trained
    for mod in ("rna", "atac"):
        np.testing.assert_array_equal(
            loaded.get_latent_representation(small, mod), model.get_latent_representation(small, mod)
        )
    assert loaded.history["train_loss"].equals(model.history["train_loss"])
    assert loaded.train_info == model.train_info and loaded.train_info["epochs"] == FAST["max_epochs"]


@pytest.mark.parametrize("precision", ["64-true", "bf16-true"])
def test_a_model_trained_in_another_precision_embeds(small, precision):
    # The Trainer leaves the weights in its precision: the inputs must follow them.
    model = make_model(small)
    model.train(**{**FAST, "max_epochs": 1}, precision=precision)
    assert next(model.module.parameters()).dtype != torch.float32
    latent = model.get_latent_representation(small, "rna")
    assert latent.dtype == np.float32 and latent.shape == (small["rna"].n_obs, TINY["n_latent"])
    np.testing.assert_allclose(np.linalg.norm(latent, axis=1), 1.0, rtol=1e-2)


def test_a_model_trained_in_float64_loads_in_float64(small, tmp_path):
    model = make_model(small)
    model.train(**{**FAST, "max_epochs": 1}, precision="64-true")
    model.save(tmp_path / "clip")
    loaded = mm.model.CLIP.load(tmp_path / "clip", small.copy())
    assert next(loaded.module.parameters()).dtype == torch.float64
    np.testing.assert_array_equal(
        loaded.get_latent_representation(small, "rna"), model.get_latent_representation(small, "rna")
    )


def test_weights_saved_from_a_gpu_load_on_the_cpu(small, tmp_path, monkeypatch):
    model = make_model(small)
    model.train(**FAST)
    expected = model.get_latent_representation(small, "rna")
    with monkeypatch.context() as patched:
        # Every tensor recorded as a CUDA one, as torch.save writes the state_dict of a module on a GPU.
        patched.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        model.save(tmp_path / "clip")
    loaded = mm.model.CLIP.load(tmp_path / "clip", small.copy())
    np.testing.assert_array_equal(loaded.get_latent_representation(small, "rna"), expected)


def test_query_mudata_is_embedded(small):
    model = make_model(small)
    model.train(**FAST)
    query = small[:, :].copy()
    query.mod["rna"] = small["rna"][:10].copy()
    latent = model.get_latent_representation(query, "rna")
    np.testing.assert_allclose(latent, model.get_latent_representation(small, "rna")[:10], rtol=1e-6)


def test_load_onto_other_rep_width_raises(small, tmp_path):
    model = make_model(small)
    model.save(tmp_path / "clip")
    other = add_pca(small.copy(), n_comps=6)
    before = snapshot(other)
    with pytest.raises(ValueError, match="has 6 columns but the model was built for 12"):
        mm.model.CLIP.load(tmp_path / "clip", other)
    assert_unchanged(before, other)
    with pytest.raises(ValueError, match="columns"):
        model.get_latent_representation(other, "rna")


def test_load_onto_renamed_modalities_names_the_training_ones(small, tmp_path):
    model = make_model(small)
    model.save(tmp_path / "clip")
    renamed = MuData({"gex": small["rna"].copy(), "peaks": small["atac"].copy()})
    before = snapshot(renamed)
    with pytest.raises(KeyError, match=r"trained on modalities \['rna', 'atac'\]; mdata has none of them"):
        mm.model.CLIP.load(tmp_path / "clip", renamed)
    assert_unchanged(before, renamed)


def test_load_onto_one_modality_embeds_its_cells_and_refuses_to_train(small, tmp_path):
    model = make_model(small)
    model.save(tmp_path / "clip")
    # New RNA cells alone, projected with the training data's fit: embedded as with both modalities.
    rna_only = MuData({"rna": small["rna"].copy()})
    loaded = mm.model.CLIP.load(tmp_path / "clip", rna_only)
    np.testing.assert_array_equal(
        loaded.get_latent_representation(rna_only, "rna"), model.get_latent_representation(small, "rna")
    )
    assert loaded.init_params == model.init_params
    with pytest.raises(KeyError, match="has no modality 'atac'"):
        loaded.get_latent_representation(rna_only, "atac")
    before = snapshot(rna_only)
    with pytest.raises(ValueError, match=r"loaded onto data without \['atac'\].*CLIP.load"):
        loaded.train(max_epochs=1)
    assert_unchanged(before, rna_only)


def test_load_keeps_a_batch_key_of_mdata_obs(small, tmp_path):
    # muon users keep sample-level columns in mdata.obs only: the loaded model must still see the batches.
    for mod in ("rna", "atac"):
        small.mod[mod].obs = small[mod].obs.rename(columns={"batch": "sample"})
    small.update()
    samples = {}
    for mod in ("rna", "atac"):
        samples.update(small[mod].obs["sample"].astype(str).to_dict())
        del small.mod[mod].obs["sample"]
    small.obs["sample"] = small.obs_names.map(samples)
    mm.model.CLIP.setup_mudata(small, mod1="rna", mod2="atac", rep_key="X_pca", batch_key="sample")
    model = mm.model.CLIP(small, **TINY)
    model.save(tmp_path / "clip")
    mm.model.CLIP.load(tmp_path / "clip", small)
    assert json.loads(small.uns["_mumatch_setup"]["CLIP"])["batch_key"] == "sample"


def test_no_paired_cells_raises(small):
    atac = small["atac"].copy()
    atac.obs_names = [f"atac-only-{i}" for i in range(atac.n_obs)]
    small = MuData({"rna": small["rna"].copy(), "atac": atac})
    before = snapshot(small)
    with pytest.raises(ValueError, match="shares an obs name"):
        mm.model.CLIP.setup_mudata(small, mod1="rna", mod2="atac", rep_key="X_pca")
    assert_unchanged(before, small)


def test_missing_rep_and_bad_modalities_raise(small):
    del small["atac"].obsm["X_pca"]
    before = snapshot(small)
    with pytest.raises(KeyError, match="'X_pca' not found in mdata\\['atac'\\].obsm"):
        mm.model.CLIP.setup_mudata(small, mod1="rna", mod2="atac", rep_key="X_pca")
    with pytest.raises(KeyError, match="mod2='adt' is not a modality"):
        mm.model.CLIP.setup_mudata(small, mod1="rna", mod2="adt", rep_key="X_pca")
    with pytest.raises(ValueError, match="not set up for CLIP"):
        mm.model.CLIP(small)
    assert_unchanged(before, small)


def test_wrong_modality_in_latent_raises(small):
    model = make_model(small)
    with pytest.raises(ValueError, match="modality='adt' is not one of"):
        model.get_latent_representation(small, "adt")


def test_nan_loss_stops_with_explanation(small):
    model = make_model(small)
    with pytest.raises(FloatingPointError, match="loss became nan.*lower lr"):
        model.train(lr=1e30, **FAST)  # the first step sends the weights to infinity


def test_bad_hyperparameters_raise(small):
    with pytest.raises(ValueError, match="n_latent"):
        make_model(small, n_latent=0)
    with pytest.raises(ValueError, match="dropout"):
        make_model(small, dropout=1.5)
    for bad, error, match in (
        ({"n_hidden": {"rna": [32]}}, KeyError, "n_hidden must give a setting for each"),
        ({"n_hidden": [64, 32]}, ValueError, "n_hidden must be a number or a mapping"),
        ({"n_hidden": {"rna": [32], "atac": [-4]}}, ValueError, "n_hidden\\['atac'\\] widths"),
        ({"dropout": {"rna": 0.1}}, KeyError, "dropout must give a setting for each"),
        ({"n_hidden": {"rna": [32, 16], "atac": [32]}, "dropout": {"rna": [0.1], "atac": 0.1}}, ValueError, "one per"),
    ):
        with pytest.raises(error, match=match):
            mm.model.CLIP(small, **{"n_latent": 8, **bad})
    model = mm.model.CLIP(
        small, n_latent=8, n_hidden={"rna": [32, 16], "atac": 24}, dropout={"rna": [0.1, 0.2], "atac": 0}
    )
    assert model.init_params["n_hidden"] == {"rna": [32, 16], "atac": [24]}
    assert model.init_params["dropout"] == {"rna": [0.1, 0.2], "atac": [0.0]}
    model = make_model(small)
    for lr in (-1.0, True):  # a boolean is no learning rate (it passed as 1 before)
        with pytest.raises(ValueError, match="lr"):
            model.train(lr=lr, **FAST)


def test_defaults_follow_matchclot(cite, multiome):
    for mdata, mod2, n_latent, temperature in ((cite, "adt", 256, 4.0), (multiome, "atac", 128, 2.74)):
        add_pca(mdata)
        mm.model.CLIP.setup_mudata(mdata, mod1="rna", mod2=mod2, rep_key="X_pca")
        model = mm.model.CLIP(mdata)
        assert model.init_params["n_latent"] == n_latent
        assert model.init_params["temperature_init"] == temperature
        # Few paired cells: hidden layers are capped (MatchCLOT's go up to 4096).
        assert max(max(widths) for widths in model.init_params["n_hidden"].values()) <= 512


def test_default_batch_size_scales_with_training_cells():
    from mumatch.model._clip import DEFAULT_BATCH_SIZE, MIN_BATCH_SIZE, scaled_batch_size

    # The starters' ~250 training cells stay one minibatch; MatchCLOT's 16,384 is reached at its own scale.
    assert scaled_batch_size(249) == MIN_BATCH_SIZE >= 249
    assert scaled_batch_size(2664) == 512
    assert scaled_batch_size(60_000) == DEFAULT_BATCH_SIZE
    assert scaled_batch_size(10**7) == DEFAULT_BATCH_SIZE
    sizes = [scaled_batch_size(n) for n in range(1, 100_000, 997)]
    assert sizes == sorted(sizes)


def test_default_widths_grow_with_paired_cells():
    from mumatch.model._clip import MATCHCLOT_GEX2ADT, scaled_widths

    widths = MATCHCLOT_GEX2ADT["n_hidden"]["other"]
    assert scaled_widths(widths, 311) == (256, 256)
    assert scaled_widths(widths, 3330) == (256, 256)
    assert scaled_widths(widths, 10_000) == (1024, 1024)
    assert scaled_widths(widths, 66_000) == tuple(widths)


def test_default_minibatches_recorded(small):
    model = make_model(small)
    model.train(max_epochs=1, progress_bar=False)
    assert model.train_info["batch_size"] == 256


@pytest.mark.slow
def test_ddp_spawn_on_two_cpu_processes(small):
    model = make_model(small)
    model.train(
        max_epochs=30,
        progress_bar=False,
        early_stopping=False,
        validation=None,
        lr=3e-3,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
    )
    # The history and summary come back from the worker processes with the weights.
    assert model.train_info["epochs"] == 30 and not model.train_info["stopped_early"]
    assert len(model.history["train_loss"]) == 30
    positions = paired_positions(small, "rna", "atac")
    z1 = model.get_latent_representation(small, "rna")[positions[0]]
    z2 = model.get_latent_representation(small, "atac")[positions[1]]
    assert model.is_trained
    assert mm.metrics.foscttm(z1, z2) < 0.3


def test_a_query_embedded_with_another_fit_of_the_projection_is_pointed_out(tmp_path, monkeypatch):
    # lsi_harmony run again on new cells gives a representation of the same width in another basis: embedding it
    # with the model is meaningless, and only the recorded fit tells it apart.
    from mumatch.model import _base

    reference = mm.datasets.simulate_paired(200, ("rna", "atac"), n_genes=80, n_peaks=120, seed=4)
    mm.pp.lsi_harmony(reference, n_comps=8, harmony=False)
    mm.model.CLIP.setup_mudata(reference, mod1="rna", mod2="atac", rep_key="X_lsi_harmony")
    model = mm.model.CLIP(reference, **TINY)
    model.save(tmp_path / "clip")
    warned = []
    monkeypatch.setattr(_base.logg, "warning", lambda message, *args, **kwargs: warned.append(message))

    refitted = mm.datasets.simulate_paired(150, ("rna", "atac"), n_genes=80, n_peaks=120, seed=5)
    mm.pp.lsi_harmony(refitted, n_comps=8, harmony=False)
    mm.model.CLIP.load(tmp_path / "clip", refitted)
    assert any("another fit of the projection" in message for message in warned)
    warned.clear()
    model.get_latent_representation(refitted, "rna")
    assert any("lsi_harmony_transform" in message for message in warned)

    projected = mm.datasets.simulate_paired(150, ("rna", "atac"), n_genes=80, n_peaks=120, seed=5)
    mm.pp.lsi_harmony_transform(projected, reference, harmony=False)
    warned.clear()
    loaded = mm.model.CLIP.load(tmp_path / "clip", projected)
    loaded.get_latent_representation(projected, "atac")
    model.get_latent_representation(projected, "rna")
    assert not any("another fit" in message for message in warned)


def test_representation_without_columns_is_refused(small):
    # A zero-width input gives every cell the same embedding (the encoders see only their biases): nothing to train.
    small["rna"].obsm["X_empty"] = np.zeros((small["rna"].n_obs, 0), dtype=np.float32)
    before = snapshot(small)
    with pytest.raises(ValueError, match=r"X_empty.*no columns"):
        mm.model.CLIP.setup_mudata(small, mod1="rna", mod2="atac", rep_key={"rna": "X_empty", "atac": "X_pca"})
    assert_unchanged(before, small)


def test_training_splits_hold_the_paired_cells_aligned(small, monkeypatch):
    from mumatch.model import _clip

    rows1, rows2 = paired_positions(small, "rna", "atac")
    for mod, rows in (("rna", rows1), ("atac", rows2)):
        # The first component names the paired cell: the loaders' rows can be told apart and compared.
        small[mod].obsm["X_pca"][:, 0] = -1.0
        small[mod].obsm["X_pca"][rows, 0] = np.arange(rows.size)
    loaded = []
    row_loader = _clip.row_loader
    monkeypatch.setattr(
        _clip, "row_loader", lambda *arrays, **kwargs: loaded.append(arrays) or row_loader(*arrays, **kwargs)
    )
    make_model(small).train(validation=0.25, **FAST)
    (train1, train2), (validation1, validation2) = loaded
    for first, second in ((train1, train2), (validation1, validation2)):
        np.testing.assert_array_equal(first[:, 0], second[:, 0])
    cells = np.concatenate([train1[:, 0], validation1[:, 0]]).astype(int)
    np.testing.assert_array_equal(np.sort(cells), np.arange(rows1.size))
    for mod, rows, arrays in (("rna", rows1, (train1, validation1)), ("atac", rows2, (train2, validation2))):
        for values in arrays:
            np.testing.assert_array_equal(values, small[mod].obsm["X_pca"][rows[values[:, 0].astype(int)]])


def test_clip_loss_is_the_symmetric_info_nce_of_a_brute_force_computation():
    from mumatch.module._clip import CLIPModule

    torch.manual_seed(0)
    module = CLIPModule([5, 3], 4, [[8], [8]], [0.0, 0.0], temperature_init=np.log(2.0)).eval()
    x1, x2 = torch.randn(6, 5), torch.randn(6, 3)
    with torch.no_grad():
        output = module.loss(x1, x2)
        z1 = module.encoders[0](x1).numpy().astype(np.float64)
        z2 = module.encoders[1](x2).numpy().astype(np.float64)
    z1 /= np.linalg.norm(z1, axis=1, keepdims=True)
    z2 /= np.linalg.norm(z2, axis=1, keepdims=True)
    logits = 2.0 * z1 @ z2.T  # the logit scale is exp(temperature_init)

    def cross_entropy_of_the_diagonal(matrix):
        log_softmax = matrix - np.log(np.exp(matrix).sum(axis=1, keepdims=True))
        return -np.mean(np.diag(log_softmax))

    expected = (cross_entropy_of_the_diagonal(logits) + cross_entropy_of_the_diagonal(logits.T)) / 2
    assert output.loss.item() == pytest.approx(expected, rel=1e-5)
    assert output.extra_metrics["logit_scale"].item() == pytest.approx(2.0)
    # The logit scale is clipped at 100, as CLIP does, from above only.
    assert CLIPModule([5, 3], 4, [[8], [8]], [0.0, 0.0], np.log(1e4)).logit_scale().item() == pytest.approx(100.0)
    assert CLIPModule([5, 3], 4, [[8], [8]], [0.0, 0.0], np.log(0.5)).logit_scale().item() == pytest.approx(0.5)
