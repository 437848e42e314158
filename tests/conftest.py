"""Shared fixtures: the bundled real starters, the competition folders and small simulated data."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import mudata
import pytest

import mumatch as mm

mudata.set_options(pull_on_update=False)
warnings.filterwarnings("ignore", module="mudata")

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    """Where the real competition folders lie: $MUMATCH_DATA, else ../shared/data beside the repository."""
    return Path(os.environ.get("MUMATCH_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = shared_data_root()
    if not (root / "neurips2021_starter").exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"real data missing at {root}; CI must have ../shared/data (or set MUMATCH_DATA)")
        pytest.skip(f"real data not found at {root} (set MUMATCH_DATA)")
    return root


@pytest.fixture(scope="session")
def _bundled() -> dict[str, mudata.MuData]:
    return {task: mm.datasets.bmmc_starter(task) for task in ("cite", "multiome")}


@pytest.fixture
def cite(_bundled) -> mudata.MuData:
    """The bundled CITE-seq starter (RNA + ADT), a fresh copy per test."""
    return _bundled["cite"].copy()


@pytest.fixture
def multiome(_bundled) -> mudata.MuData:
    """The bundled Multiome starter (RNA + ATAC), a fresh copy per test."""
    return _bundled["multiome"].copy()


@pytest.fixture
def simulated() -> mudata.MuData:
    """Small simulated RNA + ATAC data with three batches."""
    return mm.datasets.simulate_paired(600, ("rna", "atac"), n_batches=3, n_genes=400, n_peaks=1200, seed=1)


@pytest.fixture(autouse=True)
def _short_pipeline(monkeypatch):
    """The CLI tests check the wiring, not the quality: train the pipeline's CLIP models for a few epochs only."""
    import mumatch._pipeline

    monkeypatch.setattr(mumatch._pipeline, "TRAIN_OPTIONS", {"max_epochs": 3})
    monkeypatch.setattr(mumatch._pipeline, "N_SEED_MODELS", 2)
