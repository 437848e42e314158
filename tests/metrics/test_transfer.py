from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mumatch.metrics import label_transfer_accuracy


def test_accuracy_plain_and_balanced():
    truth = ["a", "a", "a", "b"]
    predicted = ["a", "a", "a", "a"]
    assert label_transfer_accuracy(predicted, truth) == 0.75
    assert label_transfer_accuracy(predicted, truth, balanced=True) == 0.5


def test_missing_predictions_are_left_out():
    assert label_transfer_accuracy(pd.Series(["a", None, "b"]), ["a", "b", "c"]) == 0.5


def test_mudata(cite):
    obs = cite["rna"].obs
    cite.mod["rna"].obs["predicted"] = obs["cell_type"].astype(str).where(np.arange(cite["rna"].n_obs) % 2 == 0, "x")
    accuracy = label_transfer_accuracy(cite, key="predicted", mod="rna")
    assert accuracy == pytest.approx(np.mean(np.arange(cite["rna"].n_obs) % 2 == 0), abs=0.01)


def test_bad_inputs(cite):
    with pytest.raises(ValueError, match="labels"):
        label_transfer_accuracy(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="mod="):
        label_transfer_accuracy(cite)
    with pytest.raises(KeyError, match="key"):
        label_transfer_accuracy(cite, key="nothing", mod="rna")
    with pytest.raises(ValueError, match="no cell"):
        label_transfer_accuracy([None], ["a"])


def test_series_are_compared_by_cell_and_floats_as_integers():
    truth = pd.Series(["a", "b", "c"], index=["x", "y", "z"])
    assert label_transfer_accuracy(truth.iloc[::-1], truth) == 1.0  # same cells in another order
    with pytest.raises(ValueError, match="different cells"):
        label_transfer_accuracy(pd.Series(["a"], index=["x"]), pd.Series(["a"], index=["w"]))
    # An integer label column that gained a NaN is float: 1.0 is label 1.
    assert label_transfer_accuracy(pd.Series([1.0, 2.0, np.nan]), pd.Series([1, 2, 3])) == 1.0


def test_the_text_nan_is_left_out_as_a_missing_label():
    assert label_transfer_accuracy(pd.Series(["a", "nan", "b"]), ["a", "b", "c"]) == 0.5
    assert label_transfer_accuracy(["a", "b", "b"], pd.Series(["a", "nan", "c"])) == 0.5


@pytest.mark.parametrize("argument", ["predicted", "truth"])
def test_two_dimensional_labels_raise(argument):
    labels = {"predicted": np.array(["a", "b", "a", "b"]), "truth": np.array(["a", "b", "a", "a"])}
    labels[argument] = labels[argument].reshape(2, 2)
    with pytest.raises(ValueError, match=f"'{argument}' labels must be one-dimensional.*shape \\(2, 2\\)"):
        label_transfer_accuracy(labels["predicted"], labels["truth"])
