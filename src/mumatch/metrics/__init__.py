"""Metrics of a matching: match score, top-k accuracy, FOSCTTM and label-transfer accuracy."""

from ._matching import foscttm, match_score, top_k_accuracy
from ._transfer import label_transfer_accuracy

__all__ = ["foscttm", "label_transfer_accuracy", "match_score", "top_k_accuracy"]
