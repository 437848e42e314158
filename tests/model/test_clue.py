from __future__ import annotations

import json

import mudata
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch
from scipy import stats

import mumatch as mm
from mumatch.model._base import SETUP_KEY
from mumatch.model._clue import _foscttm
from mumatch.module._clue import CLUEModule
from mumatch.nn._discriminator import ModalityDiscriminator, reverse_gradient
from mumatch.nn._likelihoods import bernoulli_log_likelihood, count_log_likelihood, negative_binomial_log_likelihood
from tests.helpers import assert_global_random_state_kept, assert_unchanged, snapshot

# Small networks and few epochs keep every training test to a few seconds.
TINY = {"n_latent": 4, "n_hidden": 16, "n_hidden_decoder": 16, "n_hidden_discriminator": 16}
QUICK = {"max_epochs": 3, "batch_size": 64}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny networks run fastest on one thread; two threads spin-wait badly when the machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def add_pca(mdata: mudata.MuData, key: str = "X_pca", n_comps: int = 8) -> mudata.MuData:
    """Log-normalised PCA of every modality's counts (the stand-in for lsi_harmony in these tests)."""
    for adata in mdata.mod.values():
        work = adata.copy()
        sc.pp.normalize_total(work)
        sc.pp.log1p(work)
        sc.pp.pca(work, n_comps=n_comps)
        adata.obsm[key] = work.obsm["X_pca"].astype(np.float32)
    return mdata


@pytest.fixture
def small() -> mudata.MuData:
    mdata = mm.datasets.simulate_paired(240, ("rna", "atac"), n_genes=60, n_peaks=120, seed=3)
    return add_pca(mdata)


@pytest.fixture
def triple() -> mudata.MuData:
    mdata = mm.datasets.simulate_paired(240, ("rna", "atac", "adt"), n_genes=60, n_peaks=120, n_proteins=12, seed=4)
    return add_pca(mdata)


def train_model(mdata, mods=None, seed=0, **model_kwargs):
    mm.model.CLUE.setup_mudata(mdata, mods, rep_key="X_pca")
    model = mm.model.CLUE(mdata, random_state=seed, **{**TINY, **model_kwargs})
    model.train(random_state=seed, **QUICK)
    return model


def test_init_and_train_leave_the_callers_global_random_generators_alone(small):
    assert_global_random_state_kept(lambda: train_model(small))


def test_building_and_training_do_not_start_cuda(small, monkeypatch):
    # Reading a CUDA generator's state starts CUDA; Lightning's forking strategies (ddp_notebook) then refuse to run.
    def started(*args, **kwargs):
        raise AssertionError("CUDA was started")

    # CUDA present but not started yet in this process (on a GPU machine an earlier test may have started it).
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_rng_state", started)
    mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    mm.model.CLUE(small, **TINY).train(accelerator="cpu", **QUICK)


# ----- building blocks ---------------------------------------------------------------------------------------------
def test_negative_binomial_matches_scipy():
    rng = np.random.default_rng(0)
    counts = rng.poisson(3.0, (5, 7)).astype(np.float32)
    px_scale = rng.dirichlet(np.ones(7), 5).astype(np.float32)
    library = np.array([[10.0], [50.0], [1.0], [200.0], [7.0]], dtype=np.float32)
    log_theta = rng.normal(0, 1, 7).astype(np.float32)
    ours = negative_binomial_log_likelihood(*map(torch.as_tensor, (counts, px_scale, library, log_theta)))
    mean, theta = px_scale * library, np.exp(log_theta)
    reference = stats.nbinom.logpmf(counts, theta, theta / (theta + mean)).sum(1)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-4, atol=1e-3)


def test_bernoulli_is_binarised_poisson():
    counts = torch.tensor([[0.0, 1.0, 5.0]])
    px_scale = torch.tensor([[0.2, 0.3, 0.5]])
    library = torch.tensor([[4.0]])
    rate = (px_scale * library).numpy()[0]
    expected = -rate[0] + np.log1p(-np.exp(-rate[1])) + np.log1p(-np.exp(-rate[2]))
    assert bernoulli_log_likelihood(counts, px_scale, library).item() == pytest.approx(expected, rel=1e-5)
    # a count of 5 and a count of 1 are the same event (open peak)
    assert bernoulli_log_likelihood(counts.clamp(max=1), px_scale, library).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="likelihood='poisson'"):
        count_log_likelihood("poisson", counts, px_scale, library)
    with pytest.raises(ValueError, match="log_theta"):
        count_log_likelihood("nb", counts, px_scale, library)


def test_gradient_reversal_and_discriminator():
    inputs = torch.ones(3, requires_grad=True)
    (reverse_gradient(inputs, 2.0) * torch.arange(3.0)).sum().backward()
    np.testing.assert_allclose(inputs.grad.numpy(), [0.0, -2.0, -4.0])
    with pytest.raises(ValueError, match="n_classes >= 2"):
        ModalityDiscriminator(4, 1)


def make_batch(n_input, n_features, observed):
    generator = torch.Generator().manual_seed(0)
    reps = [torch.randn(observed.shape[0], width, generator=generator) for width in n_input]
    counts = [torch.poisson(torch.rand(observed.shape[0], width, generator=generator) * 3) for width in n_features]
    batch = torch.zeros(observed.shape[0], len(n_input), 2)
    batch[:, :, 0] = 1
    return reps, counts, observed, batch


def test_module_masks_missing_modalities():
    n_input, n_features = [6, 5, 4], [20, 30, 8]
    module = CLUEModule(n_input, n_features, ["nb", "bernoulli", "nb"], 2, **TINY).eval()
    observed = torch.tensor([[True, False, False], [False, True, False], [False, False, True]]).repeat(4, 1)
    reps, counts, observed, batch = make_batch(n_input, n_features, observed)
    torch.manual_seed(0)
    output = module.loss(reps, counts, observed, batch)
    assert torch.isfinite(output.loss)
    # cells measured in one modality only train no cross or MSE term
    assert output.extra_metrics["cross"].item() == 0.0
    assert output.extra_metrics["mse"].item() == 0.0
    # what sits in the rows of a modality a cell lacks does not matter
    other_reps = [rep + 100 * ~observed[:, [j]] for j, rep in enumerate(reps)]
    other_counts = [count + 7 * ~observed[:, [j]] for j, count in enumerate(counts)]
    torch.manual_seed(0)
    assert module.loss(other_reps, other_counts, observed, batch).loss.item() == pytest.approx(output.loss.item())


def reference_terms(module: CLUEModule, reps, counts, observed, batch) -> dict[str, torch.Tensor]:
    """Brute force: every network on every cell, then the rows a term does not apply to masked out."""
    mask = observed.float()
    n_observed = mask.sum(-1)
    multi = (n_observed >= 2).float()

    def masked_mean(values, weights):
        return (values * weights).sum() / weights.sum().clamp_min(1)

    encoded = [module.encode(j, rep) for j, rep in enumerate(reps)]
    self_nll = kl = cross = torch.zeros(())
    for j, (mean, log_var) in enumerate(encoded):
        self_nll = self_nll + masked_mean(module._nll(j, mean[:, j], counts[j], batch[:, j]), mask[:, j])
        kl = kl + masked_mean(module._kl(mean, log_var), mask[:, j]) / module.n_features[j]
        for k in range(module.n_mods):
            if k != j:
                nll = module._nll(k, mean[:, k], counts[k], batch[:, k])
                cross = cross + masked_mean(nll, mask[:, j] * mask[:, k])
    precision = torch.stack([(-log_var).exp() for _, log_var in encoded]) * mask.T[:, :, None, None]
    means = torch.stack([mean for mean, _ in encoded])
    joint_precision = precision.sum(0).clamp_min(1e-8)
    joint_mean = (precision * means).sum(0) / joint_precision
    for k in range(module.n_mods):
        nll = module._nll(k, joint_mean[:, k], counts[k], batch[:, k])
        cross = cross + masked_mean(nll, mask[:, k] * multi)
    joint_kl = masked_mean(module._kl(joint_mean, -joint_precision.log()), multi) / sum(module.n_features)
    cross = cross + module.lam_kl * joint_kl
    centre = (mask.T[:, :, None, None] * means).sum(0) / n_observed.clamp_min(1)[:, None, None]
    squared = ((means - centre) ** 2).mean(dim=(-1, -2)) * mask.T
    mse = masked_mean(squared.sum(0) / n_observed.clamp_min(1), multi)
    keep = mask.T.reshape(-1) > 0
    labels = torch.arange(module.n_mods).repeat_interleave(mask.shape[0])[keep]
    adversarial = module.discriminator.adversarial_loss(torch.cat([m.flatten(1) for m in means])[keep], labels)
    return {"self": self_nll, "kl": kl, "cross": cross, "mse": mse, "adversarial": adversarial}


def test_module_loss_agrees_with_brute_force_masking(monkeypatch):
    # The loss runs each network on the cells a term applies to; with the sampling noise and dropout off it must
    # equal computing every row and masking (three modalities, every pattern of observed modalities).
    monkeypatch.setattr(CLUEModule, "_sample", staticmethod(lambda mean, log_var: mean))
    n_input, n_features = [6, 5, 4], [20, 30, 8]
    module = CLUEModule(n_input, n_features, ["nb", "bernoulli", "nb"], 2, **TINY).eval()
    every = [[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1) if a or b or c]
    patterns = torch.tensor(every, dtype=torch.bool)
    reps, counts, observed, batch = make_batch(n_input, n_features, patterns.repeat(3, 1))
    with torch.no_grad():
        output = module.loss(reps, counts, observed, batch)
        expected = reference_terms(module, reps, counts, observed, batch)
    for name, value in expected.items():
        assert output.extra_metrics[name].item() == pytest.approx(value.item(), rel=1e-5), name


def test_generator_objective_counts_the_adversarial_term_negatively():
    # Through the gradient reversal the encoders maximise the discriminator's cross-entropy: what they minimise (and
    # early stopping watches, as scglue's gen_loss) is the loss with that term's sign flipped.
    n_input, n_features = [6, 5], [20, 30]
    module = CLUEModule(n_input, n_features, ["nb", "nb"], 2, **{**TINY, "lam_adversarial": 1.5})
    output = module.loss(*make_batch(n_input, n_features, torch.ones(8, 2, dtype=torch.bool)))
    adversarial = output.extra_metrics["adversarial"]
    assert adversarial.item() > 0
    expected = output.loss.detach() - 2 * 1.5 * adversarial
    assert output.extra_metrics["generator"].item() == pytest.approx(expected.item(), rel=1e-6)
    unaligned = CLUEModule(n_input, n_features, ["nb", "nb"], 2, **{**TINY, "lam_adversarial": 0.0})
    output = unaligned.loss(*make_batch(n_input, n_features, torch.ones(8, 2, dtype=torch.bool)))
    assert output.extra_metrics["generator"].item() == pytest.approx(output.loss.item())


def test_module_paired_cells_train_every_term():
    n_input, n_features = [6, 5], [20, 30]
    module = CLUEModule(n_input, n_features, ["nb", "nb"], 2, **TINY)
    output = module.loss(*make_batch(n_input, n_features, torch.ones(8, 2, dtype=torch.bool)))
    for term in ("self", "kl", "cross", "mse", "adversarial"):
        assert output.extra_metrics[term].item() > 0, term
    output.loss.backward()
    assert module.heads[0][1].weight.grad.abs().sum() > 0  # a cross-encoder learns
    assert module.discriminator.classify.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at least two modalities"):
        CLUEModule([6], [20], ["nb"], 1)


# ----- model: bad input ----------------------------------------------------------------------------------------------
def test_setup_bad_inputs_leave_data_unchanged(small):
    before = snapshot(small)
    with pytest.raises(ValueError, match="at least two modalities"):
        mm.model.CLUE.setup_mudata(small, ["rna"], rep_key="X_pca")
    with pytest.raises(KeyError, match="layer='raw'"):
        mm.model.CLUE.setup_mudata(small, rep_key="X_pca", layer="raw")
    with pytest.raises(ValueError, match="layer must be the name of one layer"):
        mm.model.CLUE.setup_mudata(small, rep_key="X_pca", layer=["counts"])
    with pytest.raises(KeyError, match="X_lsi_harmony"):
        mm.model.CLUE.setup_mudata(small)
    with pytest.raises(ValueError, match="likelihood='gaussian'"):
        mm.model.CLUE.setup_mudata(small, rep_key="X_pca", likelihood="gaussian")
    assert_unchanged(before, small)
    assert SETUP_KEY not in small.uns


def test_setup_names_the_modality_missing_its_counts_layer(small):
    del small["atac"].layers["counts"]
    before = snapshot(small)
    with pytest.raises(KeyError, match=r"layer='counts' not found in mdata\['atac'\]\.layers"):
        mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    assert_unchanged(before, small)
    assert SETUP_KEY not in small.uns


def test_setup_rejects_normalised_data_under_count_likelihood(small):
    small["rna"].layers["counts"] = sp.csr_matrix(np.log1p(small["rna"].layers["counts"].toarray()))
    before = snapshot(small)
    with pytest.raises(ValueError, match="non-integer values.*raw counts"):
        mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    assert_unchanged(before, small)


def test_setup_needs_paired_cells():
    mdata = add_pca(mm.datasets.simulate_paired(120, ("rna", "adt"), n_genes=40, n_proteins=10, paired_fraction=0.0))
    with pytest.raises(ValueError, match="no cell is measured in two"):
        mm.model.CLUE.setup_mudata(mdata, rep_key="X_pca")


def test_unknown_hyperparameter(small):
    mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    with pytest.raises(TypeError, match="unknown hyperparameters"):
        mm.model.CLUE(small, n_latnet=3)
    with pytest.raises(ValueError, match="lam_cross"):
        mm.model.CLUE(small, lam_cross=-1.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n_hidden_discriminator", -3),
        ("n_layers_discriminator", 0),
        ("n_latent", 2.5),
        ("lam_cross", "1"),
        ("lam_mse", True),
        ("dropout", None),
        ("dropout", 1.0),
    ],
)
def test_bad_hyperparameter_values_name_the_hyperparameter(small, name, value):
    mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    with pytest.raises(ValueError, match=name):
        mm.model.CLUE(small, **{name: value})


# ----- model: training and reliability --------------------------------------------------------------------------------
def test_train_embeds_every_cell_of_each_modality(small):
    model = train_model(small)
    assert model.is_trained and "train_loss" in model.history and "validation_loss" in model.history
    for mod in ("rna", "atac"):
        embedding = model.get_latent_representation(modality=mod)
        assert embedding.shape == (small[mod].n_obs, 2 * TINY["n_latent"])
        assert embedding.dtype == np.float32 and np.isfinite(embedding).all()
    assert model.setup_args["likelihoods"] == {"rna": "nb", "atac": "bernoulli"}
    assert "CLUE(" in repr(model) and "trained" in repr(model)


def test_training_records_and_can_monitor_the_matching_of_held_out_pairs(small):
    model = train_model(small)
    assert model.train_info["monitor"] == "validation_generator" and "validation_foscttm" in model.history
    mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    model = mm.model.CLUE(small, **TINY)
    model.train(monitor="matching", **QUICK)
    foscttm = model.history["validation_foscttm"]["validation_foscttm"]
    assert model.train_info["monitor"] == "validation_foscttm"
    assert ((foscttm >= 0) & (foscttm <= 1)).all()
    assert model.train_info["best_value"] == pytest.approx(foscttm.min())
    assert model.train_info["best_epoch"] == foscttm.idxmin()


def test_matching_monitor_falls_back_to_the_loss_without_held_out_pairs(small):
    mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    model = mm.model.CLUE(small, **TINY)
    model.train(monitor="matching", validation_fraction=0.02, **QUICK)  # ~5 held-out cells: too few pairs to rank
    assert model.train_info["monitor"] == "validation_generator" and "validation_foscttm" not in model.history


def test_learning_rate_drops_tenfold_on_plateaus_of_the_monitored_loss(small):
    mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    model = mm.model.CLUE(small, **TINY)
    # So small a rate that the validation loss only moves by its sampling noise: a plateau (this seed's on the CPU;
    # a GPU's rounding moves them).
    model.train(max_epochs=8, batch_size=64, lr=1e-6, reduce_lr_patience=1, early_stopping=False, accelerator="cpu")
    lr = model.history["lr"]["lr"].to_numpy()
    loss = model.history["validation_generator"]["validation_generator"].to_numpy()  # what the schedule watches
    assert lr[0] == pytest.approx(1e-6)
    drops = np.flatnonzero(lr[1:] < lr[:-1])
    assert drops.size >= 1  # at least one plateau in eight epochs at this rate
    np.testing.assert_allclose(lr[drops + 1] / lr[drops], 0.1, rtol=1e-5)
    for epoch in drops:  # a drop follows two epochs (patience 1) that did not beat the best before them
        assert loss[epoch - 1 : epoch + 1].min() >= loss[: epoch - 1].min() * (1 - 1e-4)

    model = mm.model.CLUE(small, **TINY)
    model.train(max_epochs=8, batch_size=64, lr=1e-6, reduce_lr_patience=None, early_stopping=False)
    np.testing.assert_allclose(model.history["lr"]["lr"], 1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reduce_lr_patience": 0}, "reduce_lr_patience must be an integer"),
        ({"reduce_lr_patience": 2.5}, "reduce_lr_patience must be an integer"),
        ({"reduce_lr_patience": "3"}, "reduce_lr_patience must be an integer"),
        ({"reduce_lr_patience": 5, "patience": 5}, r"reduce_lr_patience \(5\) must be at most patience - 2"),
        ({"reduce_lr_patience": 4, "patience": 5}, r"reduce_lr_patience \(4\) must be at most patience - 2"),
    ],
)
def test_train_rejects_bad_reduce_lr_patience(small, kwargs, message):
    mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    model = mm.model.CLUE(small, **TINY)
    with pytest.raises(ValueError, match=message):
        model.train(**kwargs, **QUICK)
    assert not model.is_trained


def test_learning_rate_schedule_follows_the_validation_interval(small):
    mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    model = mm.model.CLUE(small, **TINY)
    # Validation every 2nd epoch: the schedule steps on those epochs only (it used to fail on the others).
    model.train(
        max_epochs=12,
        batch_size=64,
        lr=1e-6,
        reduce_lr_patience=1,
        early_stopping=False,
        check_val_every_n_epoch=2,
        accelerator="cpu",  # the plateaus are this seed's on the CPU; a GPU's rounding moves them
    )
    lr = model.history["lr"]["lr"].to_numpy()
    drops = np.flatnonzero(lr[1:] < lr[:-1])
    assert lr[0] == pytest.approx(1e-6) and drops.size >= 1
    assert (drops % 2 == 1).all()  # right after a validating epoch (1, 3, 5, ...)


def test_automatic_reduce_lr_patience_leaves_room_for_the_lower_rate(small):
    mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    model = mm.model.CLUE(small, **TINY)
    model.train(max_epochs=8, batch_size=64, lr=1e-6, patience=2)  # a third of 2 would drop on the stopping epoch
    np.testing.assert_allclose(model.history["lr"]["lr"], 1e-6, rtol=1e-5)


@pytest.mark.parametrize("fraction", [1.0, -0.1, "0.1", True, None])
def test_train_rejects_a_bad_validation_fraction(small, fraction):
    mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    model = mm.model.CLUE(small, **TINY)
    with pytest.raises(ValueError, match="validation_fraction must lie in"):
        model.train(validation_fraction=fraction, **QUICK)
    assert not model.is_trained


def test_latent_representation_rejects_a_non_boolean_normalize_subspaces(small):
    model = train_model(small)
    with pytest.raises(ValueError, match="normalize_subspaces must be True or False"):
        model.get_latent_representation(modality="rna", normalize_subspaces="no")


def test_a_module_in_another_precision_embeds(small):
    # Weights cast to half precision (by a Trainer's precision, or to save memory) take inputs of their dtype.
    model = train_model(small)
    expected = model.get_latent_representation(modality="rna")
    model.module.to(torch.bfloat16)
    latent = model.get_latent_representation(modality="rna")
    assert latent.dtype == np.float32
    np.testing.assert_allclose(latent, expected, atol=0.05)


@pytest.mark.parametrize("precision", ["bf16-true", "64-true"])
def test_trains_in_a_trainers_true_precision(small, precision):
    # "true" precisions convert the module, not the tensors the loss and the matching monitor build themselves.
    mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    model = mm.model.CLUE(small, **TINY)
    model.train(precision=precision, monitor="matching", **QUICK)
    assert next(model.module.parameters()).dtype == {"bf16-true": torch.bfloat16, "64-true": torch.float64}[precision]
    assert np.isfinite(model.history["validation_foscttm"].to_numpy()).all()
    latent = model.get_latent_representation(modality="atac")
    assert latent.dtype == np.float32 and np.isfinite(latent).all()
    # Trained further at the default precision, the weights return to float32 (float32 inputs met bfloat16 weights).
    model.train(**QUICK)
    assert next(model.module.parameters()).dtype == torch.float32
    assert np.isfinite(model.get_latent_representation(modality="atac")).all()


def test_latent_representation_of_a_mudata_without_the_modality_names_it(small):
    # The default modality is the first registered one: a query holding only the other says which one it lacks.
    model = train_model(small)
    query = mudata.MuData({"atac": small["atac"].copy()})
    assert model.get_latent_representation(query, "atac").shape[0] == query["atac"].n_obs
    with pytest.raises(KeyError, match=r"mdata has no modality 'rna' \(it has \['atac'\]\)"):
        model.get_latent_representation(query)


def test_train_rejects_unknown_monitor(small):
    mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    model = mm.model.CLUE(small, **TINY)
    with pytest.raises(ValueError, match="monitor must be 'loss' or 'matching'"):
        model.train(monitor="foscttm", **QUICK)
    assert not model.is_trained


def test_monitor_foscttm_agrees_with_the_metric():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    y = x + rng.normal(size=x.shape)
    unit_x, unit_y = (torch.nn.functional.normalize(torch.as_tensor(v), dim=1) for v in (x, y))
    expected = mm.metrics.foscttm(unit_x.numpy(), unit_y.numpy())  # Euclidean on unit vectors ranks as cosine
    assert float(_foscttm(unit_x, unit_y)) == pytest.approx(expected)
    assert float(_foscttm(unit_x, unit_x)) == 0.0


def whole_matrix_foscttm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The monitor as it was computed before it went by strips of rows: on the whole similarity matrix."""
    similarity = x @ y.T
    true = similarity.diagonal()
    closer_rows = (similarity > true[:, None]).sum(1) + 0.5 * (similarity == true[:, None]).sum(1) - 0.5
    closer_cols = (similarity > true[None, :]).sum(0) + 0.5 * (similarity == true[None, :]).sum(0) - 0.5
    return (closer_rows + closer_cols).float().mean() / (2 * max(x.shape[0] - 1, 1))


@pytest.mark.parametrize("max_entries", [1, 7 * 300, 1 << 26])
def test_monitor_foscttm_by_strips_equals_the_whole_matrix(max_entries):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 8))
    y = x + rng.normal(size=x.shape)
    unit_x, unit_y = (torch.nn.functional.normalize(torch.as_tensor(v, dtype=torch.float32), dim=1) for v in (x, y))
    expected = whole_matrix_foscttm(unit_x, unit_y)
    assert 0.01 < float(expected) < 0.45
    # A strip's product may round differently from the whole matrix's; no two similarities here are that close.
    assert torch.equal(_foscttm(unit_x, unit_y, max_entries=max_entries), expected)
    # A collapsed embedding ties everywhere, in every strip.
    collapsed = torch.ones((300, 8)) / np.sqrt(8)
    assert float(_foscttm(collapsed, collapsed, max_entries=max_entries)) == 0.5


def test_seeded_determinism(small):
    first = train_model(small, seed=5).get_latent_representation(modality="atac")
    second = train_model(small, seed=5).get_latent_representation(modality="atac")
    third = train_model(small, seed=6).get_latent_representation(modality="atac")
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, third)


def test_save_load_round_trip(small, tmp_path):
    model = train_model(small)
    model.save(tmp_path / "clue")
    loaded = mm.model.CLUE.load(tmp_path / "clue", small)
    for mod in ("rna", "atac"):
        np.testing.assert_array_equal(
            model.get_latent_representation(modality=mod), loaded.get_latent_representation(modality=mod)
        )
    assert loaded.init_params == model.init_params and loaded.is_trained
    assert loaded.train_info == model.train_info and loaded.train_info["epochs"] == QUICK["max_epochs"]
    assert set(loaded.history) == set(model.history)
    for name, frame in model.history.items():
        np.testing.assert_allclose(loaded.history[name][name].to_numpy(), frame[name].to_numpy(), rtol=1e-6)
        assert list(loaded.history[name].index) == list(frame.index)
    narrower = small.copy()
    narrower["rna"].obsm["X_pca"] = narrower["rna"].obsm["X_pca"][:, :5]
    with pytest.raises(ValueError, match="has 5 columns but the model was built for 8"):
        mm.model.CLUE.load(tmp_path / "clue", narrower)


def test_load_onto_features_of_other_names_warns(small, tmp_path, monkeypatch):
    from scanpy import logging as logg

    model = train_model(small)
    model.save(tmp_path / "clue")
    query = small.copy()
    query.mod["rna"].var_names = [f"other_{i}" for i in range(query["rna"].n_vars)]
    warnings = []
    monkeypatch.setattr(logg, "warning", lambda message, *args, **kwargs: warnings.append(message))
    mm.model.CLUE.load(tmp_path / "clue", small)
    assert warnings == []
    loaded = mm.model.CLUE.load(tmp_path / "clue", query)
    assert len(warnings) == 1 and "mdata['rna'] has other features than the model was trained on" in warnings[0]
    np.testing.assert_array_equal(  # embedding reads the representation only
        loaded.get_latent_representation(modality="rna"), model.get_latent_representation(modality="rna")
    )


def test_without_early_stopping_the_last_weights_are_kept(small, monkeypatch):
    from lightning.pytorch.callbacks import Callback

    from mumatch.model import _base

    class LastEpoch(Callback):
        def on_train_epoch_end(self, trainer, plan):
            self.state = {name: value.detach().clone() for name, value in plan.module.state_dict().items()}

    made = []
    real_trainer = _base.lp.Trainer
    monkeypatch.setattr(_base.lp, "Trainer", lambda **options: made.append(options) or real_trainer(**options))
    for early_stopping in (False, True):
        mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
        model = mm.model.CLUE(small, **TINY)
        last = LastEpoch()
        model.train(max_epochs=6, batch_size=64, early_stopping=early_stopping, callbacks=[last])
        restoring = [c for c in made[-1]["callbacks"] if isinstance(c, _base.BestWeights) and c.restore]
        assert len(restoring) == int(early_stopping)  # only early stopping restores the best epoch's weights
        assert model.train_info["best_epoch"] is not None
    # The run without early stopping ended on its last epoch's weights, whichever epoch validated best.
    made.clear()
    mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    model = mm.model.CLUE(small, **TINY)
    last = LastEpoch()
    model.train(max_epochs=6, batch_size=64, lr=1e-2, early_stopping=False, callbacks=[last])
    for name, value in model.module.state_dict().items():
        torch.testing.assert_close(value, last.state[name], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("devices", "strategy", "expected"),
    [("auto", None, 1), (1, None, 1), ([0], None, [0]), (2, None, 2), (2, "ddp_spawn", 2)],
)
def test_devices_auto_is_one_device_and_several_look_for_unused_parameters(devices, strategy, expected):
    from lightning.pytorch.strategies import DDPStrategy

    from mumatch.model._base import device_options

    options = device_options(devices, {} if strategy is None else {"strategy": strategy})
    assert options["devices"] == expected
    # A CLUE model has parameters without a gradient (a Bernoulli modality's dispersion): plain DDP stops on them.
    several = expected not in (1, [0])
    assert ("strategy" in options) == (several and strategy is None)
    if "strategy" in options:
        assert isinstance(options["strategy"], DDPStrategy)
        assert options["strategy"]._ddp_kwargs["find_unused_parameters"]


def test_embedding_batch_size_is_checked(small):
    model = train_model(small)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        model.get_latent_representation(modality="rna", batch_size=0)


def test_load_onto_cells_without_batch_labels(small, tmp_path):
    model = train_model(small)
    model.save(tmp_path / "clue")
    query = small.copy()
    for mod in ("rna", "atac"):
        del query.mod[mod].obs["batch"]
    loaded = mm.model.CLUE.load(tmp_path / "clue", query)
    np.testing.assert_array_equal(
        loaded.get_latent_representation(modality="rna"), model.get_latent_representation(modality="rna")
    )


def test_load_onto_other_features_fails_clearly_and_leaves_mudata_unchanged(small, tmp_path):
    model = train_model(small)
    model.save(tmp_path / "clue")
    fewer = mudata.MuData({"rna": small["rna"][:, :-3].copy(), "atac": small["atac"].copy()})
    fewer.uns[SETUP_KEY] = {"CLIP": "{}"}  # another model's setup, which a failed load must keep as it is
    before = snapshot(fewer)
    with pytest.raises(ValueError, match="does not fit mdata"):
        mm.model.CLUE.load(tmp_path / "clue", fewer)
    assert_unchanged(before, fewer)
    assert dict(fewer.uns[SETUP_KEY]) == {"CLIP": "{}"}


def test_a_three_modality_model_loads_onto_a_query_without_one_and_embeds_the_others(triple, tmp_path):
    model = train_model(triple)
    model.save(tmp_path / "clue")
    # A multiome query for a model trained on RNA + ATAC + ADT (TEA-seq), without batch labels: its cells embed as
    # with the full data.
    query = mudata.MuData({"rna": triple["rna"].copy(), "atac": triple["atac"].copy()})
    for mod in ("rna", "atac"):
        del query[mod].obs["batch"]
    loaded = mm.model.CLUE.load(tmp_path / "clue", query)
    for mod in ("rna", "atac"):
        np.testing.assert_array_equal(
            loaded.get_latent_representation(modality=mod), model.get_latent_representation(modality=mod)
        )
    assert loaded.registrations["adt"] == model.registrations["adt"]
    assert json.loads(query.uns[SETUP_KEY]["CLUE"])["mods"] == ["rna", "atac", "adt"]
    with pytest.raises(KeyError, match="has no modality 'adt'"):
        loaded.get_latent_representation(modality="adt")
    before = snapshot(query)
    with pytest.raises(ValueError, match=r"loaded onto data without \['adt'\].*trains only on data with all"):
        loaded.train(**QUICK)
    assert_unchanged(before, query)
    # The setup it recorded names the absent modality: a new model on it says what to do.
    with pytest.raises(KeyError, match=r"names modalities \['adt'\] that mdata lacks.*setup_mudata again"):
        mm.model.CLUE(query)
    # Saved again, it keeps what it knows of the absent modality and of the batches, and loads back onto the full
    # data.
    loaded.save(tmp_path / "again")
    full = mm.model.CLUE.load(tmp_path / "again", triple)
    assert full.setup_args["batch_key"] == model.setup_args["batch_key"] == "batch"
    np.testing.assert_array_equal(
        full.get_latent_representation(modality="adt"), model.get_latent_representation(modality="adt")
    )


def test_a_model_loads_only_onto_data_with_one_of_its_modalities(triple, tmp_path):
    train_model(triple).save(tmp_path / "clue")
    other = mudata.MuData({"protein": triple["adt"].copy()})
    before = snapshot(other)
    with pytest.raises(KeyError, match="mdata has none of them.*it needs at least one"):
        mm.model.CLUE.load(tmp_path / "clue", other)
    assert_unchanged(before, other)
    assert SETUP_KEY not in other.uns


def test_nan_loss_is_detected(small, monkeypatch):
    mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    model = mm.model.CLUE(small, **TINY)
    with torch.no_grad():
        model.module.log_theta[0].fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss became nan") as error:
        model.train(**QUICK)
    assert "temperature_init" not in str(error.value)  # CLIP's hyperparameter, not CLUE's


def test_diverging_training_is_detected(small):
    # Weights that blow up give NaN posteriors: the training step reports the non-finite loss, not a distribution's
    # argument check (torch.distributions raised its own ValueError there).
    mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    model = mm.model.CLUE(small, **TINY)
    with pytest.raises(FloatingPointError, match="loss became nan"):
        model.train(lr=1e30, **QUICK)


def test_kl_term_is_the_gaussian_kl():
    from torch.distributions import Normal, kl_divergence

    from mumatch.module._clue import CLUEModule

    generator = torch.Generator().manual_seed(0)
    mean, log_var = torch.randn(5, 3, 4, generator=generator), torch.randn(5, 3, 4, generator=generator)
    expected = kl_divergence(Normal(mean, (0.5 * log_var).exp()), Normal(0.0, 1.0)).flatten(1).sum(-1)
    torch.testing.assert_close(CLUEModule._kl(mean, log_var), expected)


def test_a_modality_of_one_cell_or_without_pairs(triple, monkeypatch):
    # One ADT cell (a paired one): its input has no spread, which used to make every ADT input NaN.
    paired = triple["adt"].obs_names[triple["adt"].obs["split"] == "train"]
    one = triple.copy()
    one.mod["adt"] = one["adt"][paired[:1]].copy()
    one.update()
    model = train_model(one)
    assert np.isfinite(model.get_latent_representation(modality="adt")).all()
    # ADT cells named apart from every RNA and ATAC cell: trained, with a warning that no cross link is learnt.
    adt = triple["adt"].copy()
    adt.obs_names = [f"adt-only:{name}" for name in adt.obs_names]
    apart = mudata.MuData({"rna": triple["rna"].copy(), "atac": triple["atac"].copy(), "adt": adt})
    warnings = []
    monkeypatch.setattr(mm.model._clue.logg, "warning", lambda message, *args, **kwargs: warnings.append(message))
    train_model(apart)
    assert any("no cell of 'adt' is measured in another" in message for message in warnings)


def test_three_modalities_with_partial_pairing():
    # Training cells measured in any two or all three modalities (a TEA-seq panel losing one assay for some cells).
    pairing = {"rna+atac+adt": 0.5, "rna+atac": 0.2, "rna+adt": 0.15, "atac+adt": 0.15}
    triple = mm.datasets.simulate_paired(
        240, ("rna", "atac", "adt"), n_genes=60, n_peaks=120, n_proteins=12, pairing=pairing, seed=4
    )
    add_pca(triple)
    assert len({triple[mod].n_obs for mod in triple.mod}) == 3
    model = train_model(triple)
    for mod in ("rna", "atac", "adt"):
        embedding = model.get_latent_representation(modality=mod)
        assert embedding.shape == (triple[mod].n_obs, 3 * TINY["n_latent"]) and np.isfinite(embedding).all()


@pytest.mark.slow
def test_clue_beats_random_on_simulated_data(simulated):
    add_pca(simulated, n_comps=20)
    mm.model.CLUE.setup_mudata(simulated, rep_key="X_pca")
    model = mm.model.CLUE(simulated)
    model.train(max_epochs=5)
    for mod in ("rna", "atac"):
        simulated[mod].obsm["X_clue"] = model.get_latent_representation(modality=mod)
    assert mm.metrics.foscttm(simulated, key="X_clue", mod1="rna", mod2="atac") < 0.3


def test_a_tiny_validation_fraction_still_holds_out_a_cell(small):
    mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    model = mm.model.CLUE(small, **TINY)
    model.train(validation_fraction=1e-4, **QUICK)  # rounds to no cell of 240: one is held out, not none
    assert model.train_info["n_validation"] == 1 and "validation_generator" in model.history


def test_repeated_obs_names_raise_at_setup(small):
    names = list(small["rna"].obs_names)
    names[1] = names[0]
    small["rna"].obs_names = names
    with pytest.raises(ValueError, match="repeats names"):
        mm.model.CLUE.setup_mudata(small, rep_key="X_pca")
    assert "_mumatch_setup" not in small.uns


def test_encoders_read_the_leading_n_input_comps_components(small, tmp_path):
    add_pca(small, key="X_wide", n_comps=30)
    mm.model.CLUE.setup_mudata(small, rep_key="X_wide")
    model = mm.model.CLUE(small, n_input_comps=10, **TINY)
    assert [trunk.fc_layers[0][0].in_features for trunk in model.module.trunks] == [10, 10]
    model.train(**QUICK)
    before = model.get_latent_representation(small, "rna")
    changed = small.copy()
    changed["rna"].obsm["X_wide"][:, 10:] += 100.0  # columns the encoders do not read
    np.testing.assert_array_equal(model.get_latent_representation(changed, "rna"), before)
    model.save(tmp_path / "clue")
    loaded = mm.model.CLUE.load(tmp_path / "clue", small)
    np.testing.assert_array_equal(loaded.get_latent_representation(small, "rna"), before)
    # The default reads 100 components (all 30 here); None reads all of any width; a mapping one per modality.
    assert mm.model.CLUE(small, **TINY).n_input_used == {"rna": 30, "atac": 30}
    assert mm.model.CLUE(small, n_input_comps=None, **TINY).n_input_used == {"rna": 30, "atac": 30}
    assert mm.model.CLUE(small, n_input_comps={"atac": 5}, **TINY).n_input_used == {"rna": 30, "atac": 5}
    for bad in (0, 2.5, "10"):
        with pytest.raises(ValueError, match="n_input_comps must be an integer >= 1"):
            mm.model.CLUE(small, n_input_comps=bad, **TINY)
    with pytest.raises(KeyError, match=r"n_input_comps names modalities \['adt'\]"):
        mm.model.CLUE(small, n_input_comps={"adt": 5}, **TINY)


def test_a_saved_model_keeps_its_input_widths_and_older_saves_read_every_column(small, tmp_path):
    rng = np.random.default_rng(0)
    for mod in ("rna", "atac"):
        small[mod].obsm["X_wide"] = rng.normal(size=(small[mod].n_obs, 120)).astype(np.float32)
    mm.model.CLUE.setup_mudata(small, rep_key="X_wide")
    model = mm.model.CLUE(small, n_input_comps=None, **TINY)
    model.is_trained = True  # its random weights are enough to compare embeddings
    assert model.init_params["n_input_comps"] == {"rna": 120, "atac": 120}  # recorded as read, not as asked
    model.save(tmp_path / "clue")
    expected = model.get_latent_representation(small, "atac")
    loaded = mm.model.CLUE.load(tmp_path / "clue", small)
    np.testing.assert_array_equal(loaded.get_latent_representation(small, "atac"), expected)
    # A model saved before n_input_comps existed has no such parameter: it read every column.
    metadata_file = tmp_path / "clue" / "model.json"
    metadata = json.loads(metadata_file.read_text())
    del metadata["init_params"]["n_input_comps"]
    metadata_file.write_text(json.dumps(metadata))
    loaded = mm.model.CLUE.load(tmp_path / "clue", small)
    np.testing.assert_array_equal(loaded.get_latent_representation(small, "atac"), expected)


def test_clr_values_of_every_protein_are_read_whole(small):
    # lsi_harmony's default ADT representation holds one CLR column per protein, in .var order: no ranking to cut.
    rng = np.random.default_rng(1)
    for mod in ("rna", "atac"):
        small[mod].obsm["X_wide"] = rng.normal(size=(small[mod].n_obs, 120)).astype(np.float32)
    small["atac"].uns["X_wide"] = {"params": {"method": "clr"}}
    mm.model.CLUE.setup_mudata(small, rep_key="X_wide")
    assert mm.model.CLUE(small, **TINY).n_input_used == {"rna": 100, "atac": 120}
