"""A batch column that no modality has: the default means no batches, any other name is a misspelling."""

from __future__ import annotations

import numpy as np
import pytest

import mumatch as mm

from .helpers import assert_unchanged, snapshot
from .model.test_clue import QUICK, TINY


@pytest.fixture
def embedded(simulated):
    rng = np.random.default_rng(0)
    for mod in ("rna", "atac"):
        simulated[mod].obsm["X_shared"] = rng.normal(size=(simulated[mod].n_obs, 8)).astype(np.float32)
    return simulated


def test_misspelt_batch_key_refused_everywhere(embedded):
    before = snapshot(embedded)
    calls = [
        lambda: mm.pp.lsi_harmony(embedded, batch_key="sample"),
        lambda: mm.tl.train_clip(embedded, "rna", "atac", use_rep="X_shared", batch_key="sample"),
        lambda: mm.tl.train_clue(embedded, use_rep="X_shared", batch_key="sample"),
        lambda: mm.tl.match_ot(embedded, "rna", "atac", use_rep="X_shared", batch_key="sample"),
        lambda: mm.model.CLIP.setup_mudata(embedded, "rna", "atac", rep_key="X_shared", batch_key="sample"),
    ]
    for call in calls:
        with pytest.raises(KeyError, match="batch_key='sample' is not a column of mdata.obs or of the .obs of any of"):
            call()
    assert_unchanged(before, embedded)


def test_default_batch_key_without_batches_trains_and_matches(embedded, monkeypatch):
    from scanpy import logging as logg

    warnings = []
    monkeypatch.setattr(logg, "warning", lambda message, *args, **kwargs: warnings.append(message))
    for mod in ("rna", "atac"):
        del embedded[mod].obs["batch"]
    (model,) = mm.tl.train_clip(embedded, "rna", "atac", use_rep="X_shared", ensemble=None, max_epochs=2)
    assert model.setup_args["batch_key"] is None
    assert embedded.uns["X_clip"]["params"]["batch_key"] is None  # what the models used, not the default asked for
    assert any("training without batches" in message for message in warnings)
    mm.tl.match_ot(embedded, "rna", "atac", use_rep="X_clip")
    assert len(embedded.uns["match"]["blocks"]) == 1
    mm.tl.train_clue(embedded, use_rep="X_shared", model_kwargs=TINY, **QUICK)
    assert embedded.uns["X_clue"]["params"]["batch_key"] is None


def test_a_batch_column_of_the_mudata_itself_is_used(embedded):
    # muon keeps sample-level columns in mdata.obs: a modality without the column reads it from there.
    labels = {mod: embedded[mod].obs.pop("batch") for mod in ("rna", "atac")}
    embedded.obs["sample"] = None
    for column in labels.values():
        embedded.obs.loc[column.index, "sample"] = column.astype(str).to_numpy()
    mm.tl.match_ot(embedded, "rna", "atac", use_rep="X_shared", cells="all", batch_key="sample")
    blocks = {record["name"] for record in embedded.uns["match"]["blocks"].values()}
    assert blocks == set(labels["rna"].astype(str)) and len(blocks) > 1
    plan = embedded.obsp["match"].tocoo()
    sample = embedded.obs["sample"].to_numpy()
    assert plan.nnz and (sample[plan.row] == sample[plan.col]).all()  # no weight across the MuData's batches
    mm.pp.lsi_harmony(embedded, batch_key="sample")
    assert embedded["rna"].uns["X_lsi_harmony"]["harmony"]["applied"]


def test_a_mudata_batch_column_with_repeated_obs_names_is_refused_by_name(embedded):
    for mod in ("rna", "atac"):
        del embedded[mod].obs["batch"]
    embedded.obs["sample"] = "s1"
    names = embedded.obs_names.to_numpy().copy()
    names[1] = names[0]
    embedded.obs_names = names
    before = snapshot(embedded)
    with pytest.raises(ValueError, match=r"mdata.obs_names repeats names, so mdata.obs\['sample'\] cannot be read"):
        mm.pp.lsi_harmony(embedded, batch_key="sample")
    assert_unchanged(before, embedded)


def test_a_mudata_batch_column_is_not_read_for_cells_renamed_without_update(embedded):
    # The renamed cells have no row in mdata.obs: read as missing labels, they silently lost their batch (in Harmony's
    # skip message, "cells have no 'batch' label", and without a word in CLUE's decoders).
    for mod in ("rna", "atac"):
        del embedded[mod].obs["batch"]
    embedded.obs["sample"] = np.where(np.arange(embedded.n_obs) % 2, "s1", "s2")
    names = embedded["atac"].obs_names
    # The unpaired cells renamed, without mdata.update(): the paired ones still pair by name.
    embedded["atac"].obs_names = np.where(names.isin(embedded["rna"].obs_names), names, "renamed:" + names)
    before = snapshot(embedded)
    calls = [
        lambda: mm.pp.lsi_harmony(embedded, batch_key="sample"),
        lambda: mm.tl.train_clue(embedded, use_rep="X_shared", batch_key="sample", model_kwargs=TINY, **QUICK),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"cells of mdata\['atac'\] .* are missing from mdata.obs_names.*update"):
            call()
    assert_unchanged(before, embedded)


def test_conflicting_batches_read_from_the_mudata_obs_are_pointed_out_without_crashing(embedded, monkeypatch):
    # 'atac' keeps its own batch column, 'rna' reads the MuData's; a paired cell labelled differently in the two is
    # warned about, naming both labels, rather than failing on the column 'rna' does not have.
    from scanpy import logging as logg

    messages = []
    monkeypatch.setattr(logg, "warning", lambda message, *args, **kwargs: messages.append(message))
    rna = embedded["rna"].obs.pop("batch")
    embedded.obs["batch"] = None
    embedded.obs.loc[rna.index, "batch"] = rna.astype(str).to_numpy()
    paired = embedded["rna"].obs_names[embedded["rna"].obs_names.isin(embedded["atac"].obs_names)][0]
    embedded.obs.loc[paired, "batch"] = "elsewhere"
    mm.tl.match_ot(embedded, "rna", "atac", use_rep="X_shared")
    pointed = [message for message in messages if "paired by obs name" in message]
    assert len(pointed) == 1
    expected = str(embedded["atac"].obs.loc[paired, "batch"])
    assert f"e.g. '{paired}': 'elsewhere' in 'rna', '{expected}' in 'atac'" in pointed[0]
