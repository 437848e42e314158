import numpy as np
import pytest

import mumatch as mm
from tests.helpers import assert_unchanged, snapshot
from tests.pl.conftest import assert_drawn


def test_confidence_violins_per_cell_type(matched, tmp_path):
    ax = mm.pl.confidence(matched, "match", groupby="cell_type", show=False)
    assert_drawn(ax.get_figure(), tmp_path)
    labels = [label.get_text() for label in ax.get_yticklabels()]
    n_types = matched["rna"].obs["cell_type"].iloc[-279:].nunique()
    assert len(labels) == n_types
    assert any(label.startswith("CD14+ Mono (") for label in labels)
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["rna", "atac"]


def test_confidence_without_groups_and_entropy(matched, tmp_path):
    for mod in ("rna", "atac"):
        matched[mod].obs["match_entropy"] = -np.log(matched[mod].obs["match_confidence"])
    ax = mm.pl.confidence(matched, groupby=None, value="entropy", save=tmp_path / "c.png", show=False)
    # One violin per modality, no legend: each with its own count of matched cells (not 'rna (279 / 0)').
    counts = {mod: matched[mod].obs["match_entropy"].notna().sum() for mod in ("rna", "atac")}
    assert [label.get_text() for label in ax.get_yticklabels()] == [f"{mod} ({n})" for mod, n in counts.items()]
    assert "nats" in ax.get_xlabel()
    assert (tmp_path / "c.png").exists()


def test_confidence_one_modality(matched):
    ax = mm.pl.confidence(matched, mods=["atac"], show=False)
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["atac"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"key": "other"}, KeyError, "match_ot"),
        ({"groupby": "not_a_column"}, KeyError, "groupby"),
        ({"value": "certainty"}, ValueError, "value"),
        ({"mods": ["adt"]}, KeyError, "mods"),
    ],
)
def test_confidence_bad_input(matched, kwargs, error, message):
    before = snapshot(matched)
    with pytest.raises(error, match=message):
        mm.pl.confidence(matched, show=False, **kwargs)
    assert_unchanged(before, matched)


def test_confidence_no_matched_cell(matched):
    for mod in ("rna", "atac"):
        matched[mod].obs["match_confidence"] = np.nan
    with pytest.raises(ValueError, match="no cell was matched"):
        mm.pl.confidence(matched, show=False)


def test_confidence_whole_number_float_labels_are_the_integer_labels(matched):
    for mod in ("rna", "atac"):
        matched[mod].obs["cluster"] = matched[mod].obs["cell_type"].cat.codes.astype(int)
    # An integer column that gained a NaN in one modality is float there: 1.0 is still cluster '1'.
    matched["rna"].obs.loc[matched["rna"].obs_names[-3:], "cluster"] = np.nan
    assert matched["rna"].obs["cluster"].dtype == float
    ax = mm.pl.confidence(matched, groupby="cluster", show=False)
    groups = [label.get_text().split(" (")[0] for label in ax.get_yticklabels()]
    n_clusters = matched["atac"].obs["cluster"].iloc[-279:].nunique()
    assert groups[:n_clusters] == sorted(groups[:n_clusters], key=int)  # numbers in numeric order
    assert len(groups) == n_clusters + 1  # and 'NA' for the three unlabelled cells
    assert groups[-1] == "NA"
    assert not any(group.endswith(".0") for group in groups)
