"""Command line: ``mumatch demo`` (the whole job on bundled real data) and ``mumatch run`` (competition drop-in)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import scanpy as sc
from mudata import MuData

from . import __version__, datasets
from ._layout import paired_names
from ._pipeline import EMBEDDINGS, check_embedding, run_pipeline, score_table

DEMO_DATA = ("multiome", "cite", "simulated")
EMBEDDING_HELP = (
    "what to match on: clip (default, fastest), clue (5-15x longer training; better on the CITE starter), or clip+clue "
    "(both, their cosine similarities averaged; writes all three plans, predicts with the combined one)"
)


SEED_HELP = "random seed of the models' initialisation and validation split (default 0)"
# Harmony (in lsi_harmony) takes its seed as a C int: larger seeds crashed it with a TypeError after the data was read.
MAX_SEED = 2**31 - 1
COMPETITION_FILES = {
    "train_mod1": "training cells, first modality (e.g. RNA counts)",
    "train_mod2": "training cells, second modality (e.g. ATAC or ADT counts)",
    "train_sol": "pairing of the training cells (cells of mod1 × cells of mod2)",
    "test_mod1": "test cells to match, first modality",
    "test_mod2": "test cells to match, second modality",
}
# Errors of the user's input, reported in one line (with a traceback from --verbosity 3 on).
INPUT_ERRORS = (FileNotFoundError, IsADirectoryError, KeyError, ValueError)


def _load_demo_data(data: str, seed: int) -> MuData:
    if data in ("multiome", "cite"):
        return datasets.bmmc_starter(data)
    if data == "simulated":
        return datasets.simulate_paired(1000, ("rna", "atac"), n_genes=1000, n_peaks=3000, seed=seed)
    path = Path(data)
    if not path.exists() and not any(path.parent.glob(f"{path.name}*")):
        raise SystemExit(f"--data {data!r}: not one of {list(DEMO_DATA)} and no such folder or prefix")
    return datasets.read_neurips2021(path)


def _seed(text: str) -> int:
    """``--seed``: a whole number from 0 to ``MAX_SEED`` (argparse reports anything else with the usage)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is out of range; a seed is a whole number from 0 to {MAX_SEED}")
    return value


def _check_writable(folder: Path, option: str, out: str) -> None:
    """Create ``folder`` and check that a file can be written in it: fail before the pipeline's minutes, in one line."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        reason = error.strerror or error
        message = f"{option} {out!r}: cannot write in {str(folder)!r} ({reason}); name a writable place"
        raise SystemExit(message) from None


def _modalities(mdata: MuData) -> tuple[str, str]:
    recorded = mdata.uns.get("neurips2021", {})
    if recorded:
        return recorded["mod1"], recorded["mod2"]
    mod1, mod2 = list(mdata.mod)[:2]
    return mod1, mod2


def demo(data: str = "multiome", out: str = "mumatch_demo", seed: int = 0, embedding: str = "clip") -> int:
    """Run the pipeline end to end on ``embedding`` (see ``EMBEDDINGS``), print a score table, write the results."""
    check_embedding(embedding)
    mdata = _load_demo_data(data, seed)
    mod1, mod2 = _modalities(mdata)
    print(
        f"mumatch demo on {data}: {mod1} {mdata[mod1].n_obs} cells, {mod2} {mdata[mod2].n_obs} cells, "
        f"{len(paired_names(mdata, mod1, mod2))} paired"
    )
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise SystemExit(f"--out {out!r} is a file; name a folder for result.h5mu and scores.csv")
    _check_writable(out_dir, "--out", out)
    result = run_pipeline(mdata, mod1, mod2, seed=seed, embedding=embedding)
    mdata.write_h5mu(out_dir / "result.h5mu")
    if "match_true" not in mdata.obsp:
        # A folder of one's own test cells has no ground truth: the matching is the result, there is nothing to score.
        print(f"wrote {out_dir / 'result.h5mu'} (no test_sol.h5ad: no scores; `mumatch run` writes a prediction)")
        return 0
    table = score_table(mdata, result, mod1, mod2)
    print(table.to_markdown(floatfmt=".4f"))
    table.to_csv(out_dir / "scores.csv")
    print(f"wrote {out_dir / 'result.h5mu'} and {out_dir / 'scores.csv'}")
    return 0


def run(files: dict[str, str | None], out: str, seed: int = 0, embedding: str = "clip") -> int:
    """Read competition files, match the test cells and write a prediction in the competition's format.

    The prediction is the plan of ``embedding`` (with ``"clip+clue"``: of the two combined).
    """
    # Fail before the pipeline's minutes, not after them.
    check_embedding(embedding)
    if Path(out).is_dir():
        raise SystemExit(f"--out {out!r} is a folder; name the prediction file to write, e.g. {out}/prediction.h5ad")
    if files.get("test_sol") is not None and not Path(files["test_sol"]).exists():
        raise SystemExit(f"--test-sol {files['test_sol']!r} does not exist; leave it out to skip scoring")
    _check_writable(Path(out).parent, "--out", out)
    mdata = datasets.read_neurips2021_files(files)
    mod1, mod2 = _modalities(mdata)
    result = run_pipeline(mdata, mod1, mod2, seed=seed, embedding=embedding)
    key = list(result.plan_keys.values())[-1]
    datasets.write_prediction(mdata, key, out)
    print(f"wrote {out} ({key})")
    if "match_true" in mdata.obsp:
        print(score_table(mdata, result, mod1, mod2).to_markdown(floatfmt=".4f"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``mumatch`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="mumatch",
        description="Match single cells across omics modalities: 'mumatch demo' runs the whole job on bundled real "
        "data, 'mumatch run' is a drop-in for the NeurIPS 2021 matching task.",
    )
    parser.add_argument("--version", action="version", version=f"mumatch {__version__}")
    parser.add_argument(
        "--verbosity", type=int, default=1, help="scanpy verbosity (0 errors … 4 debug; from 3, tracebacks)"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo_parser = commands.add_parser("demo", help="run the whole pipeline on bundled real data and print scores")
    demo_parser.add_argument(
        "--data", default="multiome", help=f"one of {list(DEMO_DATA)} or a competition folder/prefix"
    )
    demo_parser.add_argument("--out", default="mumatch_demo", help="folder for result.h5mu and scores")
    demo_parser.add_argument("--seed", type=_seed, default=0, help=SEED_HELP)
    demo_parser.add_argument("--embedding", choices=EMBEDDINGS, default="clip", help=EMBEDDING_HELP)

    run_parser = commands.add_parser("run", help="match the test cells of competition files; write a prediction")
    for part, what in COMPETITION_FILES.items():
        run_parser.add_argument(f"--{part.replace('_', '-')}", required=True, dest=part, metavar="H5AD", help=what)
    run_parser.add_argument("--test-sol", dest="test_sol", metavar="H5AD", help="optional ground truth: prints scores")
    run_parser.add_argument("--out", required=True, help="prediction .h5ad to write")
    run_parser.add_argument("--seed", type=_seed, default=0, help=SEED_HELP)
    run_parser.add_argument("--embedding", choices=EMBEDDINGS, default="clip", help=EMBEDDING_HELP)
    return parser


# Libraries whose informational logs (Lightning's per-model "GPU available", tips, dataloader notes) and future or
# deprecation warnings (mudata's pull_on_update) would bury the score table; shown from --verbosity 3 (hints) on.
QUIET_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")
QUIET_BELOW_VERBOSITY = 3


@contextlib.contextmanager
def _quiet_libraries(verbosity: int) -> Iterator[None]:
    """Silence other libraries' chatter for the duration of a command (restored afterwards)."""
    if verbosity >= QUIET_BELOW_VERBOSITY:
        yield
        return
    # Lightning sets its loggers' levels when it is imported, which `mm.tl` now does on first use, inside the
    # command: imported here first (every command trains), it cannot undo what is set below.
    importlib.import_module("lightning.pytorch")
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mumatch`` console script."""
    args = build_parser().parse_args(argv)
    sc.settings.verbosity = args.verbosity
    try:
        with _quiet_libraries(args.verbosity):
            if args.command == "demo":
                return demo(args.data, args.out, args.seed, args.embedding)
            files = {part: getattr(args, part) for part in (*COMPETITION_FILES, "test_sol")}
            return run(files, args.out, args.seed, args.embedding)
    except INPUT_ERRORS as error:
        if args.verbosity >= QUIET_BELOW_VERBOSITY:
            raise
        # A KeyError's text is the repr of its message: print the message itself.
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"mumatch {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
