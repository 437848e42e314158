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


def _toy_plan_from_rna(mdata, block, rna_labels):
    """``block`` (unpaired rna × unpaired adt cells) stored without a record, and labels on those rna cells."""
    test_rna = np.flatnonzero(unpaired_mask(mdata, "rna", "adt"))[: block.shape[0]]
    test_adt = np.flatnonzero(unpaired_mask(mdata, "adt", "rna"))[: block.shape[1]]
    mdata.obsp["toy"] = embed_block(mdata, "rna", "adt", sp.csr_matrix(block), test_rna, test_adt)
    mdata["rna"].obs["toy_label"] = None
    mdata["rna"].obs.iloc[test_rna, mdata["rna"].obs.columns.get_loc("toy_label")] = rna_labels
    return test_adt


def test_vote_by_hand_along_the_columns_of_a_plan_without_a_record(cite):
    # The target's cells are the plan's columns here: without a record the plan is read both ways (P + Pᵀ).
    test_adt = _toy_plan_from_rna(cite, np.array([[0.2, 0.3, 0.5], [0.0, 0.0, 1.0]]), ["a", "b"])
    mm.tl.transfer_labels(cite, "toy", label_key="toy_label", source_mod="rna", target_mod="adt", key_added="out")
    out = cite["adt"].obs
    assert list(out["out"].iloc[test_adt]) == ["a", "a", "b"]
    np.testing.assert_allclose(out["out_probability"].iloc[test_adt], [1.0, 1.0, 2 / 3])
    assert out["out"].drop(out.index[test_adt]).isna().all()


def test_negative_plan_weights_cast_no_vote(cite):
    # Weights are clipped at 0 (as match_score does): adt cell 0's -1 from an 'a' cell does not outweigh, nor cancel,
    # the 0.5 from a 'b' cell.
    test_adt = _toy_plan_from_rna(cite, np.array([[-1.0, 0.2], [0.5, 0.0]]), ["a", "b"])
    mm.tl.transfer_labels(cite, "toy", label_key="toy_label", source_mod="rna", target_mod="adt", key_added="out")
    out = cite["adt"].obs
    assert list(out["out"].iloc[test_adt]) == ["b", "a"]
    np.testing.assert_allclose(out["out_probability"].iloc[test_adt], [1.0, 1.0])


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


def _paired_names(mdata, n):
    shared = mdata["rna"].obs_names.intersection(mdata["adt"].obs_names)[:n]
    return mdata["rna"].obs_names.get_indexer(shared), mdata["adt"].obs_names.get_indexer(shared)


def test_plan_over_paired_cells_is_read_in_its_stored_direction(cite):
    # Two cells measured in both modalities share obs names A and B. The plan sends rna A and rna B to adt A only,
    # so adt B receives nothing; reading the plan in both directions (P + Pᵀ) would give adt B the vote of rna A.
    mdata = cite
    rna, adt = _paired_names(mdata, 2)
    block = sp.csr_matrix(np.array([[1.0, 0.0], [1.0, 0.0]]))
    mdata.obsp["toy"] = embed_block(mdata, "rna", "adt", block, rna, adt)
    mdata.uns["toy"] = {"params": {"mod1": "rna", "mod2": "adt"}}
    mdata["rna"].obs["toy_label"] = pd.Categorical([None] * mdata["rna"].n_obs, categories=["x", "y"])
    mdata["rna"].obs.iloc[rna, mdata["rna"].obs.columns.get_loc("toy_label")] = ["y", "y"]
    mm.tl.transfer_labels(mdata, "toy", label_key="toy_label", source_mod="rna", target_mod="adt")
    out = mdata["adt"].obs["toy_label_toy"]
    assert out.iloc[adt[0]] == "y" and pd.isna(out.iloc[adt[1]])
    assert list(out.cat.categories) == ["x", "y"]  # the source's categories, unused ones too
    # The other way round, rows are the targets: rna A and rna B each take adt A's label.
    mdata["adt"].obs["numeric"] = np.nan
    mdata["adt"].obs.iloc[adt, mdata["adt"].obs.columns.get_loc("numeric")] = [7.0, 3.0]
    mm.tl.transfer_labels(mdata, "toy", label_key="numeric", source_mod="adt", target_mod="rna")
    back = mdata["rna"].obs["numeric_toy"]
    assert list(back.iloc[rna]) == [7.0, 7.0] and back.cat.categories.dtype.kind == "f"  # numbers stay numbers


def test_plan_without_direction_over_paired_cells_is_refused(cite):
    mdata = cite
    rna, adt = _paired_names(mdata, 2)
    mdata.obsp["toy"] = embed_block(mdata, "rna", "adt", sp.csr_matrix(np.eye(2)), rna, adt)
    before = snapshot(mdata)
    with pytest.raises(ValueError, match=r"uns\['toy'\]\['params'\]"):
        mm.tl.transfer_labels(mdata, "toy", label_key="cell_type", source_mod="rna", target_mod="adt")
    assert_unchanged(before, mdata)
    # Explicitly stored zeros on those cells link nothing: such a plan reads the same both ways.
    stored_zeros = embed_block(mdata, "rna", "adt", sp.csr_matrix(np.eye(2)), rna, adt)
    stored_zeros.data[:] = 0.0
    mdata.obsp["zeros"] = stored_zeros
    mm.tl.transfer_labels(mdata, "zeros", label_key="cell_type", source_mod="rna", target_mod="adt")
    assert mdata["adt"].obs["cell_type_zeros"].isna().all()
    assert mdata.obsp["zeros"].nnz == 2  # the caller's plan keeps its stored entries


@pytest.mark.parametrize(
    ("uns", "key_added", "message"),
    [
        ({"params": {"mod1": "rna", "mod2": "protein"}}, None, "matches 'rna'"),
        (None, "match", "names a plan"),
    ],
)
def test_plan_of_other_modalities_or_its_key_refused(matched, uns, key_added, message):
    if uns is not None:
        matched.uns["match"] = uns
    before = snapshot(matched)
    with pytest.raises(ValueError, match=message):
        mm.tl.transfer_labels(matched, label_key="cell_type", source_mod="rna", target_mod="adt", key_added=key_added)
    assert_unchanged(before, matched)


def test_plan_of_all_cells_transfers_from_the_source_side_only(matched):
    mdata = matched
    # One block: the test adt cells have no batch label, the training cells have one.
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_shared", cells="all", batch_key=None, key_added="all")
    mm.tl.transfer_labels(mdata, "all", label_key="cell_type", source_mod="rna", target_mod="adt")
    plan = sp.csr_matrix(mdata.obsp["all"])
    rna = mdata.obs_names.get_indexer(mdata["rna"].obs_names)
    adt = mdata.obs_names.get_indexer(mdata["adt"].obs_names)
    by_hand = plan[rna][:, adt].T.tocsr()  # adt cells × rna cells, the plan read from rna to adt
    labels = mdata["rna"].obs["cell_type"]
    one_hot = pd.get_dummies(labels).to_numpy(dtype=float)
    votes = np.asarray(by_hand @ one_hot)
    matched_rows = votes.sum(axis=1) > 0
    expected = np.asarray(pd.get_dummies(labels).columns)[votes.argmax(axis=1)]
    predicted = mdata["adt"].obs["cell_type_all"].astype(object).to_numpy()
    assert matched_rows.all()  # with cells="all" every adt cell is matched
    assert (predicted == expected).all()
    np.testing.assert_allclose(
        mdata["adt"].obs["cell_type_all_probability"], votes.max(axis=1) / votes.sum(axis=1), rtol=1e-5
    )


def test_prediction_keeps_the_source_categories(matched):
    # A truth column with the same categories compares with the prediction (and colours like it in scanpy's plots).
    mdata = matched
    categories = ["B", "Mono", "T", "pDC"]  # pDC labels no cell
    rng = np.random.default_rng(0)
    mdata["rna"].obs["toy"] = pd.Categorical(rng.choice(categories[:3], mdata["rna"].n_obs), categories=categories)
    mdata["adt"].obs["toy"] = pd.Categorical(rng.choice(categories[:3], mdata["adt"].n_obs), categories=categories)
    mm.tl.transfer_labels(mdata, "match", label_key="toy", source_mod="rna", target_mod="adt")
    predicted = mdata["adt"].obs["toy_match"]
    assert list(predicted.cat.categories) == categories
    assert ((predicted == mdata["adt"].obs["toy"]) | predicted.isna()).any()
    # Labels that are not categorical come out in sorted order, as astype("category") gives them.
    mdata["rna"].obs["number"] = rng.choice([2, 0, 1], mdata["rna"].n_obs)
    mm.tl.transfer_labels(mdata, "match", label_key="number", source_mod="rna", target_mod="adt")
    assert list(mdata["adt"].obs["number_match"].cat.categories) == [0, 1, 2]


def test_no_label_reaching_the_target_is_warned(matched, monkeypatch):
    from scanpy import logging as logg

    messages = []
    monkeypatch.setattr(logg, "warning", lambda message, *args, **kwargs: messages.append(message))
    unpaired = unpaired_mask(matched, "rna", "adt")
    matched["rna"].obs["paired_only"] = matched["rna"].obs["cell_type"].astype(object).where(~unpaired)
    mm.tl.transfer_labels(matched, label_key="paired_only", source_mod="rna", target_mod="adt")
    assert matched["adt"].obs["paired_only_match"].isna().all()
    assert any("no cell of 'adt' received a label" in message for message in messages)


def test_the_text_nan_is_no_label(matched):
    # astype(str) turns missing labels into the text "nan": those cells vote for nothing, as missing ones.
    mdata = matched
    labels = mdata["rna"].obs["cell_type"].astype(object).copy()
    labels.iloc[::2] = np.nan
    mdata["rna"].obs["as_text"] = labels.astype(str)
    mdata["rna"].obs["as_missing"] = labels
    mdata["rna"].obs["as_category"] = pd.Categorical(labels.astype(str))
    for column in ("as_text", "as_missing", "as_category"):
        mm.tl.transfer_labels(mdata, label_key=column, source_mod="rna", target_mod="adt")
    obs = mdata["adt"].obs
    assert "nan" not in list(obs["as_text_match"].cat.categories)
    assert "nan" not in list(obs["as_category_match"].cat.categories)
    pd.testing.assert_series_equal(
        obs["as_text_match"].astype(str), obs["as_missing_match"].astype(str), check_names=False
    )
    np.testing.assert_allclose(obs["as_text_match_probability"], obs["as_missing_match_probability"])


def test_rerun_after_a_transfer_the_other_way_under_the_same_key(matched):
    # One key_added written in both modalities (the default key is the same both ways) is transfer_labels' own.
    mdata = matched
    for source, target in [("rna", "adt"), ("adt", "rna"), ("rna", "adt")]:
        mm.tl.transfer_labels(mdata, label_key="cell_type", source_mod=source, target_mod=target, key_added="pred")
    assert list(mdata.uns["pred"]["targets"]) == ["adt", "rna"]
    assert mdata.uns["pred"]["params"]["target_mod"] == "adt"
    # Still no overwriting a column the function did not write
    mdata["rna"].obs["mine"] = "x"
    with pytest.raises(ValueError, match=r"would replace mdata\['rna'\].obs\['mine'\]"):
        mm.tl.transfer_labels(mdata, label_key="cell_type", source_mod="adt", target_mod="rna", key_added="mine")
