from __future__ import annotations

import anndata as ad
import scipy.sparse as sp

from mumatch.cli import main


def test_demo_prints_scores(tmp_path, capsys):
    assert main(["demo", "--data", "cite", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "match score" in out and "random baseline" in out
    assert (tmp_path / "result.h5mu").exists() and (tmp_path / "scores.csv").exists()


def test_run_writes_prediction(data_root, tmp_path):
    folder = data_root / "neurips2021_starter" / "multiome"
    args = ["run", "--out", str(tmp_path / "prediction.h5ad")]
    for part in ("train_mod1", "train_mod2", "train_sol", "test_mod1", "test_mod2", "test_sol"):
        args += [f"--{part.replace('_', '-')}", str(folder / f"{part}.h5ad")]
    assert main(args) == 0
    prediction = ad.read_h5ad(tmp_path / "prediction.h5ad")
    assert prediction.shape == (279, 279) and sp.issparse(prediction.X)


def test_demo_unknown_data(tmp_path):
    import pytest

    with pytest.raises(SystemExit):
        main(["demo", "--data", "/nonexistent/folder/x_", "--out", str(tmp_path)])
