from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import mumatch as mm
from mumatch._layout import embed_block, unpaired_mask

from ..helpers import assert_unchanged, snapshot
from .test_match import _embedded, shared_embedding  # noqa: F401


@pytest.fixture
def matched(_embedded):  # noqa: F811
    mdata = _embedded["cite"].copy()
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared")
    return mdata


@pytest.mark.parametrize(("source", "target"), [("rna", "adt"), ("adt", "rna")])
def test_transfer_beats_the_majority_class(matched, source, target):
    mdata = matched
    mm.tl.transfer_labels(mdata, label_key="cell_type", source_mod=source, target_mod=target)
    obs = mdata[target].obs
    test = unpaired_mask(mdata, target, source)
    assert isinstance(obs["cell_type_match"].dtype, pd.CategoricalDtype)
    assert obs["cell_type_match"][test].notna().all() and obs["cell_type_match"][~test].isna().all()
    assert obs["cell_type_match_probability"][test].between(0, 1).all()
    accuracy = mm.metrics.label_transfer_accuracy(obs["cell_type_match"][test], obs["cell_type"][test])
    majority = obs["cell_type"][test].value_counts(normalize=True).iloc[0]
    assert accuracy > majority + 0.1, (accuracy, majority)
    assert mdata.uns["cell_type_match"]["params"]["source_mod"] == source


def test_vote_by_hand(cite):
    mdata = cite
    test_rna = np.flatnonzero(unpaired_mask(mdata, "rna", "adt"))[:2]
    test_adt = np.flatnonzero(unpaired_mask(mdata, "adt", "rna"))[:3]
    block = sp.csr_matrix(np.array([[0.2, 0.3, 0.5], [0.0, 0.0, 1.0]]))
    mdata.obsp["toy"] = embed_block(mdata, "rna", "adt", block, test_rna, test_adt)
    labels = np.array(["a", "b", "c"], dtype=object)
    mdata["adt"].obs["toy_label"] = None
    mdata["adt"].obs.iloc[test_adt, mdata["adt"].obs.columns.get_loc("toy_label")] = labels
    mm.tl.transfer_labels(mdata, "toy", label_key="toy_label", source_mod="adt", target_mod="rna", key_added="out")
    out = mdata["rna"].obs
    assert list(out["out"].iloc[test_rna]) == ["c", "c"]
    np.testing.assert_allclose(out["out_probability"].iloc[test_rna], [0.5, 1.0])
    assert out["out"].drop(out.index[test_rna]).isna().all()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"key": "missing"}, KeyError, "missing"),
        ({"label_key": "nope"}, KeyError, "nope"),
        ({"source_mod": "protein"}, KeyError, "protein"),
        ({"target_mod": "rna"}, ValueError, "differ"),
    ],
)
def test_bad_inputs_leave_mudata_unchanged(matched, kwargs, error, message):
    before = snapshot(matched)
    arguments = {"key": "match", "label_key": "cell_type", "source_mod": "rna", "target_mod": "adt", **kwargs}
    with pytest.raises(error, match=message):
        mm.tl.transfer_labels(matched, **arguments)
    assert_unchanged(before, matched)


def test_copy(matched):
    before = snapshot(matched)
    result = mm.tl.transfer_labels(matched, label_key="cell_type", source_mod="rna", target_mod="adt", copy=True)
    assert_unchanged(before, matched)
    assert "cell_type_match" in result["adt"].obs
