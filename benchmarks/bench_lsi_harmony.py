"""Wall time and peak memory of mm.pp.lsi_harmony against the peer preprocessing recipes, in one run.

Usage (heavy: wrap it in the shared lock):

    flock /tmp/mumatch-heavy.lock .venv/bin/python benchmarks/bench_lsi_harmony.py \
        [--sizes 10000 50000 100000] [--peer-max-cells 50000] [--recipes ours matchclot ecosystem] [--timeout 3600]

Data: `mm.datasets.simulate_paired(n, ("rna", "atac"), n_genes=20000, n_peaks=100000, n_batches=4)`, written once per
size to an .h5mu (counts in `.layers['counts']`, no `.X`) that every recipe reads in its own fresh process:
- ours: `mm.pp.lsi_harmony(mdata)` in .venv (RNA 192, ATAC 256 components, harmonypy);
- matchclot: MatchCLOT's `lsiTransformer` + harmony-pytorch in .venv-peers (benchmarks/peers/matchclot_preprocess.py);
- ecosystem: muon `atac.pp.tfidf` + `atac.tl.lsi` + harmonypy as scanpy's `harmony_integrate` runs it (same driver).
Reported per recipe: wall time of the preprocessing (reading excluded), peak RSS of the process (data included) and
its RSS once the data are read. Peers are skipped above `--peer-max-cells` or cut at `--timeout` seconds.
Prints a markdown table; results are also written as JSON under --workdir.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
PEER_PYTHON = REPO / ".venv-peers" / "bin" / "python"
PEER_DRIVER = REPO / "benchmarks" / "peers" / "matchclot_preprocess.py"
LABELS = {
    "ours": "mumatch lsi_harmony",
    "matchclot": "MatchCLOT (lsiTransformer + harmony-pytorch)",
    "ecosystem": "ecosystem (muon tfidf/lsi + harmonypy)",
}

SIMULATE = """
import sys, mudata
mudata.set_options(pull_on_update=False)
import mumatch as mm
mdata = mm.datasets.simulate_paired({n}, ("rna", "atac"), n_genes=20_000, n_peaks=100_000, n_batches=4)
for adata in mdata.mod.values():
    adata.X = None  # the counts are stored once, in layers['counts']
mdata.write({path!r})
"""

OURS = """
import json, resource, sys, time, warnings, mudata, numpy as np, psutil
warnings.simplefilter("ignore")
mudata.set_options(pull_on_update=False)
import mumatch as mm
start = time.perf_counter()
mdata = mudata.read_h5mu({path!r})
read_time = time.perf_counter() - start
rss_after_read = psutil.Process().memory_info().rss / 2**20
start, cpu_start = time.perf_counter(), time.process_time()
mm.pp.lsi_harmony(mdata)
wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
result = {{
    "wall_time_s": wall,
    "cpu_time_s": cpu,
    "read_time_s": read_time,
    "rss_after_read_mb": rss_after_read,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "finite": all(bool(np.isfinite(mdata[m].obsm["X_lsi_harmony"]).all()) for m in mdata.mod),
    "shapes": {{m: list(mdata[m].obsm["X_lsi_harmony"].shape) for m in mdata.mod}},
}}
print("__RESULT__" + json.dumps(result))
"""


def run_child(command: list[str], timeout: float, max_rss_gb: float) -> tuple[str | None, str]:
    """Run one recipe in its own process; its stdout, or None and why not.

    The child is stopped when it runs past ``timeout`` seconds or its resident memory (with its own children) passes
    ``max_rss_gb``, so that a peer cannot take the memory of a shared machine.
    """
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr, text=True, cwd=REPO)
        process = psutil.Process(child.pid)
        start = time.perf_counter()
        reason = ""
        highest = 0.0
        while child.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 2**30
            except psutil.Error:
                rss = 0.0
            highest = max(highest, rss)
            if rss > max_rss_gb:
                reason = f"stopped at {rss:.1f} GB resident (limit {max_rss_gb} GB)"
            elif time.perf_counter() - start > timeout:
                reason = f"stopped after {timeout:.0f} s (resident memory had reached {highest:.1f} GB)"
            if reason:
                child.kill()
                child.wait()
                return None, reason
            time.sleep(0.2)
        stdout.seek(0)
        stderr.seek(0)
        if child.returncode != 0:
            return None, f"failed ({child.returncode}): {stderr.read().strip().splitlines()[-1:]}"
        return stdout.read(), ""


def run_recipe(recipe: str, path: Path, workdir: Path, timeout: float, max_rss_gb: float) -> tuple[dict | None, str]:
    if recipe == "ours":
        stdout, reason = run_child([str(PYTHON), "-c", OURS.format(path=str(path))], timeout, max_rss_gb)
        if stdout is None:
            return None, reason
        line = next(line for line in stdout.splitlines() if line.startswith("__RESULT__"))
        return json.loads(line.removeprefix("__RESULT__")), ""
    if not PEER_PYTHON.exists() or not PEER_DRIVER.exists():
        return None, f"peer environment or driver missing ({PEER_PYTHON}, {PEER_DRIVER})"
    out = workdir / f"{path.stem}_{recipe}.json"
    command = [str(PEER_PYTHON), str(PEER_DRIVER), "--input", str(path), "--recipe", recipe, "--out", str(out)]
    stdout, reason = run_child(command, timeout, max_rss_gb)
    if stdout is None:
        return None, reason
    return json.loads(out.read_text()), ""


def table(rows: list[dict]) -> pd.DataFrame:
    """One row per (size, recipe), with the ratios of each recipe to ours at the same size."""
    frame = pd.DataFrame(rows).sort_values(["cells", "order"]).drop(columns="order")
    for _, group in frame.groupby("cells"):
        ours = group[group["recipe"] == LABELS["ours"]]
        if ours.empty or pd.isna(ours["wall time (s)"].iloc[0]):
            continue
        frame.loc[group.index, "time / ours"] = (group["wall time (s)"] / ours["wall time (s)"].iloc[0]).round(2)
        frame.loc[group.index, "peak RSS / ours"] = (group["peak RSS (GB)"] / ours["peak RSS (GB)"].iloc[0]).round(2)
        if "CPU time (s)" in group and pd.notna(ours["CPU time (s)"].iloc[0]):
            frame.loc[group.index, "CPU time / ours"] = (group["CPU time (s)"] / ours["CPU time (s)"].iloc[0]).round(2)
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--recipes", nargs="+", default=["ours", "matchclot", "ecosystem"], choices=list(LABELS))
    parser.add_argument("--peer-max-cells", type=int, default=50_000, help="skip the peers on larger data")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed to one recipe run")
    parser.add_argument("--max-rss-gb", type=float, default=20.0, help="stop a recipe whose memory passes this")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mumatch-bench-lsi"))
    parser.add_argument(
        "--summarize", action="store_true", help="only print the table of every result saved in --workdir"
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    if not args.summarize:
        for n_cells in args.sizes:
            path = args.workdir / f"sim_{n_cells}.h5mu"
            if not path.exists():
                start = time.perf_counter()
                subprocess.run([str(PYTHON), "-c", SIMULATE.format(n=n_cells, path=str(path))], check=True, cwd=REPO)
                print(f"simulated {n_cells} cells in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            for recipe in args.recipes:
                load = os.getloadavg()[0]
                if recipe != "ours" and n_cells > args.peer_max_cells:
                    result, reason = None, f"skipped (> {args.peer_max_cells} cells)"
                else:
                    result, reason = run_recipe(recipe, path, args.workdir, args.timeout, args.max_rss_gb)
                row = {"cells": n_cells, "recipe": LABELS[recipe], "order": list(LABELS).index(recipe)}
                if result is None:
                    row |= {
                        "wall time (s)": None,
                        "CPU time (s)": None,
                        "peak RSS (GB)": None,
                        "RSS after reading (GB)": None,
                    }
                else:
                    row |= {
                        "wall time (s)": round(result["wall_time_s"], 1),
                        # CPU seconds of the computation: on a shared machine wall time also counts waiting.
                        "CPU time (s)": round(result["cpu_time_s"], 1) if "cpu_time_s" in result else None,
                        "peak RSS (GB)": round(result["peak_rss_mb"] / 1024, 2),
                        "RSS after reading (GB)": round(result["rss_after_read_mb"] / 1024, 2),
                    }
                row |= {"load average at start": round(load, 1), "note": reason}
                (args.workdir / f"row_{n_cells}_{recipe}.json").write_text(json.dumps({"row": row, "raw": result}))
                print(row, file=sys.stderr, flush=True)
    rows = [json.loads(path.read_text())["row"] for path in sorted(args.workdir.glob("row_*.json"))]
    print(table(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
