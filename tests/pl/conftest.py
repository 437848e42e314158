"""Fixtures for the plot tests: a starter MuData carrying what the matchers and models would write.

The plan, the confidences and the shared embedding are built here from the ground truth plus noise, so that the plots
are tested without training a model.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import mudata  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import scanpy as sc  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from mumatch._layout import embed_block, extract_block, split_index  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    sc.settings.autoshow = False
    yield
    plt.close("all")


@pytest.fixture
def figdir(tmp_path):
    """scanpy's figure directory set to a temporary folder (with scanpy's default suffix and png), restored after."""
    names = ("figdir", "plot_suffix", "file_format_figs", "autosave")
    saved = {name: getattr(sc.settings, name) for name in names}
    sc.settings.figdir = tmp_path / "figures"
    sc.settings.plot_suffix = ""
    sc.settings.file_format_figs = "png"
    yield tmp_path / "figures"
    for name, value in saved.items():
        setattr(sc.settings, name, value)


def _noisy_plan(truth: sp.csr_matrix, types1: np.ndarray, types2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible plan: mass on the true partner, on cells of the same type, and a little everywhere."""
    same_type = (types1[:, None] == types2[None, :]).astype(float)
    same_type /= same_type.sum(axis=1, keepdims=True)
    noise = rng.random(truth.shape) ** 8
    weights = 0.3 * truth.toarray() + 0.5 * same_type + 0.2 * noise / noise.sum(axis=1, keepdims=True)
    weights[weights < np.quantile(weights, 0.5, axis=1, keepdims=True)] = 0
    return weights / weights.sum(axis=1, keepdims=True)


@pytest.fixture
def matched(multiome) -> mudata.MuData:
    """The Multiome starter with a plan in ``.obsp['match']``, confidences in ``.obs`` and ``.obsm['X_shared']``."""
    rng = np.random.default_rng(0)
    mdata = multiome
    test1, test2 = split_index(mdata, "rna"), split_index(mdata, "atac")
    truth = extract_block(mdata, mdata.obsp["match_true"], "rna", "atac", test1, test2)
    types1 = mdata["rna"].obs["cell_type"].to_numpy()[test1]
    types2 = mdata["atac"].obs["cell_type"].to_numpy()[test2]
    weights = _noisy_plan(truth, types1, types2, rng)
    mdata.obsp["match"] = embed_block(mdata, "rna", "atac", sp.csr_matrix(weights, dtype=np.float32), test1, test2)
    mdata.uns["match"] = {"params": {"mod1": "rna", "mod2": "atac"}}
    for mod, index, confidence in (("rna", test1, weights.max(1)), ("atac", test2, weights.max(0) / weights.sum(0))):
        column = np.full(mdata[mod].n_obs, np.nan)
        column[index] = confidence
        mdata[mod].obs["match_confidence"] = column
    categories = pd.unique(mdata["rna"].obs["cell_type"].astype(str))
    centres = {name: rng.normal(size=16) for name in categories}
    for mod in ("rna", "atac"):
        types = mdata[mod].obs["cell_type"].astype(str).to_numpy()
        shared = np.stack([centres[name] for name in types]) + rng.normal(scale=0.6, size=(types.size, 16))
        mdata[mod].obsm["X_shared"] = (shared / np.linalg.norm(shared, axis=1, keepdims=True)).astype(np.float32)
    return mdata


def assert_drawn(figure, tmp_path, min_ink: float = 0.02) -> np.ndarray:
    """Render ``figure`` to a PNG and check it is not blank: enough non-white pixels and some contrast."""
    path = tmp_path / "figure.png"
    figure.savefig(path, dpi=60)
    pixels = plt.imread(path)[..., :3]
    ink = (pixels.mean(axis=2) < 0.95).mean()
    assert ink > min_ink, f"only {ink:.3%} of the pixels are drawn"
    assert pixels.std() > 0.05
    return pixels


def legend_covers(ax, other) -> bool:
    """Whether the legend of ``ax``, as drawn, overlaps the Axes ``other`` of the same figure."""
    figure = ax.get_figure()
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    return ax.get_legend().get_window_extent(renderer).overlaps(other.get_window_extent(renderer))
