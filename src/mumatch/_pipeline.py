"""The end-to-end matching job run by ``mumatch demo`` and ``mumatch run``: its stages and its score table."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData
from scanpy import logging as logg
from tqdm.auto import tqdm

from . import metrics, pp, tl
from ._ensemble import concatenate_members
from ._layout import (
    MISSING_BATCH,
    batch_labels,
    embed_block,
    held_out_batches,
    paired_positions,
    unpaired_mask,
)

RANDOM_KEY = "match_random"
CLIP_KEY = "match_clip"
CLUE_KEY = "match_clue"
COMBINED_KEY = "match_clip_clue"
# What the pipeline can match on (``mumatch run --embedding``): CLIP, CLUE, or both with their cosine similarities
# averaged. Measured (docs/benchmarks.md, CLUE: nineteenth session; CLIP with depth columns: twenty-third; mean of
# 3 seeds): cite starter CLIP 0.062, CLUE 0.094, both 0.097; multiome starter 0.0090, 0.0129, 0.0104 (chance:
# 0.0036); pbmc10k_cite 0.0115, 0.0096, 0.0122. CLUE trains 5-15× longer than CLIP, so CLIP stays the default.
EMBEDDINGS = ("clip", "clue", "clip+clue")
COMBINED_REP = "X_clip_clue"
# With a single training batch there is no batch to hold out per model (MatchCLOT's ensemble); the pipeline then
# trains models on different seeds and random validation splits and averages their similarities. The ensemble makes up
# for a small training set: about SEED_ENSEMBLE_CELLS paired cells over all its models, at most N_SEED_MODELS models.
# Measured: cite starter (311 paired cells), 5 models +21 % over one; pbmc10k_cite (3,330), 3 models 0.0118 against
# 0.0111-0.0124 for single models (seeds 0-2): nothing gained there for 3× the time.
N_SEED_MODELS = 5
SEED_ENSEMBLE_CELLS = 1500
# The match score is linear in each row of the normalised plan, so mass spread beyond the most likely partner only
# lowers it: the pipeline matches with a sharper plan than MatchCLOT's ε = 0.01 (match_ot's default, kept there for
# calibrated soft matches). Averaged ensemble similarities are also flatter than one model's. Cite starter, seed 1,
# 5 models: ε 0.01 → 0.029, 0.005 → 0.039, 0.002 → 0.050, 0.001 → 0.054 (one-to-one assignment: 0.045).
MATCH_EPSILON = 0.001
# Sinkhorn iterations at that ε (MatchCLOT runs 5000): match_ot's default 1000 left a marginal error of 0.0013 on the
# 3,331 test cells of pbmc10k_cite.
MATCH_MAX_ITER = 5000
# The random baseline is a dense block before it becomes a CSR plan: only below this many (test × test) entries.
RANDOM_BASELINE_MAX_ENTRIES = 25_000_000
# CLIP's input: lsi_harmony's embedding with each cell's sequencing depth appended (pp.append_depth). Measured
# (docs/benchmarks.md, twenty-third session, CLIP + OT, mean of 3 seeds, without → with): pbmc10k_cite 0.0110 →
# 0.0115 (FOSCTTM 0.0558 → 0.0543, better on every seed), cite starter 0.0587 → 0.0619, multiome starter 0.0052 →
# 0.0090 (chance: 0.0036). CLUE reads lsi_harmony's embedding as it is: with the depth columns it gained nothing.
CLIP_REP = "X_lsi_harmony_depth"
# Extra options of train_clip and train_clue (tests shorten training with e.g. {"max_epochs": 3}).
TRAIN_OPTIONS: dict = {}


@dataclass
class PipelineResult:
    """Keys of the plans (and of the embeddings behind them) written by the pipeline and the time each stage took."""

    plan_keys: dict[str, str] = field(default_factory=dict)
    embedding_keys: dict[str, str] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)


def uniform_plan(mdata: MuData, mod1: str, mod2: str) -> sp.csr_matrix:
    """The random baseline: every unpaired cell of ``mod1`` spread evenly over the unpaired cells of ``mod2``."""
    index1 = np.flatnonzero(unpaired_mask(mdata, mod1))
    index2 = np.flatnonzero(unpaired_mask(mdata, mod2))
    block = np.full((index1.size, index2.size), 1.0 / max(index2.size, 1), dtype=np.float32)
    return embed_block(mdata, mod1, mod2, sp.csr_matrix(block), index1, index2)


def fill_unpaired_batches(mdata: MuData, mod1: str, mod2: str, batch_key: str = "batch") -> list[str]:
    """Give unlabelled unpaired cells the batch of the other modality's unpaired cells when that is one level.

    The competition's test mod2 has no batch column, but its cells are the test cells of mod1, which all come from
    one batch in the starters and ``pbmc10k_cite``. Harmony and batch-split matching need the label on both sides.
    Works in place on ``.obs[batch_key]``; returns what was filled, for logging.
    """
    notes = []
    for mod, other in ((mod1, mod2), (mod2, mod1)):
        if batch_key not in mdata[mod].obs:
            continue
        labels = batch_labels(mdata, mod, batch_key)
        missing = unpaired_mask(mdata, mod) & (
            labels.to_numpy() == MISSING_BATCH if labels is not None else np.ones(mdata[mod].n_obs, dtype=bool)
        )
        other_labels = batch_labels(mdata, other, batch_key)
        if not missing.any() or other_labels is None:
            continue
        levels = pd.unique(other_labels[unpaired_mask(mdata, other)])
        if levels.size != 1 or levels[0] == MISSING_BATCH:
            continue
        column = mdata[mod].obs[batch_key].astype(object)
        column[missing] = levels[0]
        mdata[mod].obs[batch_key] = pd.Categorical(column)
        notes.append(f"{missing.sum()} unpaired cells of '{mod}' took batch '{levels[0]}' from '{other}'")
    return notes


def check_unpaired_batches(mdata: MuData, mod1: str, mod2: str, batch_key: str = "batch") -> None:
    """Refuse unpaired cells of the two modalities labelled with disjoint batches, before any training.

    match_ot, which matches inside each batch, would find nothing to match, but only after the models' minutes.
    """
    levels = []
    for mod in (mod1, mod2):
        labels = batch_labels(mdata, mod, batch_key)
        if labels is None:
            return
        unpaired = labels[unpaired_mask(mdata, mod)]
        if unpaired.empty or (unpaired == MISSING_BATCH).any():
            return
        levels.append(set(unpaired))
    if not levels[0] & levels[1]:
        raise ValueError(
            f"the unpaired (test) cells of '{mod1}' come from batches {sorted(levels[0])} and those of '{mod2}' from "
            f"{sorted(levels[1])}: no batch in common, so no cell can be matched; name the same batches in "
            f"obs['{batch_key}'] of both test files, or remove the column from the one whose labels are wrong"
        )


def seed_ensemble_size(n_paired: int) -> int:
    """Models of the seed ensemble for ``n_paired`` paired cells (see ``SEED_ENSEMBLE_CELLS``)."""
    return int(min(N_SEED_MODELS, max(1, round(SEED_ENSEMBLE_CELLS / max(n_paired, 1)))))


def ensemble_choice(mdata: MuData, mod1: str, mod2: str, batch_key: str = "batch") -> str | int:
    """The pipeline's ``ensemble`` argument of :func:`~mumatch.tl.train_clip`.

    One model per held-out training batch (at most 10, see :func:`~mumatch.tl.train_clip`) when the paired cells come
    from several batches that can be held out (MatchCLOT's recipe; see :func:`~mumatch._layout.held_out_batches`),
    else a seed ensemble sized by the number
    of paired cells.
    """
    if len(held_out_batches(mdata, mod1, mod2, batch_key)[0]) > 1:
        return "batch"
    return seed_ensemble_size(paired_positions(mdata, mod1, mod2)[0].size)


def check_embedding(embedding: str) -> str:
    """``embedding`` if the pipeline knows it (see :data:`EMBEDDINGS`), else a ValueError naming the choices."""
    if embedding not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {list(EMBEDDINGS)}, got {embedding!r}")
    return embedding


def stages(
    mod1: str, mod2: str, seed: int, embedding: str = "clip"
) -> list[tuple[str, Callable[[MuData, PipelineResult], None]]]:
    """The pipeline's stages, in order: each takes the MuData and records what it wrote.

    ``embedding`` (see :data:`EMBEDDINGS`) says which models are trained and matched on; ``"clip+clue"`` writes the
    plans of both and of their combination, the last one being the combination's.
    """
    check_embedding(embedding)

    def random_baseline(mdata: MuData, result: PipelineResult) -> None:
        n_entries = int(unpaired_mask(mdata, mod1).sum()) * int(unpaired_mask(mdata, mod2).sum())
        if n_entries > RANDOM_BASELINE_MAX_ENTRIES:
            logg.info(f"skipping the random baseline: its plan would hold {n_entries:,} entries (its score is 1/n)")
            return
        mdata.obsp[RANDOM_KEY] = uniform_plan(mdata, mod1, mod2)
        result.plan_keys["random baseline"] = RANDOM_KEY

    def preprocess(mdata: MuData, result: PipelineResult) -> None:
        fill_unpaired_batches(mdata, mod1, mod2)
        check_unpaired_batches(mdata, mod1, mod2)
        pp.lsi_harmony(mdata, [mod1, mod2], random_state=seed)
        if "clip" in embedding:
            pp.append_depth(mdata, [mod1, mod2], use_rep="X_lsi_harmony", key_added=CLIP_REP)

    def train_clip(mdata: MuData, result: PipelineResult) -> None:
        ensemble = ensemble_choice(mdata, mod1, mod2)
        options = {"ensemble": ensemble, "random_state": seed, "progress_bar": False, **TRAIN_OPTIONS}
        tl.train_clip(mdata, mod1, mod2, use_rep=CLIP_REP, **options)

    def train_clue(mdata: MuData, result: PipelineResult) -> None:
        # A seed ensemble sized as CLIP's (train_clue has no per-batch ensemble): cite starter 0.070 → 0.094 with 5.
        ensemble = seed_ensemble_size(paired_positions(mdata, mod1, mod2)[0].size)
        options = {"ensemble": ensemble, "random_state": seed, "progress_bar": False, **TRAIN_OPTIONS}
        tl.train_clue(mdata, [mod1, mod2], **options)

    plans = {
        "clip": [("CLIP + OT", "X_clip", CLIP_KEY)],
        "clue": [("CLUE + OT", "X_clue", CLUE_KEY)],
        "clip+clue": [
            ("CLIP + OT", "X_clip", CLIP_KEY),
            ("CLUE + OT", "X_clue", CLUE_KEY),
            ("CLIP + CLUE + OT", COMBINED_REP, COMBINED_KEY),
        ],
    }[embedding]

    def match(mdata: MuData, result: PipelineResult) -> None:
        if embedding == "clip+clue":
            # Both embeddings side by side, each unit-normalised and scaled by 1/√2: its cosine similarity is the
            # mean of theirs (what match_ot(use_rep=["X_clip", "X_clue"]) matches on), and FOSCTTM has one to rank.
            for mod in (mod1, mod2):
                parts = [np.asarray(mdata[mod].obsm[rep]) for rep in ("X_clip", "X_clue")]
                mdata[mod].obsm[COMBINED_REP] = concatenate_members(parts)
        options = {"epsilon": MATCH_EPSILON, "max_iter": MATCH_MAX_ITER}
        for method, use_rep, key in plans:
            tl.match_ot(mdata, mod1, mod2, use_rep=use_rep, key_added=key, **options)
            result.plan_keys[method] = key
            result.embedding_keys[method] = use_rep

    training = [("train_clip", train_clip)] if "clip" in embedding else []
    training += [("train_clue", train_clue)] if "clue" in embedding else []
    return [
        ("random baseline", random_baseline),
        ("lsi_harmony", preprocess),
        *training,
        ("match_ot", match),
    ]


def run_pipeline(
    mdata: MuData, mod1: str, mod2: str, *, seed: int = 0, embedding: str = "clip", progress: bool = True
) -> PipelineResult:
    """Run every stage on ``mdata`` in place, with a progress bar over the stages (see :func:`stages`)."""
    result = PipelineResult()
    bar = tqdm(stages(mod1, mod2, seed, embedding), desc="mumatch", unit="stage", disable=not progress)
    for name, stage in bar:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        stage(mdata, result)
        result.stage_seconds[name] = time.perf_counter() - start
    return result


def score_table(mdata: MuData, result: PipelineResult, mod1: str, mod2: str) -> pd.DataFrame:
    """Metrics of every plan the pipeline wrote against ``mdata.obsp['match_true']``.

    FOSCTTM is that of the embedding the plan was computed from, where there is one: a sparse plan holds zeros for
    nearly every candidate, and those ties put its own FOSCTTM near 0.5 whatever the embedding's quality.
    """
    rows = []
    for method, key in result.plan_keys.items():
        kwargs = {"key": key, "mod1": mod1, "mod2": mod2}
        ranked = {**kwargs, "key": result.embedding_keys.get(method, key)}
        rows.append(
            {
                "method": method,
                "match score": metrics.match_score(mdata, **kwargs),
                "top-1": metrics.top_k_accuracy(mdata, k=1, **kwargs),
                "top-5": metrics.top_k_accuracy(mdata, k=5, **kwargs),
                "FOSCTTM": metrics.foscttm(mdata, **ranked),
            }
        )
    return pd.DataFrame(rows).set_index("method")
