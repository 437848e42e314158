"""Label-transfer accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from mudata import MuData

from .._layout import known_labels, label_name
from .._validate import check_mod, check_obs_key


def label_transfer_accuracy(
    predicted: Sequence | np.ndarray | pd.Series | MuData,
    truth: Sequence | np.ndarray | pd.Series | str | None = None,
    *,
    key: str | None = None,
    truth_key: str = "cell_type",
    mod: str | None = None,
    balanced: bool = False,
) -> float:
    """Fraction of cells whose transferred label equals their true label.

    Parameters
    ----------
    predicted
        Predicted labels; or a MuData whose ``mdata[mod].obs[key]`` holds them.
    truth
        True labels (ignored for a MuData).
    key, truth_key, mod
        With a MuData: the columns of ``mdata[mod].obs`` holding the predicted and the true labels. Cells with a
        missing prediction or truth (a missing value, or the text ``"nan"`` that ``astype(str)`` makes of one) are
        left out.
    balanced
        Average the per-class accuracies (classes of the truth) instead of the cells'.

    Returns
    -------
    The accuracy in [0, 1].
    """
    if isinstance(predicted, MuData):
        if mod is None or key is None:
            raise ValueError("with a MuData, pass mod= (the modality) and key= (the obs column of predicted labels)")
        check_mod(predicted, mod)
        check_obs_key(predicted, mod, key, "key")
        check_obs_key(predicted, mod, truth_key, "truth_key")
        obs = predicted[mod].obs
        predicted, truth = obs[key], obs[truth_key]
    if truth is None:
        raise ValueError("'truth' is required when 'predicted' holds labels")
    if isinstance(predicted, pd.Series) and isinstance(truth, pd.Series) and not predicted.index.equals(truth.index):
        # Two labelled Series describe cells by name: compare each cell with itself, not by position.
        if not (predicted.index.is_unique and truth.index.is_unique) or set(predicted.index) != set(truth.index):
            raise ValueError(
                "predicted and truth are Series over different cells (their indexes differ); pass them over the same "
                "obs names, or as arrays in the same order"
            )
        truth = truth.reindex(predicted.index)
    predicted, truth = np.asarray(predicted, dtype=object), np.asarray(truth, dtype=object)
    for argument, labels in (("predicted", predicted), ("truth", truth)):
        if labels.ndim > 1:
            raise ValueError(
                f"'{argument}' labels must be one-dimensional (one label per cell), got shape {labels.shape}; "
                "pass a 1-d array, list or Series"
            )
    predicted, truth = pd.Series(predicted), pd.Series(truth)
    if predicted.size != truth.size:
        raise ValueError(f"{predicted.size} predicted labels but {truth.size} true labels")
    known = known_labels(predicted) & known_labels(truth)
    if not known.any():
        raise ValueError("no cell has both a predicted and a true label")
    # Labels compare by their text, whole-number floats as integers (a label column that gained a NaN is float).
    predicted_names = [label_name(value) for value in predicted[known]]
    classes = np.asarray([label_name(value) for value in truth[known]], dtype=object)
    correct = np.asarray(predicted_names, dtype=object) == classes
    if not balanced:
        return float(correct.mean())
    return float(np.mean([correct[classes == label].mean() for label in np.unique(classes)]))
