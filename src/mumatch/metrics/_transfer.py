"""Label-transfer accuracy."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from mudata import MuData

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
        missing prediction or truth are left out.
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
    predicted = pd.Series(np.asarray(predicted, dtype=object))
    truth = pd.Series(np.asarray(truth, dtype=object))
    if predicted.size != truth.size:
        raise ValueError(f"{predicted.size} predicted labels but {truth.size} true labels")
    known = predicted.notna().to_numpy() & truth.notna().to_numpy()
    if not known.any():
        raise ValueError("no cell has both a predicted and a true label")
    correct = predicted[known].astype(str).to_numpy() == truth[known].astype(str).to_numpy()
    if not balanced:
        return float(correct.mean())
    classes = truth[known].astype(str).to_numpy()
    return float(np.mean([correct[classes == label].mean() for label in np.unique(classes)]))
