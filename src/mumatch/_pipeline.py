"""The end-to-end matching job run by ``mumatch demo`` and ``mumatch run``: its stages and its score table."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData
from tqdm.auto import tqdm

from . import metrics
from ._layout import embed_block, unpaired_mask

RANDOM_KEY = "match_random"


@dataclass
class PipelineResult:
    """Keys of the plans written by the pipeline and the time each stage took."""

    plan_keys: dict[str, str] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)


def uniform_plan(mdata: MuData, mod1: str, mod2: str) -> sp.csr_matrix:
    """The random baseline: every unpaired cell of ``mod1`` spread evenly over the unpaired cells of ``mod2``."""
    index1 = np.flatnonzero(unpaired_mask(mdata, mod1, mod2))
    index2 = np.flatnonzero(unpaired_mask(mdata, mod2, mod1))
    block = np.full((index1.size, index2.size), 1.0 / max(index2.size, 1), dtype=np.float32)
    return embed_block(mdata, mod1, mod2, sp.csr_matrix(block), index1, index2)


def stages(mod1: str, mod2: str, seed: int) -> list[tuple[str, Callable[[MuData, PipelineResult], None]]]:
    """The pipeline's stages, in order: each takes the MuData and records what it wrote."""

    def random_baseline(mdata: MuData, result: PipelineResult) -> None:
        mdata.obsp[RANDOM_KEY] = uniform_plan(mdata, mod1, mod2)
        result.plan_keys["random baseline"] = RANDOM_KEY

    return [("random baseline", random_baseline)]


def run_pipeline(mdata: MuData, mod1: str, mod2: str, *, seed: int = 0, progress: bool = True) -> PipelineResult:
    """Run every stage on ``mdata`` in place, with a progress bar over the stages."""
    result = PipelineResult()
    bar = tqdm(stages(mod1, mod2, seed), desc="mumatch", unit="stage", disable=not progress)
    for name, stage in bar:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        stage(mdata, result)
        result.stage_seconds[name] = time.perf_counter() - start
    return result


def score_table(mdata: MuData, result: PipelineResult, mod1: str, mod2: str) -> pd.DataFrame:
    """Metrics of every plan the pipeline wrote against ``mdata.obsp['match_true']``."""
    rows = []
    for method, key in result.plan_keys.items():
        kwargs = {"key": key, "mod1": mod1, "mod2": mod2}
        rows.append(
            {
                "method": method,
                "match score": metrics.match_score(mdata, **kwargs),
                "top-1": metrics.top_k_accuracy(mdata, k=1, **kwargs),
                "top-5": metrics.top_k_accuracy(mdata, k=5, **kwargs),
                "FOSCTTM": metrics.foscttm(mdata, **kwargs),
            }
        )
    return pd.DataFrame(rows).set_index("method")
