"""Every output name (``key_added``) is checked before anything is computed or written."""

from __future__ import annotations

import numpy as np
import pytest

import mumatch as mm

from .helpers import assert_unchanged, snapshot


@pytest.mark.parametrize(
    ("key_added", "message"),
    [
        ("_mumatch_setup", "where the models record their setup"),
        ("plan/a", "must not contain '/'"),
        ("", "non-empty string"),
        (3, "non-empty string"),
    ],
)
def test_reserved_nested_or_empty_names_refused(simulated, key_added, message):
    rng = np.random.default_rng(0)
    for mod in ("rna", "atac"):
        simulated[mod].obsm["X_shared"] = rng.normal(size=(simulated[mod].n_obs, 8)).astype(np.float32)
    simulated["rna"].obs["label"] = simulated["rna"].obs["batch"].astype(str)
    mm.tl.match_ot(simulated, "rna", "atac", use_rep="X_shared", key_added="plan")
    before = snapshot(simulated)
    calls = {
        "lsi_harmony": lambda: mm.pp.lsi_harmony(simulated, key_added=key_added),
        "append_depth": lambda: mm.pp.append_depth(simulated, use_rep="X_shared", key_added=key_added),
        "train_clip": lambda: mm.tl.train_clip(simulated, "rna", "atac", use_rep="X_shared", key_added=key_added),
        "train_clue": lambda: mm.tl.train_clue(simulated, use_rep="X_shared", key_added=key_added),
        "match_ot": lambda: mm.tl.match_ot(simulated, "rna", "atac", use_rep="X_shared", key_added=key_added),
        "transfer_labels": lambda: mm.tl.transfer_labels(
            simulated, "plan", label_key="label", source_mod="rna", target_mod="atac", key_added=key_added
        ),
    }
    for call in calls.values():
        with pytest.raises(ValueError, match=message):
            call()
    assert_unchanged(before, simulated)
