"""Mistakes a new user makes, each met by an error or warning that names the argument and the fix."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import mumatch as mm

from .helpers import assert_unchanged, snapshot


@pytest.fixture
def matched(simulated):
    rng = np.random.default_rng(0)
    for mod in ("rna", "atac"):
        simulated[mod].obsm["X_shared"] = rng.normal(size=(simulated[mod].n_obs, 8)).astype(np.float32)
        simulated[mod].obs["cell_type"] = simulated[mod].obs["batch"].astype(str)
    mm.tl.match_ot(simulated, "rna", "atac", use_rep="X_shared", cells="all", batch_key=None)
    simulated.obsp["match_true"] = simulated.obsp["match"].copy()  # stands for a ground truth
    return simulated


def test_outputs_do_not_replace_what_the_functions_did_not_write(matched):
    before = snapshot(matched)
    truth = matched.obsp["match_true"].copy()
    with pytest.raises(ValueError, match="key_added='match_true' names a matrix of mdata.obsp that match_ot did not"):
        mm.tl.match_ot(matched, "rna", "atac", use_rep="X_shared", key_added="match_true")
    with pytest.raises(ValueError, match=r"would replace mdata\['atac'\].obs\['cell_type'\], which transfer_labels"):
        mm.tl.transfer_labels(
            matched, label_key="cell_type", source_mod="rna", target_mod="atac", key_added="cell_type"
        )
    assert_unchanged(before, matched)
    assert (matched.obsp["match_true"] != truth).nnz == 0
    # Their own outputs are replaced as before.
    mm.tl.match_ot(matched, "rna", "atac", use_rep="X_shared", key_added="match")
    for _ in range(2):
        mm.tl.transfer_labels(matched, label_key="cell_type", source_mod="rna", target_mod="atac", key_added="pred")
    assert "pred_probability" in matched["atac"].obs


def test_missing_column_message_lists_the_columns_and_offers_none_only_where_allowed(matched):
    with pytest.raises(KeyError) as error:
        mm.tl.transfer_labels(matched, label_key="celltype", source_mod="rna", target_mod="atac")
    message = str(error.value)
    assert "'cell_type'" in message and "label_key=None" not in message
    with pytest.raises(KeyError, match="or groupby=None"):
        mm.pl.confidence(matched, key="match", groupby="celltype", show=False)


def test_missing_embedding_names_the_function_that_writes_it(matched):
    with pytest.raises(KeyError, match="compute it first, with mm.tl.train_clip"):
        mm.tl.match_ot(matched, "rna", "atac", use_rep="X_clip")
    with pytest.raises(KeyError, match="compute it first, with mm.pp.lsi_harmony, mm.tl.train_clip or"):
        mm.tl.match_ot(matched, "rna", "atac", use_rep="X_custom")


def test_metrics_refuse_an_anndata(matched):
    with pytest.raises(TypeError, match="'prediction' is an AnnData; pass the MuData"):
        mm.metrics.match_score(matched["rna"])
    with pytest.raises(TypeError, match="'x' is an AnnData"):
        mm.metrics.foscttm(matched["rna"])


def test_plot_saved_into_a_new_folder(matched, tmp_path):
    import matplotlib.pyplot as plt

    path = tmp_path / "new" / "folder" / "plan.png"
    mm.pl.plan(matched, "match", save=str(path), show=False)
    plt.close("all")
    assert path.is_file()


def test_untrained_model_warns_when_asked_for_an_embedding(matched):
    mm.model.CLIP.setup_mudata(matched, "rna", "atac", rep_key="X_shared", batch_key=None)
    model = mm.model.CLIP(matched, n_hidden=8, n_latent=4)
    with pytest.warns(UserWarning, match="CLIP is not trained"):
        model.get_latent_representation(modality="rna")
    model.train(max_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        model.get_latent_representation(modality="rna")


def test_barcodes_repeated_across_samples_are_pointed_out(simulated, monkeypatch):
    from scanpy import logging as logg

    messages = []
    monkeypatch.setattr(logg, "warning", lambda message, *args, **kwargs: messages.append(message))
    rng = np.random.default_rng(0)
    for mod in ("rna", "atac"):
        simulated[mod].obsm["X_shared"] = rng.normal(size=(simulated[mod].n_obs, 8)).astype(np.float32)
    mm.model.CLIP.setup_mudata(simulated, "rna", "atac", rep_key="X_shared")
    mm.tl.match_ot(simulated, "rna", "atac", use_rep="X_shared")
    assert not [message for message in messages if "paired by obs name" in message]  # consistent data: silent

    # Two unpaired cells of different batches that happen to share a barcode (samples merged without prefixes).
    rna, atac = simulated["rna"].obs, simulated["atac"].obs
    only_rna = rna.index[~rna.index.isin(atac.index) & (rna["batch"].astype(str) == str(rna["batch"].iloc[0]))]
    other_batch = atac["batch"].astype(str) != str(rna.loc[only_rna[0], "batch"])
    only_atac = atac.index[~atac.index.isin(rna.index) & other_batch.to_numpy()]
    names = simulated["atac"].obs_names.to_numpy().copy()
    names[simulated["atac"].obs_names.get_loc(only_atac[0])] = only_rna[0]
    simulated["atac"].obs_names = names
    simulated.update()

    mm.model.CLIP.setup_mudata(simulated, "rna", "atac", rep_key="X_shared")
    mm.model.CLUE.setup_mudata(simulated, ["rna", "atac"], rep_key="X_shared")
    mm.tl.match_ot(simulated, "rna", "atac", use_rep="X_shared")
    pointed = [message for message in messages if "paired by obs name" in message]
    assert len(pointed) == 3
    assert all("between 'rna' and 'atac' carry different 'batch' labels in the two (1 cells" in m for m in pointed)
    assert f"e.g. '{only_rna[0]}'" in pointed[0] and "make the obs names unique" in pointed[0]
    assert "trained on as pairs" in pointed[0] and "are not matched" in pointed[2]


def test_batch_labels_of_different_types_but_the_same_names_are_no_conflict(simulated, tmp_path, monkeypatch):
    from scanpy import logging as logg

    from mumatch._layout import conflicting_batches

    messages = []
    monkeypatch.setattr(logg, "warning", lambda message, *args, **kwargs: messages.append(message))
    simulated["rna"].obs["sample"] = simulated["rna"].obs["batch"].cat.codes.astype(int)  # 0, 1, 2
    simulated["atac"].obs["sample"] = simulated["atac"].obs["batch"].cat.codes.astype(float)  # 0.0 names batch "0"
    assert len(conflicting_batches(simulated, "rna", "atac", "sample")) == 0
    # A model loaded onto data with a conflict trains on nothing: no warning about pairs.
    rng = np.random.default_rng(0)
    for mod in ("rna", "atac"):
        simulated[mod].obsm["X_shared"] = rng.normal(size=(simulated[mod].n_obs, 8)).astype(np.float32)
    mm.model.CLIP.setup_mudata(simulated, "rna", "atac", rep_key="X_shared")
    model = mm.model.CLIP(simulated, n_latent=4, n_hidden=8, n_layers=1)
    model.train(max_epochs=1, progress_bar=False)
    model.save(tmp_path / "clip")
    simulated["atac"].obs["batch"] = simulated["atac"].obs["batch"].cat.rename_categories(lambda name: f"{name}x")
    messages.clear()
    mm.model.CLIP.load(tmp_path / "clip", simulated)
    assert not [message for message in messages if "paired by obs name" in message]
    mm.model.CLIP.setup_mudata(simulated, "rna", "atac", rep_key="X_shared")
    assert [message for message in messages if "paired by obs name" in message]


def test_copy_of_a_backed_mudata_is_refused_before_any_work(matched, tmp_path):
    # mudata copies a backed object only to a new file, which these functions cannot be given.
    import mudata

    path = tmp_path / "backed.h5mu"
    matched.write(path)
    backed = mudata.read_h5mu(path, backed=True)
    calls = {
        "lsi_harmony": lambda copy: mm.pp.lsi_harmony(backed, ["rna"], copy=copy),
        "append_depth": lambda copy: mm.pp.append_depth(backed, ["rna"], use_rep="X_shared", copy=copy),
        "match_ot": lambda copy: mm.tl.match_ot(backed, "rna", "atac", use_rep="X_shared", copy=copy),
        "transfer_labels": lambda copy: mm.tl.transfer_labels(
            backed, label_key="cell_type", source_mod="rna", target_mod="atac", copy=copy
        ),
    }
    for call in calls.values():
        with pytest.raises(ValueError, match=r"copy=True cannot copy a MuData read with backed=True.*to_memory"):
            call(True)
        with pytest.raises(ValueError, match="copy must be True or False"):
            call("yes")
    assert "X_lsi_harmony" not in backed["rna"].obsm
    assert "X_shared_depth" not in backed["rna"].obsm
