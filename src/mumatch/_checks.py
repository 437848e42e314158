"""Checks of plain values (numbers, integers), with numpy only.

The solvers of ``mumatch.ot`` use them without importing the AnnData stack that :mod:`mumatch._validate` needs for
its MuData checks.
"""

from __future__ import annotations

import numpy as np


def is_number(value: object) -> bool:
    """Whether ``value`` is a real number (Python or numpy), booleans excluded."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def check_positive(value: float, argument: str, *, allow_none: bool = False) -> None:
    """Raise unless ``value`` is a finite number > 0."""
    if value is None and allow_none:
        return
    if not is_number(value) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{argument} must be a finite number > 0, got {value!r}")


def check_int(value: int, argument: str, *, minimum: int = 1, allow_none: bool = False) -> None:
    """Raise unless ``value`` is an integer ≥ ``minimum``."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{argument} must be an integer >= {minimum}, got {value!r}")
