from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest

import mumatch as mm
from tests.conftest import REPO

EXPECTED = {"cite": ("rna", "adt", 311, 289), "multiome": ("rna", "atac", 221, 279)}


@pytest.mark.parametrize("task", EXPECTED)
def test_bmmc_starter(task):
    mod1, mod2, n_train, n_test = EXPECTED[task]
    mdata = mm.datasets.bmmc_starter(task)
    assert mdata[mod1].n_obs == mdata[mod2].n_obs == n_train + n_test
    assert (mdata[mod1].obs["split"] == "train").sum() == n_train
    truth = mdata.obsp["match_true"]
    assert truth.nnz == n_test
    assert np.all(truth.getnnz(axis=1) <= 1) and np.all(truth.getnnz(axis=0) <= 1)
    assert (mdata[mod1].X != mdata[mod1].layers["counts"]).nnz == 0
    assert mdata[mod1].obs["cell_type"].notna().all()


def test_unknown_task():
    with pytest.raises(ValueError, match="choose one of"):
        mm.datasets.bmmc_starter("teaseq")


def test_wheel_ships_the_bundled_data(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("mumatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "mumatch/data/bmmc_cite.h5mu" in names and "mumatch/data/bmmc_multiome.h5mu" in names
    assert sum(zipfile.ZipFile(wheel).getinfo(n).file_size for n in names if n.endswith(".h5mu")) < 3e6
