"""Data sets: the NeurIPS 2021 competition format, bundled real starters and simulated paired data."""

from ._bundled import bmmc_starter
from ._neurips2021 import prediction_matrix, read_neurips2021, read_neurips2021_files, write_prediction
from ._simulate import simulate_paired

__all__ = [
    "bmmc_starter",
    "prediction_matrix",
    "read_neurips2021",
    "read_neurips2021_files",
    "simulate_paired",
    "write_prediction",
]
