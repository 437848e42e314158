"""``CLIP``: contrastive encoders of two modalities into one space, trained on paired cells (MatchCLOT's embedding)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from mudata import MuData
from scanpy import logging as logg

from .._layout import MISSING_BATCH, held_out_batches, label_name, paired_batch_labels, paired_positions
from .._modality import assay_of
from .._validate import check_int, check_mod, check_mudata, check_obs_names, check_positive, is_number
from ..module import CLIPModule
from ._base import ModalityRegistration, MuDataModel, TrainingPlan, forked_torch_rng, modality_inputs, row_loader

# MatchCLOT's tuned hyperparameters (Gossi et al. 2023), from `matchclot/utils/hyperparameters.py`:
# `defaults_GEX2ATAC` and `defaults_GEX2ADT`. "gex" is the RNA encoder, "other" the ATAC or ADT encoder.
MATCHCLOT_GEX2ATAC: dict[str, Any] = {
    "n_latent": 128,  # EMBEDDING_DIM
    "n_hidden": {"gex": (2048, 1024), "other": (2048,)},  # LAYERS_DIM_GEX0/1, LAYERS_DIM_ATAC
    "dropout": {"gex": (0.34, 0.47), "other": (0.67,)},  # DROPOUT_RATES_GEX0/1, DROPOUT_RATES_ATAC
    "temperature_init": 2.74,  # LOG_T
    "lr": 6e-4,  # LR
    "weight_decay": 1.25e-4,  # WEIGHT_DECAY
}
MATCHCLOT_GEX2ADT: dict[str, Any] = {
    "n_latent": 256,
    "n_hidden": {"gex": (256, 2048), "other": (4096, 2048)},  # LAYERS_DIM_GEX0/1, LAYERS_DIM_ADT0/1
    "dropout": {"gex": (0.3, 0.05), "other": (0.4, 0.2)},
    "temperature_init": 4.0,
    "lr": 1.75e-4,
    "weight_decay": 2e-4,
}
# MatchCLOT: BATCH_SIZE 16384 (every training cell of the starters in one minibatch), N_EPOCHS 7000 and early-stopping
# patience 150 epochs (its embedding/train.py). Ours stops after 50 epochs without improvement: the best weights are
# restored anyway, and on the starters the best epoch came at 70-90 while the 150-epoch wait doubled training time.
DEFAULT_BATCH_SIZE = 16384
# On the competition's 40-70k training cells MatchCLOT's 16,384 makes 3-4 minibatches per epoch. A whole smaller set in
# one minibatch makes one optimisation step per epoch, and training needs hundreds of steps whatever the size of the set
# (pbmc10k_cite, 2,664 training cells in one minibatch: best epoch 493, 240 s at one thread; in minibatches of 512:
# best epoch 140-160, 40 s, a better match score). The default minibatch keeps about STEPS_PER_EPOCH steps per epoch:
# the power of two nearest n_train / STEPS_PER_EPOCH, between MIN_BATCH_SIZE (the starters' ~300 cells stay one
# minibatch, as in MatchCLOT) and MatchCLOT's 16,384.
STEPS_PER_EPOCH = 4
MIN_BATCH_SIZE = 256
DEFAULT_PATIENCE = 50
DEFAULT_MAX_EPOCHS = 7000
# Its widths (up to 4096) are sized for ~60k training cells; on a few thousand they mostly cost time. Hidden layers
# are capped at the power of two at or above a sixteenth of the paired cells (never below MIN_SCALED_WIDTH): 256 for
# the ~300-cell starters and for 3,330 paired cells, MatchCLOT's own widths from ~33-65k paired cells (its scale).
# pbmc10k_cite, minibatches of 512, single models: widths 1024 scored 0.0115 / 0.0124 (seeds 0, 1) in 170 s each,
# widths 256 0.0111 / 0.0124 / 0.0114 in 40 s each (4× less time per epoch).
MIN_SCALED_WIDTH = 256
CELLS_PER_UNIT_WIDTH = 16
# Held-out fraction of paired cells when there is one training batch (MatchCLOT holds out a whole batch).
VALIDATION_FRACTION = 0.2
# The fewest held-out cells the validation loss can rank epochs on: one cell is its own only candidate (the
# contrastive loss is 0 at every epoch, so early stopping kept the first epoch's weights).
MIN_VALIDATION_CELLS = 2


def matchclot_defaults(mdata: MuData, mod1: str, mod2: str) -> tuple[dict[str, Any], tuple[str, str]]:
    """MatchCLOT's tuned values for this pair of modalities, and the role ('gex'/'other') of each modality.

    MatchCLOT tuned GEX-ATAC and GEX-ADT: a pair with ADT takes the GEX-ADT values, any other the GEX-ATAC ones.
    """
    # An assay no rule recognises counts as RNA here, as lsi_harmony embeds it.
    kinds = [assay_of(mod, mdata[mod].var) or "rna" for mod in (mod1, mod2)]
    defaults = MATCHCLOT_GEX2ADT if "adt" in kinds else MATCHCLOT_GEX2ATAC
    # The GEX encoder's values go to RNA; in a pair without RNA (ATAC-ADT), to the modality that is not ADT, which
    # keeps the values tuned for it. The argument order decides only between two modalities of one assay.
    if kinds.count("rna") == 1:
        gex = kinds.index("rna")
    elif kinds.count("adt") == 1:
        gex = 1 - kinds.index("adt")
    else:
        gex = 0
    roles = ("gex", "other") if gex == 0 else ("other", "gex")
    return defaults, roles


def scaled_batch_size(n_train: int) -> int:
    """The default minibatch size for ``n_train`` training cells (see ``STEPS_PER_EPOCH``)."""
    size = 2 ** round(math.log2(max(n_train / STEPS_PER_EPOCH, 1)))
    return int(min(DEFAULT_BATCH_SIZE, max(MIN_BATCH_SIZE, size)))


def scaled_widths(widths: Sequence[int], n_paired: int) -> tuple[int, ...]:
    """Cap hidden widths for small training sets (see ``MIN_SCALED_WIDTH``)."""
    cap = max(MIN_SCALED_WIDTH, 2 ** math.ceil(math.log2(max(n_paired / CELLS_PER_UNIT_WIDTH, 2))))
    return tuple(min(int(width), cap) for width in widths)


class CLIP(MuDataModel):
    """Contrastive encoders of two modalities into one L2-normalised space (MatchCLOT's embedding model).

    One MLP encoder per modality (ELU, dropout) maps each modality's input representation (e.g. the
    ``X_lsi_harmony`` of :func:`mumatch.pp.lsi_harmony`) to ``n_latent`` dimensions; a symmetric InfoNCE loss over
    the paired cells of each minibatch, with a learnable temperature, pulls a cell's two embeddings together and
    pushes the other cells' apart. Unpaired cells are only embedded, never trained on.

    Parameters
    ----------
    mdata
        MuData registered with :meth:`setup_mudata`.
    n_latent
        Width of the embedding (default: MatchCLOT's, 128 for GEX–ATAC and 256 for GEX–ADT).
    n_hidden
        Hidden widths: an int (``n_layers`` layers of it in both encoders) or ``{mod: [widths]}``. Default:
        MatchCLOT's per-modality widths, capped for small training sets.
    n_layers
        Hidden layers per encoder when ``n_hidden`` is an int.
    dropout
        Dropout rate: a float for every layer, or ``{mod: rate or [rates]}``. Default: MatchCLOT's.
    temperature_init
        Initial log logit scale (default: MatchCLOT's ``LOG_T``, 2.74 for GEX–ATAC, 4.0 for GEX–ADT).
    random_state
        Seed of the weight initialisation.

    Examples
    --------
    >>> import mumatch as mm
    >>> mdata = mm.datasets.bmmc_starter("multiome")
    >>> mm.pp.lsi_harmony(mdata)
    >>> mm.model.CLIP.setup_mudata(mdata, mod1="rna", mod2="atac")
    >>> model = mm.model.CLIP(mdata)
    >>> model.train(max_epochs=200)
    >>> z_rna = model.get_latent_representation(mdata, "rna")
    """

    _module_cls = CLIPModule

    def __init__(
        self,
        mdata: MuData,
        n_latent: int | None = None,
        n_hidden: int | Mapping[str, Sequence[int]] | None = None,
        n_layers: int | None = None,
        dropout: float | Mapping[str, float | Sequence[float]] | None = None,
        temperature_init: float | None = None,
        *,
        random_state: int = 0,
    ):
        super().__init__(mdata)
        mods = self.setup_args["mods"]
        if all(mod in mdata.mod for mod in mods):
            defaults, roles = matchclot_defaults(mdata, *mods)
            n_paired = len(paired_positions(mdata, *mods)[0])
        else:
            # Loaded onto data without one modality (load passes every hyperparameter as saved): the defaults,
            # which read both modalities, would only set the learning rate of a training that _check_trainable
            # refuses; the GEX-ATAC ones stand in.
            defaults, roles, n_paired = MATCHCLOT_GEX2ATAC, ("gex", "other"), 0
        check_int(n_latent, "n_latent", allow_none=True)
        check_int(n_layers, "n_layers", minimum=0, allow_none=True)
        if temperature_init is not None and not np.isfinite(temperature_init):
            raise ValueError(f"temperature_init must be finite, got {temperature_init!r}")
        if isinstance(n_hidden, int | np.integer) and not isinstance(n_hidden, bool):
            check_int(n_hidden, "n_hidden")
            hidden = {mod: [n_hidden] * (2 if n_layers is None else n_layers) for mod in mods}
        elif n_hidden is None:
            hidden = {
                mod: list(scaled_widths(defaults["n_hidden"][role], n_paired))
                for mod, role in zip(mods, roles, strict=True)
            }
        else:
            hidden = {
                mod: [widths] if is_number(widths) else list(widths)
                for mod, widths in _per_modality(n_hidden, mods, "n_hidden").items()
            }
            for mod, widths in hidden.items():
                for width in widths:
                    check_int(width, f"n_hidden['{mod}'] widths")
                hidden[mod] = [int(width) for width in widths]
        if dropout is None:
            rates = {mod: list(defaults["dropout"][role]) for mod, role in zip(mods, roles, strict=True)}
            for mod in mods:
                if len(rates[mod]) != len(hidden[mod]):
                    # MatchCLOT's rates are per layer of its widths; other widths take the first rate everywhere.
                    rates[mod] = [rates[mod][0]] * len(hidden[mod])
        elif is_number(dropout):
            rates = {mod: [float(dropout)] * len(hidden[mod]) for mod in mods}
        else:
            rates = {}
            for mod, rate in _per_modality(dropout, mods, "dropout").items():
                rate = [rate] * len(hidden[mod]) if is_number(rate) else list(rate)
                if len(rate) != len(hidden[mod]) or not all(is_number(value) for value in rate):
                    raise ValueError(
                        f"dropout['{mod}'] must be one rate or one per hidden layer ({len(hidden[mod])}), got {rate!r}"
                    )
                rates[mod] = [float(value) for value in rate]
        for mod in mods:
            if any(not 0 <= rate < 1 for rate in rates[mod]):
                raise ValueError(f"dropout rates must lie in [0, 1), got {rates[mod]} for '{mod}'")
        n_latent = defaults["n_latent"] if n_latent is None else n_latent
        temperature_init = defaults["temperature_init"] if temperature_init is None else float(temperature_init)
        self._init_params(
            n_latent=n_latent,
            n_hidden=hidden,
            dropout=rates,
            temperature_init=temperature_init,
            random_state=random_state,
        )
        self.default_lr, self.default_weight_decay = defaults["lr"], defaults["weight_decay"]
        with forked_torch_rng():  # the caller's torch generator is left as it was (as CLUE's __init__ does)
            torch.manual_seed(random_state)
            self.module = CLIPModule(
                n_inputs=[self.registrations[mod].n_input for mod in mods],
                n_latent=n_latent,
                n_hidden=[hidden[mod] for mod in mods],
                dropout=[rates[mod] for mod in mods],
                temperature_init=temperature_init,
            )

    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        mod1: str = "rna",
        mod2: str = "atac",
        rep_key: str | Mapping[str, str] = "X_lsi_harmony",
        batch_key: str | None = "batch",
    ) -> None:
        """Register the two modalities and their input representations (scvi-tools' ``setup_mudata``).

        Records the arguments in ``mdata.uns['_mumatch_setup']['CLIP']``; nothing else is written.

        Parameters
        ----------
        mdata
            Transductive MuData: paired cells share an obs name in both modalities.
        mod1, mod2
            The two modalities.
        rep_key
            The ``.obsm`` key of each modality's input (one for both, or ``{mod: key}``).
        batch_key
            Column of ``.obs`` (each modality's, else ``mdata.obs``) with the batch of each cell, used to hold out
            batches for validation; a paired cell's batch is read from ``mod1``, or from ``mod2`` where ``mod1`` has no
            label. A column that neither modality has raises a KeyError, except the default ``"batch"`` (no batches,
            with a warning).
        """
        check_mudata(mdata)
        check_mod(mdata, mod1, "mod1")
        check_mod(mdata, mod2, "mod2")
        for mod in {mod1, mod2}:
            check_obs_names(mdata, mod, in_mudata=False)  # paired cells are found by name
        if mod1 != mod2 and paired_positions(mdata, mod1, mod2)[0].size == 0:
            raise ValueError(
                f"no cell of '{mod1}' shares an obs name with a cell of '{mod2}': CLIP trains on paired cells, which "
                "must carry the same obs name in both modalities"
            )
        cls._register(mdata, [mod1, mod2], rep_key, batch_key)

    # ----- training ---------------------------------------------------------------------------------------------
    def _validation_split(
        self, validation: str | int | float | Iterable[str | int] | None, n_paired: int, random_state: int
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """(training rows, validation rows, description) over the paired cells, in :func:`paired_positions` order."""
        everything = np.arange(n_paired)
        if validation is None:
            return everything, everything[:0], "none"
        levels = paired_batch_labels(self.mdata, *self.setup_args["mods"], self.setup_args["batch_key"])
        # Paired cells without a label are no batch to hold out: they always train.
        known = None if levels is None else levels[levels != MISSING_BATCH]
        automatic = isinstance(validation, str) and validation == "auto"
        if automatic:
            # The first batch, among those that can be held out (enough cells to validate on, enough left to train
            # on) when there are two or more, as for train_clip's ensemble; else a random fraction.
            candidates = held_out_batches(self.mdata, *self.setup_args["mods"], self.setup_args["batch_key"])[0]
            several = len(candidates) > 1
            validation = [first_level(known[np.isin(known, candidates)])] if several else VALIDATION_FRACTION
        if isinstance(validation, float | np.floating):
            validation = float(validation)
            if not 0 < validation < 1:
                raise ValueError(f"validation={validation} as a fraction must lie in (0, 1)")
            order = np.random.default_rng(random_state).permutation(n_paired)
            n_validation = max(1, int(round(validation * n_paired)))
            if n_validation >= n_paired:
                raise ValueError(f"{n_paired} paired cells are too few to hold out a fraction of {validation}")
            if n_validation < MIN_VALIDATION_CELLS:
                if automatic:
                    # Too few cells to rank epochs on: train on every paired cell, without early stopping.
                    logg.warning(f"{n_paired} paired cells are too few to validate on: training without validation")
                    return everything, everything[:0], "none (too few paired cells)"
                raise ValueError(
                    f"validation={validation} holds out {n_validation} of {n_paired} paired cells; the contrastive "
                    f"loss needs at least {MIN_VALIDATION_CELLS} (pass a larger fraction, or validation=None)"
                )
            how = f"random {validation:.0%} of paired cells"
            return np.sort(order[n_validation:]), np.sort(order[:n_validation]), how
        if isinstance(validation, str | int | np.integer) and not isinstance(validation, bool):
            validation = [validation]
        if isinstance(validation, bool | Mapping) or not isinstance(validation, Iterable):
            raise ValueError(
                f"validation={validation!r}: pass 'auto', a batch name or list of names, a fraction in (0, 1) or None"
            )
        held_out = [label_name(level) for level in validation]  # batch 1 and 1.0 are batch '1'
        if levels is None:
            raise ValueError(f"validation={held_out} names batches but the paired cells have no batch labels")
        unknown = sorted(set(held_out) - set(known))
        if unknown:
            raise ValueError(f"validation batches {unknown} hold no paired cell; choose from {sorted(set(known))}")
        mask = np.isin(levels, held_out)
        if mask.all():
            raise ValueError("validation holds out every paired cell; leave at least one batch for training")
        if mask.sum() < MIN_VALIDATION_CELLS:
            raise ValueError(
                f"validation batches {held_out} hold {mask.sum()} paired cell(s); the contrastive loss needs at least "
                f"{MIN_VALIDATION_CELLS} to validate on (choose more batches, a fraction, or validation=None)"
            )
        return everything[~mask], everything[mask], f"held-out batches {held_out}"

    def train(
        self,
        max_epochs: int | None = None,
        lr: float | None = None,
        weight_decay: float | None = None,
        batch_size: int | None = None,
        early_stopping: bool = True,
        validation: str | int | float | Iterable[str | int] | None = "auto",
        *,
        patience: int = DEFAULT_PATIENCE,
        accelerator: str = "auto",
        devices: int | str = "auto",
        random_state: int = 0,
        progress_bar: bool = True,
        **trainer_kwargs: Any,
    ) -> None:
        """Train on the paired cells with Lightning; early stopping on the validation loss restores the best weights.

        Parameters
        ----------
        max_epochs
            Passes over the training cells (default: MatchCLOT's 7000; early stopping ends far sooner).
        lr, weight_decay
            Adam's learning rate and weight decay (default: MatchCLOT's tuned values for the pair of modalities).
        batch_size
            Paired cells per minibatch; every other cell of a minibatch is a negative. Default: about four
            minibatches per epoch (at least 256 cells, at most MatchCLOT's 16384, which it reaches from ~50k
            training cells).
        early_stopping
            Stop when the validation loss has not improved for ``patience`` epochs; the best weights are restored.
            ``False``: train ``max_epochs`` epochs and keep the last weights.
        validation
            Which paired cells to hold out: ``"auto"`` (the first batch, as MatchCLOT does, when two or more
            batches have at least 20 paired cells and at most 60 % of them, and among those; else a seeded random
            20 %, or no validation when that is fewer than 2 cells), a batch name (an integer names
            an integer batch) or several names, a fraction, or ``None`` (no validation, no early stopping; the last
            weights are kept). A paired cell's batch is its label in ``mod1``, else in ``mod2``; paired cells
            labelled in neither always train.
        patience
            Epochs without improvement before stopping (MatchCLOT waits 150).
        accelerator, devices
            Passed to ``lightning.Trainer`` (``"auto"`` uses a GPU when there is one; ``devices="auto"`` is one
            device, as in scvi-tools: pass ``devices=N`` for DDP on N devices).
        random_state
            Seed of the validation split, the minibatch order and dropout.
        progress_bar
            Show a progress bar over epochs.
        **trainer_kwargs
            Further ``lightning.Trainer`` options, e.g. ``strategy="ddp_spawn"``.
        """
        check_int(max_epochs, "max_epochs", allow_none=True)
        # A minibatch of one cell has no negative: its contrastive loss is 0 and nothing trains.
        check_int(batch_size, "batch_size", minimum=2, allow_none=True)
        check_int(patience, "patience")
        check_positive(lr, "lr", allow_none=True)
        if weight_decay is not None and (not np.isfinite(weight_decay) or weight_decay < 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        self._check_trainable()
        mods = self.setup_args["mods"]
        inputs = [modality_inputs(self.mdata, self.registrations[mod]) for mod in mods]
        positions = paired_positions(self.mdata, *mods)
        if positions[0].size < 2:
            raise ValueError(f"CLIP needs at least 2 paired cells to train, found {positions[0].size}")
        train_rows, validation_rows, how = self._validation_split(validation, positions[0].size, random_state)
        batch_size = scaled_batch_size(train_rows.size) if batch_size is None else batch_size
        start = logg.info(
            f"training CLIP on {train_rows.size} paired cells in minibatches of {batch_size} "
            f"(validation: {how}, {validation_rows.size} cells)"
        )
        # Each split gathered straight from the inputs: a copy of all paired cells' inputs would stay alive through
        # training beside the splits' own.
        train_loader = row_loader(
            *(values[index[train_rows]] for values, index in zip(inputs, positions, strict=True)),
            batch_size=batch_size,
            shuffle=True,
            seed=random_state,
        )
        validation_loader = None
        if validation_rows.size:
            validation_loader = row_loader(
                *(values[index[validation_rows]] for values, index in zip(inputs, positions, strict=True)),
                batch_size=batch_size,
                shuffle=False,
            )
        plan = TrainingPlan(
            self.module,
            lr=self.default_lr if lr is None else lr,
            weight_decay=self.default_weight_decay if weight_decay is None else weight_decay,
        )
        self._fit(
            plan,
            train_loader,
            validation_loader,
            max_epochs=DEFAULT_MAX_EPOCHS if max_epochs is None else max_epochs,
            early_stopping=early_stopping,
            patience=patience,
            accelerator=accelerator,
            devices=devices,
            progress_bar=progress_bar,
            seed=random_state,
            **trainer_kwargs,
        )
        self.train_info.update(
            {
                "validation": how,
                "n_train_cells": int(train_rows.size),
                "n_validation_cells": int(validation_rows.size),
                "lr": plan.lr,
                "weight_decay": plan.weight_decay,
                "batch_size": batch_size,
            }
        )
        logg.info(
            f"    finished after {self.train_info['epochs']} epochs (best: {self.train_info['best_epoch']})",
            time=start,
        )

    # ----- inference --------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def get_latent_representation(
        self, mdata: MuData | None = None, modality: str | None = None, *, batch_size: int = 8192
    ) -> np.ndarray:
        """The L2-normalised embedding of every cell of ``modality`` in ``mdata``.

        Parameters
        ----------
        mdata
            The training MuData (default) or a new query whose representation was computed the same way (e.g. with
            ``mm.pp.lsi_harmony_transform(query, reference=mdata)``, then, for a model trained on
            ``X_lsi_harmony_depth``, ``mm.pp.append_depth(query, reference=mdata)``).
        modality
            One of the two registered modalities.
        batch_size
            Cells encoded at once.

        Returns
        -------
        A (cells × n_latent) float32 array with rows of unit norm, in the order of ``mdata[modality].obs_names``.
        """
        mods = self.setup_args["mods"]
        if modality not in mods:
            raise ValueError(f"modality={modality!r} is not one of the model's modalities {mods}")
        check_int(batch_size, "batch_size")
        mdata = self._check_query(mdata)
        registration: ModalityRegistration = self.registrations[modality]
        values = torch.from_numpy(modality_inputs(mdata, registration))
        index = mods.index(modality)
        return self._embed_in_batches(
            values, batch_size, lambda batch: self.module.inference(batch, index), self.init_params["n_latent"]
        )


def _per_modality(value: object, mods: list[str], argument: str) -> dict[str, Any]:
    """``value`` as ``{mod: setting}``, checked to name exactly the model's modalities."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{argument} must be a number or a mapping from each of {mods} to its setting, got {value!r}")
    missing, unknown = [mod for mod in mods if mod not in value], [mod for mod in value if mod not in mods]
    if missing or unknown:
        raise KeyError(f"{argument} must give a setting for each of {mods} (missing {missing}, unknown {unknown})")
    for mod in mods:
        setting = value[mod]
        if not is_number(setting) and not isinstance(setting, Sequence | np.ndarray) or isinstance(setting, str):
            raise ValueError(f"{argument}['{mod}'] must be a number or a list of numbers, got {setting!r}")
    return {mod: value[mod] for mod in mods}


def first_level(levels: np.ndarray) -> str:
    """The first batch level in order of appearance (MatchCLOT holds out its first training batch)."""
    _, first_index = np.unique(levels, return_index=True)
    return levels[np.min(first_index)]
