"""One answer to "which assay is this modality?" for preprocessing, CLIP's defaults and CLUE's likelihood."""

from __future__ import annotations

import mudata
import numpy as np
import pandas as pd
import pytest

import mumatch as mm
from mumatch._modality import assay_of
from mumatch.model._clip import MATCHCLOT_GEX2ADT, MATCHCLOT_GEX2ATAC, matchclot_defaults


def features(*types: str) -> pd.DataFrame:
    return pd.DataFrame({"feature_types": list(types)}, index=[f"f{i}" for i in range(len(types))])


@pytest.mark.parametrize(
    ("mod", "var", "expected"),
    [
        # The competition's files, 10x's and muon's feature types, in any case, whatever the modality is called.
        ("mod1", features("GEX", "GEX"), "rna"),
        ("mod2", features("ATAC"), "atac"),
        ("mod2", features("ADT"), "adt"),
        ("x", features("Gene Expression"), "rna"),
        ("x", features("Peaks", "Peaks"), "atac"),
        ("x", features("Antibody Capture"), "adt"),
        ("x", features("antibody capture"), "adt"),
        # Without feature types (or unknown ones), the modality's name: muon's names and the obvious ones.
        ("rna", pd.DataFrame(index=["a"]), "rna"),
        ("ATAC", pd.DataFrame(index=["a"]), "atac"),
        ("prot", pd.DataFrame(index=["a"]), "adt"),
        ("protein", features("CRISPR Guide Capture"), "adt"),
        ("chromatin", pd.DataFrame(index=[]), "atac"),
        ("spatial", pd.DataFrame(index=["a"]), None),
        ("spatial", features("nan"), None),
        # A few antibody features among genes (a 10x CITE-seq file that was not split): the genes decide.
        ("rna", features("Gene Expression", "Gene Expression", "Gene Expression", "Antibody Capture"), "rna"),
        # Feature types that name two assays equally do not decide; the name does.
        ("adt", features("Gene Expression", "Antibody Capture"), "adt"),
        ("other", features("Gene Expression", "Antibody Capture"), None),
        # Nor do a few recognised labels among many missing or unknown ones (genes left unlabelled).
        ("rna", features(*["nan"] * 5, "Antibody Capture", "Antibody Capture"), "rna"),
        ("rna", features(*["Custom"] * 5, "ADT"), "rna"),
        ("x", features("Custom", "ADT", "ADT"), "adt"),
        # Spaces around a label, and a categorical column.
        ("x", features(" Peaks ", "Peaks"), "atac"),
        ("x", features("ADT", "ADT").astype({"feature_types": "category"}), "adt"),
    ],
)
def test_assay_from_feature_types_then_the_name(mod, var, expected):
    assert assay_of(mod, var) == expected


def renamed(mdata: mudata.MuData, names: dict[str, str], feature_types: dict[str, str]) -> mudata.MuData:
    """The same cells under modality names no rule knows, with 10x's feature types."""
    mods = {}
    for old, new in names.items():
        adata = mdata[old].copy()
        adata.var["feature_types"] = feature_types[new]
        mods[new] = adata
    return mudata.MuData(mods)


def test_every_consumer_reads_the_same_assay_from_10x_feature_types():
    cite = mm.datasets.simulate_paired(120, ("rna", "adt"), n_genes=60, n_proteins=12, seed=0)
    cite = renamed(cite, {"rna": "expr", "adt": "tags"}, {"expr": "Gene Expression", "tags": "Antibody Capture"})
    multiome = mm.datasets.simulate_paired(120, ("rna", "atac"), n_genes=60, n_peaks=120, seed=0)
    multiome = renamed(multiome, {"rna": "expr", "atac": "acc"}, {"expr": "Gene Expression", "acc": "Peaks"})

    assert matchclot_defaults(cite, "expr", "tags") == (MATCHCLOT_GEX2ADT, ("gex", "other"))
    assert matchclot_defaults(cite, "tags", "expr") == (MATCHCLOT_GEX2ADT, ("other", "gex"))
    assert matchclot_defaults(multiome, "expr", "acc") == (MATCHCLOT_GEX2ATAC, ("gex", "other"))

    mm.pp.lsi_harmony(cite, n_comps=8, batch_key=None)
    mm.pp.lsi_harmony(multiome, n_comps=8, batch_key=None)
    kinds = {mod: data[mod].uns["X_lsi_harmony"]["params"]["kind"] for data in (cite, multiome) for mod in data.mod}
    assert kinds == {"expr": "rna", "tags": "adt", "acc": "atac"}

    mm.model.CLUE.setup_mudata(cite, batch_key=None)
    assert mm.model.CLUE(cite).setup_args["likelihoods"] == {"expr": "nb", "tags": "nb"}
    mm.model.CLUE.setup_mudata(multiome, batch_key=None)
    model = mm.model.CLUE(multiome)
    assert model.setup_args["likelihoods"] == {"expr": "nb", "acc": "bernoulli"}
    assert model.init_params["config"] == "multiome"


def test_clip_gives_an_unrecognised_modality_the_rna_role_as_lsi_harmony_embeds_it():
    mdata = mm.datasets.simulate_paired(60, ("rna", "adt"), n_genes=20, n_proteins=8, seed=0)
    mdata = renamed(mdata, {"adt": "prot", "rna": "expr"}, {"prot": "ADT", "expr": "Custom"})
    assert matchclot_defaults(mdata, "prot", "expr") == (MATCHCLOT_GEX2ADT, ("other", "gex"))
    assert matchclot_defaults(mdata, "expr", "prot") == (MATCHCLOT_GEX2ADT, ("gex", "other"))


def test_clip_roles_of_a_pair_without_rna_follow_the_assays_not_the_argument_order():
    mdata = mm.datasets.simulate_paired(60, ("atac", "adt"), n_peaks=40, n_proteins=8, seed=0)
    assert matchclot_defaults(mdata, "atac", "adt") == (MATCHCLOT_GEX2ADT, ("gex", "other"))
    assert matchclot_defaults(mdata, "adt", "atac") == (MATCHCLOT_GEX2ADT, ("other", "gex"))


def test_lsi_harmony_says_when_it_cannot_tell_the_assay(monkeypatch):
    from scanpy import logging as logg

    messages = []
    monkeypatch.setattr(logg, "warning", lambda message, *args, **kwargs: messages.append(message))
    mdata = mm.datasets.simulate_paired(80, ("rna", "adt"), n_genes=30, n_proteins=8, seed=0)
    mdata = renamed(mdata, {"rna": "rna", "adt": "cite"}, {"rna": "GEX", "cite": "Custom"})
    mm.pp.lsi_harmony(mdata, n_comps=4, batch_key=None)
    assert mdata["cite"].uns["X_lsi_harmony"]["params"]["kind"] == "rna"
    (message,) = [message for message in messages if "assay" in message]
    assert "['cite']" in message and "name the modality 'adt'" in message


def test_clue_likelihood_per_modality_is_checked():
    mdata = mm.datasets.simulate_paired(60, ("rna", "atac"), n_genes=20, n_peaks=40, seed=0)
    for mod in mdata.mod:
        mdata[mod].obsm["X_pca"] = np.random.default_rng(0).normal(size=(mdata[mod].n_obs, 4)).astype(np.float32)
    mm.model.CLUE.setup_mudata(mdata, rep_key="X_pca", likelihood={"atac": "nb"})
    assert mm.model.CLUE(mdata).setup_args["likelihoods"] == {"rna": "nb", "atac": "nb"}
    with pytest.raises(KeyError, match="likelihood names modalities \\['ATAC'\\]"):
        mm.model.CLUE.setup_mudata(mdata, rep_key="X_pca", likelihood={"ATAC": "bernoulli"})
    with pytest.raises(ValueError, match="likelihood must be a name"):
        mm.model.CLUE.setup_mudata(mdata, rep_key="X_pca", likelihood=["nb", "bernoulli"])
    with pytest.raises(ValueError, match="likelihood=5 for 'rna'"):
        mm.model.CLUE.setup_mudata(mdata, rep_key="X_pca", likelihood={"rna": 5})
