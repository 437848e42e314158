"""Build the compact starter files bundled in the package from the competition folders.

Usage: python scripts/build_bundled_data.py [DATA_DIR]   (default: ../shared/data/neurips2021_starter)
"""

from __future__ import annotations

import sys
from pathlib import Path

import mumatch as mm
from mumatch.datasets._bundled import TASKS, bundled_path

root = Path(
    sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / ".." / "shared" / "data" / "neurips2021_starter"
)
for task in TASKS:
    mdata = mm.datasets.read_neurips2021(root / task)
    for adata in mdata.mod.values():
        adata.X = None
    out = Path(str(bundled_path(task)))
    out.parent.mkdir(parents=True, exist_ok=True)
    mdata.write_h5mu(out, compression="gzip", compression_opts=9)
    print(f"{task}: {mdata.n_obs} cells -> {out} ({out.stat().st_size / 1e6:.2f} MB)")
