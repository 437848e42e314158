from __future__ import annotations

import logging
import subprocess
import sys

import anndata as ad
import pandas as pd
import pytest
import scipy.sparse as sp

from mumatch.cli import main

COMPETITION_PARTS = ("train_mod1", "train_mod2", "train_sol", "test_mod1", "test_mod2")


def run_args(folder, out, *extra, replaced=None, parts=COMPETITION_PARTS) -> list[str]:
    """``mumatch run`` arguments for the competition files of ``folder``; ``replaced`` maps a part to another file."""
    args = ["run", "--out", str(out), *extra]
    for part in parts:
        path = (replaced or {}).get(part, folder / f"{part}.h5ad")
        args += [f"--{part.replace('_', '-')}", str(path)]
    return args


def test_demo_prints_scores(tmp_path, capsys):
    assert main(["demo", "--data", "cite", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "match score" in out and "random baseline" in out
    assert (tmp_path / "result.h5mu").exists() and (tmp_path / "scores.csv").exists()
    scores = pd.read_csv(tmp_path / "scores.csv", index_col="method")
    # FOSCTTM of the embedding behind the plan (the sparse plan's own is ~0.5 from its ties); random: 0.5.
    assert scores.loc["random baseline", "FOSCTTM"] == pytest.approx(0.5)
    assert scores.loc["CLIP + OT", "FOSCTTM"] < 0.45  # 3 epochs here (conftest); 0.09 with the defaults
    assert scores.loc["CLIP + OT", "match score"] > 1.5 * scores.loc["random baseline", "match score"]


def test_run_writes_prediction(data_root, tmp_path, capsys):
    folder = data_root / "neurips2021_starter" / "multiome"
    # The prediction goes into a folder that does not exist yet.
    args = run_args(folder, tmp_path / "new" / "prediction.h5ad", parts=(*COMPETITION_PARTS, "test_sol"))
    assert main(args) == 0
    prediction = ad.read_h5ad(tmp_path / "new" / "prediction.h5ad")
    assert prediction.shape == (279, 279) and sp.issparse(prediction.X)
    # With --test-sol the scores are printed; the written plan's (the table's last row) is the competition's score of
    # the written file against the solution, computed here by hand: mean over rows of P[i, true(i)] / sum_j P[i, j].
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    printed = float(rows[-1].strip("|").split("|")[header.index("match score")])
    solution = ad.read_h5ad(folder / "test_sol.h5ad")
    truth = sp.csr_matrix(solution[prediction.obs_names, prediction.var_names].X)
    weights = sp.csr_matrix(prediction.X).toarray()
    expected = (truth.multiply(weights).sum(axis=1).A1 / weights.sum(axis=1)).mean()
    assert printed == pytest.approx(expected, abs=1e-4)


def test_demo_on_a_folder_without_ground_truth_writes_the_result(data_root, tmp_path, capsys):
    import shutil

    folder = tmp_path / "own"
    shutil.copytree(data_root / "neurips2021_starter" / "cite", folder)
    (folder / "test_sol.h5ad").unlink()
    for name in ("full_rna.h5ad", "full_mod2.h5ad"):
        (folder / name).unlink(missing_ok=True)
    assert main(["demo", "--data", str(folder), "--out", str(tmp_path / "out")]) == 0
    assert "no test_sol.h5ad: no scores" in capsys.readouterr().out
    assert (tmp_path / "out" / "result.h5mu").exists() and not (tmp_path / "out" / "scores.csv").exists()


def test_run_refuses_a_folder_as_out_and_a_missing_test_sol_before_any_work(data_root, tmp_path, monkeypatch):
    from mumatch import cli

    monkeypatch.setattr(cli.datasets, "read_neurips2021_files", lambda files: pytest.fail("read before checking"))
    folder = data_root / "neurips2021_starter" / "multiome"
    files = {part: str(folder / f"{part}.h5ad") for part in ("train_mod1", "train_mod2", "train_sol")}
    files.update({part: str(folder / f"{part}.h5ad") for part in ("test_mod1", "test_mod2", "test_sol")})
    with pytest.raises(SystemExit, match="is a folder; name the prediction file"):
        cli.run(files, str(tmp_path))
    with pytest.raises(SystemExit, match="--test-sol .* does not exist"):
        cli.run({**files, "test_sol": str(folder / "test_sol.h5")}, str(tmp_path / "p.h5ad"))


def test_demo_unknown_data(tmp_path):
    import pytest

    with pytest.raises(SystemExit):
        main(["demo", "--data", "/nonexistent/folder/x_", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="not one of"):  # a misspelt name, in an existing folder
        main(["demo", "--data", "multiom", "--out", str(tmp_path)])


def test_seed_ensemble_shrinks_with_paired_cells(monkeypatch):
    import mumatch._pipeline as pipeline

    monkeypatch.setattr(pipeline, "N_SEED_MODELS", 5)
    sizes = [pipeline.seed_ensemble_size(n) for n in (1, 221, 311, 500, 1000, 3330, 100_000)]
    assert sizes == [5, 5, 5, 3, 2, 1, 1]


def test_ensemble_choice_per_batch_or_by_size(simulated, cite):
    from mumatch._pipeline import ensemble_choice

    # Paired cells from three batches: MatchCLOT's one model per held-out batch.
    assert ensemble_choice(simulated, "rna", "atac") == "batch"
    # One training batch: a seed ensemble (the conftest caps it at 2 models).
    assert ensemble_choice(cite, "rna", "adt") == 2
    # One batch and unlabelled paired cells: still one batch, as train_clip counts them.
    one = simulated.copy()
    for mod in ("rna", "atac"):
        column = one[mod].obs["batch"].astype(object)
        column[column != "batch0"] = None
        one[mod].obs["batch"] = column
    assert ensemble_choice(one, "rna", "atac") != "batch"


@pytest.mark.parametrize("verbosity", [1, 3])
def test_other_libraries_are_quiet_below_hints_and_restored_after(verbosity):
    import logging
    import warnings

    from mumatch.cli import QUIET_LOGGERS, _quiet_libraries

    lightning = logging.getLogger(QUIET_LOGGERS[1])
    original = lightning.level
    lightning.setLevel(logging.INFO)  # as Lightning sets it on import
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _quiet_libraries(verbosity):
            quiet = lightning.getEffectiveLevel() >= logging.WARNING
            warnings.warn("from 0.4 update() will not pull", FutureWarning, stacklevel=1)
    assert quiet == (verbosity < 3)
    assert len(caught) == (0 if verbosity < 3 else 1)
    assert lightning.level == logging.INFO
    lightning.setLevel(original)


def test_demo_on_clip_and_clue_writes_all_three_plans(tmp_path, capsys):
    import mudata

    assert main(["demo", "--data", "cite", "--out", str(tmp_path), "--embedding", "clip+clue"]) == 0
    scores = pd.read_csv(tmp_path / "scores.csv", index_col="method")
    assert list(scores.index) == ["random baseline", "CLIP + OT", "CLUE + OT", "CLIP + CLUE + OT"]
    for method in ("CLIP + OT", "CLUE + OT", "CLIP + CLUE + OT"):
        assert scores.loc[method, "match score"] > 1.5 * scores.loc["random baseline", "match score"]
        assert scores.loc[method, "FOSCTTM"] < 0.45
    result = mudata.read_h5mu(tmp_path / "result.h5mu")
    assert {"match_clip", "match_clue", "match_clip_clue"} <= set(result.obsp)
    assert "X_clue" in result["adt"].obsm
    # The combined plan's representation: unit rows whose inner products are the mean of the two cosines.
    import numpy as np

    joint = np.asarray(result["rna"].obsm["X_clip_clue"])
    np.testing.assert_allclose(np.linalg.norm(joint, axis=1), 1.0, rtol=1e-5)


def test_run_on_clue_writes_its_plan(data_root, tmp_path, capsys):
    folder = data_root / "neurips2021_starter" / "cite"
    args = run_args(folder, tmp_path / "prediction.h5ad", "--embedding", "clue")
    assert main(args) == 0
    assert "(match_clue)" in capsys.readouterr().out
    assert ad.read_h5ad(tmp_path / "prediction.h5ad").shape == (289, 289)


def test_unknown_embedding_is_refused_before_any_work(tmp_path, capsys):
    from mumatch import cli
    from mumatch._pipeline import stages

    with pytest.raises(SystemExit):
        main(["demo", "--data", "cite", "--out", str(tmp_path), "--embedding", "scglue"])
    assert "invalid choice" in capsys.readouterr().err
    for call in (
        lambda: cli.demo("cite", str(tmp_path), embedding="CLIP"),
        lambda: cli.run({}, str(tmp_path / "p.h5ad"), embedding="glue"),
        lambda: stages("rna", "adt", 0, embedding="clue+clip"),
    ):
        with pytest.raises(ValueError, match=r"embedding must be one of \['clip', 'clue', 'clip\+clue'\]"):
            call()
    assert not (tmp_path / "result.h5mu").exists()


def test_lightning_imported_during_a_command_stays_quiet():
    # Lightning is imported on first use (inside the command) and sets its loggers' levels then: its per-model
    # "GPU available" lines and tips must still not reach the user (they did, five times per demo).
    code = (
        "import logging, sys\n"
        "from mumatch.cli import _quiet_libraries\n"
        "assert 'lightning' not in sys.modules\n"
        "with _quiet_libraries(1):\n"
        "    import lightning.pytorch\n"
        "    print(logging.getLogger('lightning.pytorch.utilities.rank_zero').getEffectiveLevel())\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(result.stdout.strip()) >= logging.WARNING


def test_input_errors_are_one_line_and_exit_2(tmp_path, capsys):
    args = run_args(tmp_path, tmp_path / "p.h5ad")
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith("mumatch run: error: missing competition files") and "Traceback" not in error
    import pytest

    with pytest.raises(FileNotFoundError):  # from --verbosity 3 on, the traceback
        main(["--verbosity", "3", *args])


def test_version(capsys):
    import pytest

    import mumatch

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"mumatch {mumatch.__version__}"


def test_an_unwritable_out_is_refused_in_one_line_before_any_work(data_root, tmp_path, monkeypatch, capsys):
    # A path whose folder cannot be made (here: below a file) was found only after the pipeline (demo) or failed with
    # a traceback (run: mkdir's FileExistsError); a folder one cannot write in failed after the pipeline in both.
    from mumatch import cli

    monkeypatch.setattr(cli, "run_pipeline", lambda *args, **kwargs: pytest.fail("pipeline run before checking --out"))
    monkeypatch.setattr(cli.datasets, "read_neurips2021_files", lambda files: pytest.fail("read before checking"))
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(SystemExit, match="--out .*: cannot write in .*; name a writable place"):
        main(["demo", "--data", "cite", "--out", str(tmp_path / "a_file" / "demo")])
    folder = data_root / "neurips2021_starter" / "cite"
    args = run_args(folder, tmp_path / "a_file" / "prediction.h5ad")
    with pytest.raises(SystemExit, match="--out .*: cannot write in .*; name a writable place"):
        main(args)


@pytest.mark.parametrize("seed", ["-1", "2147483648", "4294967296", "1.5"])
def test_a_seed_out_of_range_is_refused_by_the_parser(seed, tmp_path, monkeypatch, capsys):
    # Seeds from 2**31 on crashed Harmony with a TypeError traceback once the data was read; -1 failed only then.
    from mumatch import cli

    monkeypatch.setattr(cli, "run_pipeline", lambda *args, **kwargs: pytest.fail("pipeline run with a bad seed"))
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--data", "cite", "--out", str(tmp_path), f"--seed={seed}"])
    assert exit_info.value.code == 2
    assert "argument --seed" in capsys.readouterr().err


def test_a_file_that_is_not_h5ad_is_named_in_one_line(data_root, tmp_path, capsys):
    folder = data_root / "neurips2021_starter" / "cite"
    (tmp_path / "test_mod2.h5ad").write_text("barcode,CD3\n")
    args = run_args(folder, tmp_path / "p.h5ad", replaced={"test_mod2": tmp_path / "test_mod2.h5ad"})
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.startswith("mumatch run: error: test_mod2: ") and "not a readable .h5ad file" in error
    assert "Traceback" not in error and not (tmp_path / "p.h5ad").exists()


def test_test_files_with_no_batch_in_common_are_refused_before_training(data_root, tmp_path, monkeypatch, capsys):
    # test_mod2 labelled with another batch than test_mod1: match_ot found nothing to match only after training, and
    # its message told the command line's user to "pass batch_key=None", which no option of `mumatch run` does.
    import mumatch

    monkeypatch.setattr(mumatch.tl, "train_clip", lambda *args, **kwargs: pytest.fail("trained before checking"))
    folder = data_root / "neurips2021_starter" / "cite"
    test_mod2 = ad.read_h5ad(folder / "test_mod2.h5ad")
    test_mod2.obs["batch"] = "s1d3"
    test_mod2.write_h5ad(tmp_path / "test_mod2.h5ad")
    args = run_args(folder, tmp_path / "p.h5ad", replaced={"test_mod2": tmp_path / "test_mod2.h5ad"})
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "no batch in common" in error and "['s1d2']" in error and "['s1d3']" in error
    assert not (tmp_path / "p.h5ad").exists()
