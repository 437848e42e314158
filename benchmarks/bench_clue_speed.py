"""CLUE's training speed: seconds per epoch of one model on the real sets, without validation or early stopping.

    lane 0 .venv/bin/python benchmarks/bench_clue_speed.py [--sets cite multiome pbmc10k] [--epochs 30] [--repeats 2]

Each set: ``mm.pp.lsi_harmony`` as ``mumatch run`` computes it, then ``mm.model.CLUE(mdata)`` (competition
configuration) trained for ``--epochs`` epochs on all cells (``validation_fraction=0``), ``--repeats`` times with one
torch thread. Prints a markdown table (mean and each repeat). To compare code versions, run it from a worktree of the
other version with ``PYTHONPATH=<worktree>/src``.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import pandas as pd

SETS = ("cite", "multiome", "pbmc10k")


def load(name: str):
    import mumatch as mm

    if name in ("cite", "multiome"):
        return mm.datasets.bmmc_starter(name)
    from bench_clue import DATA, PEER_FOLDERS

    return mm.datasets.read_neurips2021(DATA / PEER_FOLDERS[name])


def epoch_seconds(name: str, epochs: int, repeats: int) -> list[float]:
    import mudata

    mudata.set_options(pull_on_update=False)
    import mumatch as mm
    from mumatch._pipeline import fill_unpaired_batches

    mdata = load(name)
    mod1, mod2 = list(mdata.mod)[:2]
    fill_unpaired_batches(mdata, mod1, mod2)
    mm.pp.lsi_harmony(mdata, [mod1, mod2])
    mm.model.CLUE.setup_mudata(mdata, [mod1, mod2], rep_key="X_lsi_harmony")
    seconds = []
    for repeat in range(repeats):
        model = mm.model.CLUE(mdata, random_state=repeat)
        start = time.perf_counter()
        model.train(max_epochs=epochs, validation_fraction=0.0, progress_bar=False, random_state=repeat)
        seconds.append((time.perf_counter() - start) / epochs)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(1)
    rows = []
    for name in args.sets:
        seconds = epoch_seconds(name, args.epochs, args.repeats)
        rows.append(
            {
                "set": name,
                "epochs": args.epochs,
                "s / epoch (mean)": round(sum(seconds) / len(seconds), 3),
                "repeats": ", ".join(f"{value:.3f}" for value in seconds),
            }
        )
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
