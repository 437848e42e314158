"""``train_clip``: train CLIP encoders (one model or an ensemble) and write every cell's embedding."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
from mudata import MuData
from scanpy import logging as logg

from .._ensemble import concatenate_members
from .._layout import held_out_batches, paired_batch_labels, warn_replaced_embedding, written_embeddings
from .._validate import SETUP_KEY, check_int, check_key_added, check_mod, check_mudata, check_obs_names, check_rep
from ..model import CLIP


def recorded_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar training options as ``.uns`` can hold them: None (e.g. "off") as the string ``"none"``."""
    return {
        # Numpy scalars (np.int64(3), np.float32(1e-3)) are options too, recorded as the numbers they are.
        name: "none" if value is None else value.item() if isinstance(value, np.generic) else value
        for name, value in options.items()
        if value is None or isinstance(value, int | float | str | bool | np.integer | np.floating | np.bool_)
    }


def refuse_copy(train_kwargs: Mapping[str, Any], function: str) -> None:
    """Raise a TypeError for ``copy=``, which the trainer would reject with a message about Lightning."""
    if "copy" in train_kwargs:
        raise TypeError(
            f"{function} has no copy argument: it writes .obsm[key_added] in place and returns the model; pass "
            "mdata.copy() to keep the original"
        )


def check_model_kwargs(
    model_kwargs: Mapping[str, Any] | None, model_cls: type, function: str, own: tuple[str, ...] = ("random_state",)
) -> None:
    """Raise a ValueError for a ``model_kwargs`` entry the model cannot take (clearer than the TypeError it would be).

    The names in ``own`` are the function's own arguments (``random_state``: each member's seed derives from it), and
    a name that is no argument of the model (when it lists them all, with no ``**kwargs``, which it then checks
    itself) is a training option (``lr``, ``max_epochs``, ...) that goes to the function's keyword arguments.
    """
    if model_kwargs is None:
        return
    if not isinstance(model_kwargs, Mapping):
        raise ValueError(f"model_kwargs must be a mapping of {model_cls.__name__} arguments, got {model_kwargs!r}")
    taken = sorted(set(own) & set(model_kwargs))
    if taken:
        raise ValueError(
            f"model_kwargs sets {taken}, which {function} sets itself; pass {function}({taken[0]}=...) instead"
        )
    parameters = inspect.signature(model_cls.__init__).parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return
    accepted = [name for name in parameters if name not in ("self", "mdata")]
    unknown = sorted(name for name in model_kwargs if name not in accepted)
    if unknown:
        raise ValueError(
            f"model_kwargs has {unknown}, no argument of {model_cls.__name__} (it takes {accepted}); pass training "
            f"options such as lr or max_epochs to {function} itself"
        )


def refuse_input_key(key_added: str, rep_keys: Mapping[str, str], default: str) -> None:
    """Raise a ValueError when ``key_added`` names a modality's input representation (``use_rep``).

    The embedding would replace the model's own input there: the returned model could no longer embed those cells,
    and a later training would read the embedding as its input.
    """
    inputs = sorted(mod for mod, rep in rep_keys.items() if rep == key_added)
    if inputs:
        raise ValueError(
            f"key_added={key_added!r} is the input representation (use_rep) of {inputs}; writing the embedding there "
            f"would replace it, choose another key_added (e.g. {default!r})"
        )


# MatchCLOT holds out each of the competition's ~10 training batches in turn (one model each). An atlas of many donors
# would train a model per donor: above this many batches to hold out, the batches are dealt into this many groups and
# each model holds out one group (a k-fold split by batch), so that the ensemble's cost stays bounded.
MAX_BATCH_MEMBERS = 10


def batch_groups(counts: dict[str, int], n_groups: int) -> list[list[str]]:
    """Deal batches (name → paired cells) into ``n_groups`` groups of about equal cell counts.

    Largest batch first, each to the group with the fewest cells so far (ties: the earlier group); every group gets
    a batch as long as there are at least ``n_groups`` of them.

    Examples
    --------
    >>> batch_groups({"a": 50, "b": 30, "c": 15, "d": 5}, 2)
    [['a'], ['b', 'c', 'd']]
    """
    groups: list[list[str]] = [[] for _ in range(n_groups)]
    totals = [0] * n_groups
    for level, count in sorted(counts.items(), key=lambda item: (-item[1], str(item[0]))):
        smallest = min(range(n_groups), key=lambda position: (totals[position], position))
        groups[smallest].append(level)
        totals[smallest] += count
    return [group for group in groups if group]


def _ensemble_members(
    mdata: MuData, mod1: str, mod2: str, ensemble: Literal["batch"] | int | None, batch_key: str | None
) -> list[dict[str, Any]]:
    """The (validation, seed offset) of each member: one per held-out training batch, or ``n`` seeds."""
    if ensemble is None:
        return [{"validation": "auto", "seed_offset": 0}]
    if isinstance(ensemble, str):
        if ensemble != "batch":
            raise ValueError(f"ensemble={ensemble!r}; choose 'batch', an integer number of models or None")
        levels, reasons = held_out_batches(mdata, mod1, mod2, batch_key)
        single = len(levels) < 2
        if reasons:
            outcome = "one model, validated on a random 20 %" if single else "they train every member"
            logg.warning(f"training batches not held out ({outcome}): " + "; ".join(reasons))
        if single:
            # Fewer than two batches to hold out: a single model validated on a random fraction (CLIP's "auto").
            return [{"validation": "auto", "seed_offset": 0}]
        if len(levels) <= MAX_BATCH_MEMBERS:
            return [{"validation": [level], "seed_offset": 0} for level in levels]
        labels = pd.Series(paired_batch_labels(mdata, mod1, mod2, batch_key))
        groups = batch_groups(labels[labels.isin(levels)].value_counts().to_dict(), MAX_BATCH_MEMBERS)
        logg.info(
            f"{len(levels)} training batches to hold out: dealt into {MAX_BATCH_MEMBERS} groups of about equal "
            "numbers of paired cells, one group held out per model"
        )
        return [{"validation": group, "seed_offset": 0} for group in groups]
    check_int(ensemble, "ensemble")
    return [{"validation": "auto", "seed_offset": offset} for offset in range(ensemble)]


def train_clip(
    mdata: MuData,
    mod1: str = "rna",
    mod2: str = "atac",
    *,
    use_rep: str | Mapping[str, str] = "X_lsi_harmony",
    batch_key: str | None = "batch",
    ensemble: Literal["batch"] | int | None = "batch",
    key_added: str = "X_clip",
    random_state: int = 0,
    model_kwargs: Mapping[str, Any] | None = None,
    **train_kwargs: Any,
) -> list[CLIP]:
    """Train CLIP encoders on the paired cells and embed every cell of both modalities.

    With ``ensemble="batch"`` one model is trained per held-out training batch (MatchCLOT's recipe) and the members'
    embeddings are combined; a batch is held out when it has at least 20 paired cells and at most 60 % of them (a
    warning names the others, which train every member). With fewer than two such batches a single model is
    validated on a seeded random 20 %; with more than 10 (an atlas of many donors), the batches are dealt into 10
    groups of about equal paired-cell counts and each of 10 models holds out one group.

    The members' spaces are not aligned with each other, so they are combined by concatenation scaled by
    ``1/√n_models``: the cosine similarity of two combined embeddings is then the mean of the members' cosine
    similarities (MatchCLOT sums its folds' similarity matrices), and every row keeps unit norm.

    Parameters
    ----------
    mdata
        Transductive MuData; paired cells share an obs name in both modalities.
    mod1, mod2
        The two modalities.
    use_rep
        Each modality's input representation in ``.obsm`` (one key, or ``{mod: key}``).
    batch_key
        Column of ``.obs`` (each modality's, else ``mdata.obs``) with the batch (held out for validation / per ensemble
        member). A column that neither modality has raises a KeyError, except the default ``"batch"`` (no batches, with
        a warning).
    ensemble
        ``"batch"``: one model per held-out training batch, at most 10 (see above); an integer ``n``: ``n`` models
        with seeds ``random_state + i``; ``None``: one model.
    key_added
        Where the embedding goes.
    random_state
        Seed of initialisation, validation split, minibatches and dropout.
    model_kwargs
        Arguments of :class:`~mumatch.model.CLIP` (``n_latent``, ``n_hidden``, ...).
    **train_kwargs
        Arguments of :meth:`CLIP.train <mumatch.model.CLIP.train>` (``max_epochs``, ``lr``, ...).

    Returns
    -------
    The trained models, a list (of one with ``ensemble=None``). Adds ``mdata[mod1].obsm[key_added]`` and
    ``mdata[mod2].obsm[key_added]``: the L2-normalised embedding of every cell of each modality (float32), and
    ``mdata.uns[key_added]`` with ``params``, per model its training summary (``models``), and ``embedded``: a
    fingerprint of each embedding written, so that :func:`~mumatch.tl.match_ot` and the metrics refuse a modality
    whose ``.obsm[key_added]`` another training left behind.
    ``mdata.uns['_mumatch_setup']['CLIP']`` records the registration.

    Examples
    --------
    >>> import mumatch as mm
    >>> mdata = mm.datasets.bmmc_starter("multiome")
    >>> mm.pp.lsi_harmony(mdata)
    >>> models = mm.tl.train_clip(mdata, "rna", "atac")
    >>> mdata["rna"].obsm["X_clip"].shape
    (500, 128)
    """
    check_mudata(mdata)
    check_mod(mdata, mod1, "mod1")
    check_mod(mdata, mod2, "mod2")
    if mod1 == mod2:
        raise ValueError(f"mod1 and mod2 must differ, both are {mod1!r}")
    check_key_added(key_added)
    check_int(random_state, "random_state", minimum=0)
    for mod in (mod1, mod2):
        check_obs_names(mdata, mod, in_mudata=False)  # before the ensemble's batches, which pair cells by name
    rep_keys = {mod1: use_rep, mod2: use_rep} if isinstance(use_rep, str) else dict(use_rep)
    for mod in (mod1, mod2):
        if mod not in rep_keys:
            raise KeyError(f"use_rep names no representation for '{mod}'; give {{'{mod}': key, ...}}")
        check_rep(mdata, mod, rep_keys[mod], "use_rep")
    refuse_input_key(key_added, {mod: rep_keys[mod] for mod in (mod1, mod2)}, "X_clip")
    refuse_copy(train_kwargs, "train_clip")
    if "validation" in train_kwargs and ensemble is not None:
        raise ValueError("validation= is chosen per ensemble member; pass ensemble=None to set it yourself")
    check_model_kwargs(model_kwargs, CLIP, "train_clip")
    members = _ensemble_members(mdata, mod1, mod2, ensemble, batch_key)
    start = logg.info(f"training {len(members)} CLIP model(s) on '{mod1}' and '{mod2}'")

    setup_before = mdata.uns.get(SETUP_KEY)
    try:
        CLIP.setup_mudata(mdata, mod1=mod1, mod2=mod2, rep_key=rep_keys, batch_key=batch_key)
        models = []
        for member in members:
            model = CLIP(mdata, **dict(model_kwargs or {}), random_state=random_state + member["seed_offset"])
            options = {"validation": member["validation"], **train_kwargs}
            model.train(random_state=random_state + member["seed_offset"], **options)
            models.append(model)
        embeddings = {
            mod: concatenate_members([model.get_latent_representation(mdata, mod) for model in models]).astype(
                np.float32
            )
            for mod in (mod1, mod2)
        }
    except BaseException:
        if setup_before is None:
            mdata.uns.pop(SETUP_KEY, None)
        else:
            mdata.uns[SETUP_KEY] = setup_before
        raise

    warn_replaced_embedding(mdata, [mod1, mod2], key_added)
    for mod in (mod1, mod2):
        mdata[mod].obsm[key_added] = embeddings[mod]
    mdata.uns[key_added] = {
        "params": {
            "mod1": mod1,
            "mod2": mod2,
            "use_rep": rep_keys,
            "batch_key": models[0].setup_args["batch_key"],  # None when no modality has the default "batch"
            "ensemble": ensemble if ensemble is not None else "none",
            "random_state": random_state,
            "n_models": len(models),
            # The members differ only in their seeds (random_state + member), recorded above.
            **{name: value for name, value in models[0].init_params.items() if name != "random_state"},
            **recorded_options(train_kwargs),
        },
        "models": {
            str(position): {name: value for name, value in model.train_info.items() if value is not None}
            for position, model in enumerate(models)
        },
        "embedded": written_embeddings(embeddings),  # which .obsm[key_added] this training wrote
    }
    logg.info(
        "    finished",
        time=start,
        deep=(
            f"added\n    '{key_added}', the CLIP embedding (mdata['{mod1}'].obsm, mdata['{mod2}'].obsm)\n"
            f"    '{key_added}', parameters and training summary (mdata.uns)"
        ),
    )
    return models
