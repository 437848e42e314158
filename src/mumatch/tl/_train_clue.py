"""``mm.tl.train_clue``: train a CLUE model on a transductive MuData and write every cell's embedding."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from mudata import MuData
from scanpy import logging as logg

from .._ensemble import concatenate_members
from .._layout import warn_replaced_embedding, written_embeddings
from .._validate import SETUP_KEY, check_int, check_key_added, check_mods, check_mudata, check_rep
from ..model._clue import CLUE
from ._train import check_model_kwargs, recorded_options, refuse_copy, refuse_input_key


def train_clue(
    mdata: MuData,
    mods: Sequence[str] | None = None,
    *,
    use_rep: str | Mapping[str, str] = "X_lsi_harmony",
    layer: str | None = "counts",
    batch_key: str | None = "batch",
    likelihood: str | Mapping[str, str] | None = None,
    config: Literal["auto", "cite", "multiome"] = "auto",
    model_kwargs: Mapping[str, Any] | None = None,
    ensemble: int | None = None,
    normalize_subspaces: bool = True,
    key_added: str = "X_clue",
    random_state: int = 0,
    **train_kwargs: Any,
) -> CLUE | list[CLUE]:
    """Train a cross-linked unified embedding (CLUE) and write the embedding of every cell of each modality.

    Paired cells (same obs name in several modalities) teach the cross-modal links; every cell, paired or not, is
    used in training (transductive), see :class:`mumatch.model.CLUE`.

    Parameters
    ----------
    mdata
        Transductive MuData with raw counts in ``layers[layer]`` and an input representation in ``.obsm[use_rep]``
        of every modality (e.g. from :func:`mumatch.pp.lsi_harmony`).
    mods
        The modalities to embed, at least two (default: all).
    use_rep
        ``.obsm`` key of the encoders' input: one for all modalities or one per modality.
    layer
        Layer with raw counts (``None``: ``.X``).
    batch_key
        Column of ``.obs`` (each modality's, else ``mdata.obs``) with the batch, given to the decoders (``None``: no
        batch). A column that no modality has raises a KeyError, except the default ``"batch"`` (no batches, with a
        warning).
    likelihood
        ``"nb"`` or ``"bernoulli"``, for all or per modality (default: NB for RNA/ADT, Bernoulli for peaks).
    config
        Competition configuration supplying the default hyperparameters (see :class:`mumatch.model.CLUE`).
    model_kwargs
        Further hyperparameters of :class:`mumatch.model.CLUE` (e.g. ``lam_cross=0`` for an ablation).
    ensemble
        ``None``: one model, whose embedding is written as it is. An integer ``n``: ``n`` models with seeds
        ``random_state + i`` (each its own initialisation, validation split and minibatches); their embeddings are
        L2-normalised and concatenated, scaled by ``1/√n``, so that the cosine similarity of two cells is the mean
        of the members' cosine similarities (as :func:`~mumatch.tl.train_clip` combines its ensemble).
    normalize_subspaces
        Write each model's embedding with every modality's subspace L2-normalised and scaled by ``1/√K``
        (:meth:`~mumatch.model.CLUE.get_latent_representation`), so that each subspace weighs the same in the
        cosine cost of :func:`~mumatch.tl.match_ot`; ``False``: the posterior means as they are.
    key_added
        Key of the embedding in each modality's ``.obsm`` and of the parameters in ``mdata.uns``.
    random_state
        Seed of the initialisation, the validation split and the minibatches.
    **train_kwargs
        Passed to :meth:`mumatch.model.CLUE.train` (``max_epochs``, ``lr``, ``batch_size``, ``early_stopping``, ...).

    Returns
    -------
    The trained model, or with ``ensemble=n`` the list of the ``n`` models. Adds ``mdata[mod].obsm[key_added]`` (cells
    × ``K * n_latent``, or ``n * K * n_latent`` for an ensemble, float32) for every modality and
    ``mdata.uns[key_added] = {"params": {...}, "train_info": {...}}`` (with an ensemble, ``"models"``: each member's
    ``train_info``, with its training time ``train_s``; and ``"embedded"``, a fingerprint of each embedding written,
    as :func:`~mumatch.tl.train_clip` records); records the setup in ``mdata.uns['_mumatch_setup']``. On an error the
    MuData is left as it was.

    Examples
    --------
    >>> import mumatch as mm
    >>> mdata = mm.datasets.bmmc_starter("cite")  # doctest: +SKIP
    >>> mm.pp.lsi_harmony(mdata)  # doctest: +SKIP
    >>> model = mm.tl.train_clue(mdata, key_added="X_clue")  # doctest: +SKIP
    >>> mm.tl.match_ot(mdata, "rna", "adt", use_rep="X_clue")  # doctest: +SKIP
    """
    check_mudata(mdata)
    mods = check_mods(mdata, mods)
    rep_keys = dict.fromkeys(mods, use_rep) if isinstance(use_rep, str) else dict(use_rep)
    for mod in mods:
        if mod not in rep_keys:
            raise KeyError(f"use_rep names no representation for '{mod}'; give {{'{mod}': key, ...}}")
        check_rep(mdata, mod, rep_keys[mod], "use_rep")
    check_key_added(key_added)
    refuse_input_key(key_added, {mod: rep_keys[mod] for mod in mods}, "X_clue")
    check_int(random_state, "random_state", minimum=0)
    refuse_copy(train_kwargs, "train_clue")
    check_model_kwargs(model_kwargs, CLUE, "train_clue", own=("config", "random_state"))
    check_int(ensemble, "ensemble", allow_none=True)
    if not isinstance(normalize_subspaces, bool | np.bool_):
        raise ValueError(f"normalize_subspaces must be True or False, got {normalize_subspaces!r}")
    seeds = [random_state] if ensemble is None else [random_state + offset for offset in range(ensemble)]
    previous_setup = copy.deepcopy(mdata.uns.get(SETUP_KEY))
    start = logg.info(f"training {len(seeds)} CLUE model(s) on {', '.join(mods)}")
    try:
        CLUE.setup_mudata(mdata, mods, rep_key=use_rep, layer=layer, batch_key=batch_key, likelihood=likelihood)
        models = []
        for seed in seeds:
            model_start = time.perf_counter()
            model = CLUE(mdata, config=config, random_state=seed, **dict(model_kwargs or {}))
            model.train(random_state=seed, **train_kwargs)
            model.train_info["train_s"] = time.perf_counter() - model_start
            models.append(model)
        embeddings = {
            mod: _combined_embedding(models, mdata, mod, ensemble is not None, normalize_subspaces) for mod in mods
        }
    except BaseException:
        if previous_setup is None:
            mdata.uns.pop(SETUP_KEY, None)
        else:
            mdata.uns[SETUP_KEY] = previous_setup
        raise
    warn_replaced_embedding(mdata, mods, key_added)
    for mod, embedding in embeddings.items():
        mdata[mod].obsm[key_added] = embedding
    mdata.uns[key_added] = {
        "params": {
            "mods": mods,
            "use_rep": use_rep if isinstance(use_rep, str) else dict(use_rep),
            "layer": layer,
            "batch_key": models[0].setup_args["batch_key"],  # None when no modality has the default "batch"
            "likelihood": models[0].setup_args["likelihoods"],
            "random_state": random_state,
            "ensemble": ensemble if ensemble is not None else "none",
            "normalize_subspaces": bool(normalize_subspaces),
            **models[0].init_params,
            **recorded_options(train_kwargs),
        },
        "train_info": _info(models[0]),
        "embedded": written_embeddings(embeddings),  # which .obsm[key_added] this training wrote
    }
    if ensemble is not None:
        mdata.uns[key_added]["models"] = {str(position): _info(model) for position, model in enumerate(models)}
    logg.info(
        "    finished",
        time=start,
        deep=f"added\n    .obsm['{key_added}'] of {mods}, the CLUE embedding\n    .uns['{key_added}'], its parameters",
    )
    return models if ensemble is not None else models[0]


def _combined_embedding(
    models: Sequence[CLUE], mdata: MuData, mod: str, ensemble: bool, normalize_subspaces: bool
) -> np.ndarray:
    """One model's embedding as it is, or the members' combined so that cosine similarities average."""
    parts = [model.get_latent_representation(mdata, mod, normalize_subspaces=normalize_subspaces) for model in models]
    return concatenate_members(parts).astype(np.float32) if ensemble else parts[0]


def _info(model: CLUE) -> dict[str, Any]:
    return {name: value for name, value in model.train_info.items() if value is not None}
