"""Draw the figure of the README and the docs' front page: a matching plan on the bundled CITE-seq starter.

Runs the quick-start pipeline (lsi_harmony → train_clip → match_ot) on real cells and writes docs/_static/plan.png.
Usage: python scripts/make_readme_figure.py [output.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import mudata  # noqa: E402
import scanpy as sc  # noqa: E402

import mumatch as mm  # noqa: E402

OUTPUT = Path(__file__).resolve().parents[1] / "docs" / "_static" / "plan.png"


def main(output: Path = OUTPUT) -> None:
    mudata.set_options(pull_on_update=False)
    sc.settings.set_figure_params(dpi=100, dpi_save=150, facecolor="white")
    mdata = mm.datasets.bmmc_starter("cite")
    mm.pp.lsi_harmony(mdata)
    mm.tl.train_clip(mdata, "rna", "adt", random_state=0, progress_bar=False)
    mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_clip")
    score = mm.metrics.match_score(mdata, key="match")
    figure, ax = plt.subplots(figsize=(6.2, 5.2))
    mm.pl.plan(
        mdata,
        "match",
        ax=ax,
        title=f"CITE-seq starter, test cells: RNA → ADT plan (match score {score:.3f})",
        show=False,
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, bbox_inches="tight")
    print(f"wrote {output} (match score {score:.4f})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT)
