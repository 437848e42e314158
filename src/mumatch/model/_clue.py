"""``mm.model.CLUE``: the cross-linked unified embedding of K modalities, scvi-tools-style.

The registration, Lightning training, history and save/load come from :mod:`mumatch.model._base` (one registration
per modality, paired cells found by shared obs names). What is CLUE's own lives here: the count layers and
likelihoods of every modality, the table of cells (each cell of the transductive MuData with the modalities that
measured it), and the competition's hyperparameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as nn_functional
from mudata import MuData
from scanpy import logging as logg

from .._ensemble import concatenate_members
from .._layout import MISSING_BATCH, batch_labels, representation_params
from .._modality import assay_of
from .._validate import check_counts, check_int, check_layer, check_mods, check_mudata, check_positive, is_number
from ..module._clue import CLUEModule
from ..nn._likelihoods import LIKELIHOODS
from ._base import MuDataModel, ShuffledBatches, TrainingPlan, forked_torch_rng, modality_inputs

# The CLUE team's configurations for the NeurIPS 2021 matching task (published with their submission and used by
# scglue's SCCLUEModel; see /work/shared/PEERS.md): latent width per modality, encoder (x2u), decoder (u2x) and
# discriminator (du) layers, dropout, and loss weights. Their lam_data/lam_align/lam_cross/lam_cos are our
# lam_self/lam_adversarial/lam_cross/lam_mse (MSE to the cell's mean embedding stands in for their cosine term).
CITE_CONFIG: dict[str, Any] = {
    "n_input_comps": 100,
    "n_latent": 20,
    "n_hidden": 512,
    "n_layers": 2,
    "n_hidden_decoder": 128,
    "n_layers_decoder": 1,
    "n_hidden_discriminator": 128,
    "n_layers_discriminator": 2,
    "dropout": 0.2,
    "lam_self": 1.0,
    "lam_kl": 1.0,
    "lam_adversarial": 2.0,
    "lam_cross": 2.0,
    "lam_mse": 1.0,
}
MULTIOME_CONFIG: dict[str, Any] = {
    "n_input_comps": 100,
    "n_latent": 50,
    "n_hidden": 512,
    "n_layers": 2,
    "n_hidden_decoder": 256,
    "n_layers_decoder": 1,
    "n_hidden_discriminator": 256,
    "n_layers_discriminator": 1,
    "dropout": 0.2,
    "lam_self": 1.0,
    "lam_kl": 0.3,
    "lam_adversarial": 0.02,
    "lam_cross": 1.0,
    "lam_mse": 0.02,
}
CONFIGS = {"cite": CITE_CONFIG, "multiome": MULTIOME_CONFIG}
# n_input_comps: the encoders read each representation's leading 100 components, as the CLUE entry's encoders read a
# 100-component PCA/LSI. The wider defaults of lsi_harmony (192 RNA, 256 ATAC, chosen for CLIP) let the encoders
# overfit the few hundred paired cells of the starters: one model 0.0076 -> 0.0100 on multiome (6 seeds), 0.060 ->
# 0.070 on cite, neutral on pbmc10k_cite (docs/benchmarks.md, nineteenth session). CLR protein values stay whole.
# Optimiser and minibatch defaults of scglue's trainers (Adam, learning rate 2e-3, 128 cells per minibatch).
DEFAULT_LR = 2e-3
DEFAULT_BATCH_SIZE = 128
# Early stopping: scglue stops after a long plateau; 30 epochs of patience on a 10 % validation split works on the
# starters and on pbmc10k_cite (docs/benchmarks.md).
DEFAULT_PATIENCE = 30
# By default the learning rate drops 10x after a third of the patience without improvement, as in scglue's CLUE
# schedule (REDUCE_LR_PATIENCE_PRG / PATIENCE_PRG = 3 / 9), and training goes on at the lower rate.
REDUCE_LR_PATIENCE_FRACTION = 1 / 3
DEFAULT_VALIDATION_FRACTION = 0.1
# About 40,000 gradient steps at most, about what scglue's automatic schedule runs on small data (PEERS.md), capped
# at 1,000 epochs; early stopping usually ends far earlier.
MAX_STEPS = 40_000
MAX_EPOCHS_CAP = 1000
# The matching monitor needs a few held-out paired cells; with fewer, early stopping watches the validation objective.
MIN_MATCHING_CELLS = 10
# Similarities of held-out cells computed at once by the matching monitor (256 MB in float32): 8192 cells in one go.
FOSCTTM_MAX_ENTRIES = 1 << 26


def _is_atac(mdata: MuData, mod: str) -> bool:
    return assay_of(mod, mdata[mod].var) == "atac"


def _default_likelihood(mdata: MuData, mod: str) -> str:
    """Bernoulli on binarised peaks, as scglue models ATAC; negative binomial for RNA, ADT and other counts."""
    return "bernoulli" if _is_atac(mdata, mod) else "nb"


class CellTable(torch.utils.data.Dataset):
    """Every cell of the transductive MuData with the modalities that measured it, indexed by arrays of rows.

    A cell is one obs name: a paired cell appears in several modalities, an unpaired one in one. ``table[rows]``
    returns the minibatch the module's ``loss`` takes: ``(reps, counts, observed, batch)``, where the rows of a
    modality a cell lacks are zeros and ``observed`` says which are real (never mistaken for measured zeros).
    """

    def __init__(
        self,
        names: pd.Index,
        positions: np.ndarray,
        reps: Sequence[np.ndarray],
        counts: Sequence[sp.csr_matrix],
        batch_codes: np.ndarray,
        n_batch: int,
    ):
        self.names, self.positions = names, positions
        self.reps = [torch.as_tensor(rep) for rep in reps]
        self.counts = counts
        self.batch_codes = torch.as_tensor(batch_codes)
        self.n_batch = n_batch

    def __len__(self) -> int:
        return self.positions.shape[0]

    def __getitem__(
        self, rows: np.ndarray
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
        positions = self.positions[rows]
        observed = torch.as_tensor(positions >= 0)
        reps, counts = [], []
        for j, (rep, matrix) in enumerate(zip(self.reps, self.counts, strict=True)):
            present = np.flatnonzero(positions[:, j] >= 0)
            source = positions[present, j]
            rep_rows = rep.new_zeros((rows.size, rep.shape[1]))
            rep_rows[present] = rep[source]
            count_rows = torch.zeros((rows.size, matrix.shape[1]))
            count_rows[present] = torch.as_tensor(matrix[source].toarray())
            reps.append(rep_rows)
            counts.append(count_rows)
        codes = self.batch_codes[rows]
        batch = torch.zeros((rows.size, len(self.reps), self.n_batch + 1))
        batch.scatter_(2, (codes.clamp_min(-1) % (self.n_batch + 1))[:, :, None].long(), 1.0)
        # Code -1 (unknown batch) lands in the last, dropped column: an all-zero one-hot row.
        return reps, counts, observed, batch[:, :, : self.n_batch]


class CLUE(MuDataModel):
    """Cross-linked unified embedding (CLUE) of K modalities, trained on a transductive MuData.

    Each modality gets a latent subspace; a K × K matrix of encoders maps each modality's representation (LSI/PCA) to
    every subspace, and count decoders reconstruct ``layers['counts']``. Paired cells (same obs name in several
    modalities) train the self, cross, MSE and adversarial terms; unpaired cells their self and adversarial terms
    (see :mod:`mumatch.module._clue`). The embedding of a cell is the concatenation of its K subspaces' posterior
    means computed from the modality it was measured in, so cells of different modalities can be matched.

    Parameters
    ----------
    mdata
        MuData set up with :meth:`setup_mudata`.
    config
        Which of the CLUE competition configurations supplies the defaults: ``"cite"``, ``"multiome"``, or
        ``"auto"`` (multiome when a modality holds peaks or has a Bernoulli likelihood, else cite).
    random_state
        Seed of the weight initialisation.
    **hyperparameters
        Overrides of the configuration: ``n_latent``, ``n_hidden``, ``n_layers``, ``n_hidden_decoder``,
        ``n_layers_decoder``, ``n_hidden_discriminator``, ``n_layers_discriminator``, ``dropout``, ``lam_self``,
        ``lam_cross``, ``lam_mse``, ``lam_kl``, ``lam_adversarial`` (see :class:`~mumatch.module._clue.CLUEModule`),
        and ``n_input_comps``: how many leading components of each modality's representation the encoders read
        (100, as the CLUE entry's 100-component PCA/LSI; ``None``: all of them; a mapping gives one per modality).
        A single number leaves whole the representations that are not ranked components
        (``lsi_harmony``'s CLR values of every protein).

    Examples
    --------
    >>> import mumatch as mm
    >>> mm.model.CLUE.setup_mudata(mdata, ["rna", "atac"], rep_key="X_lsi_harmony")  # doctest: +SKIP
    >>> model = mm.model.CLUE(mdata)  # doctest: +SKIP
    >>> model.train()  # doctest: +SKIP
    >>> mdata["rna"].obsm["X_clue"] = model.get_latent_representation(modality="rna")  # doctest: +SKIP
    """

    _module_cls = CLUEModule

    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        mods: Sequence[str] | None = None,
        *,
        rep_key: str | Mapping[str, str] = "X_lsi_harmony",
        layer: str | None = "counts",
        batch_key: str | None = "batch",
        likelihood: str | Mapping[str, str] | None = None,
    ) -> None:
        """Register the modalities, their inputs, count layers and likelihoods (in ``mdata.uns['_mumatch_setup']``).

        Parameters
        ----------
        mdata
            Transductive MuData: paired cells share an obs name across modalities.
        mods
            The modalities to embed (at least two; default all).
        rep_key
            ``.obsm`` key of every modality's input representation (one for all, or one per modality), e.g.
            ``"X_lsi_harmony"`` from :func:`mumatch.pp.lsi_harmony`.
        layer
            Layer with raw counts (``None``: ``.X``); every modality must have it.
        batch_key
            Column of ``.obs`` (each modality's, else ``mdata.obs``) with the batch, given to the decoders (cells
            without a label get none); ``None`` for no batch. A column that no modality has raises a KeyError, except
            the default ``"batch"`` (no batches, with a warning).
        likelihood
            Count likelihood, ``"nb"`` or ``"bernoulli"`` (on binarised counts), for all modalities or per
            modality. Default: negative binomial for RNA and ADT, Bernoulli for peaks (an ATAC modality, recognised as
            :func:`~mumatch.pp.lsi_harmony` recognises it: ``feature_types`` ATAC or Peaks, or the name).
        """
        check_mudata(mdata)
        mods = check_mods(mdata, mods)
        if len(mods) < 2:
            raise ValueError(f"CLUE embeds at least two modalities, got mods={mods}; pass two or more")
        if isinstance(likelihood, Mapping):
            unknown = [name for name in likelihood if name not in mods]
            if unknown:
                raise KeyError(f"likelihood names modalities {unknown} that are not embedded; use names from {mods}")
            chosen = likelihood
        elif likelihood is None or isinstance(likelihood, str):
            chosen = dict.fromkeys(mods, likelihood)
        else:
            raise ValueError(f"likelihood must be a name, a dict of names per modality or None, got {likelihood!r}")
        likelihoods = {mod: chosen.get(mod) or _default_likelihood(mdata, mod) for mod in mods}
        for mod, name in likelihoods.items():
            if not isinstance(name, str) or name not in LIKELIHOODS:
                raise ValueError(f"likelihood={name!r} for '{mod}' is not supported; choose one of {list(LIKELIHOODS)}")
        for mod in mods:
            where = f"mdata['{mod}'].layers['{layer}']" if layer is not None else f"mdata['{mod}'].X"
            check_counts(check_layer(mdata, mod, layer), where, "layer")
        all_names = pd.Index(np.concatenate([mdata[mod].obs_names.to_numpy() for mod in mods]))
        if not all_names.duplicated().any():
            raise ValueError(
                f"no cell is measured in two of {mods} (no shared obs names): CLUE learns the cross-modal links from "
                "paired cells; give paired cells the same obs name in every modality"
            )
        for mod in mods:
            others = np.concatenate([mdata[other].obs_names.to_numpy() for other in mods if other != mod])
            if not mdata[mod].obs_names.isin(others).any():
                # Only the adversarial term would place this modality: its cross links are never learnt.
                logg.warning(
                    f"no cell of '{mod}' is measured in another of {mods}: CLUE learns no cross-modal link for it, so "
                    "its embedding is aligned with the others only globally"
                )
        levels: list[str] = []
        for mod in mods:
            labels = batch_labels(mdata, mod, batch_key)
            if labels is not None:
                levels += [level for level in pd.unique(labels) if level != MISSING_BATCH and level not in levels]
        cls._register(
            mdata, mods, rep_key, batch_key, layer=layer, likelihoods=likelihoods, batch_levels=sorted(levels)
        )

    def __init__(
        self,
        mdata: MuData,
        *,
        config: Literal["auto", "cite", "multiome"] = "auto",
        random_state: int = 0,
        **hyperparameters: Any,
    ):
        super().__init__(mdata)
        setup = self.setup_args
        mods = setup["mods"]
        if config == "auto":
            config = (
                "multiome"
                if any(
                    setup["likelihoods"][mod] == "bernoulli" or (mod in mdata.mod and _is_atac(mdata, mod))
                    for mod in mods
                )
                else "cite"
            )
        if config not in CONFIGS:
            raise ValueError(f"config={config!r} is unknown; choose 'auto' or one of {list(CONFIGS)}")
        unknown = set(hyperparameters) - set(CITE_CONFIG)
        if unknown:
            raise TypeError(f"unknown hyperparameters {sorted(unknown)}; choose from {sorted(CITE_CONFIG)}")
        params = {**CONFIGS[config], **hyperparameters}
        widths = ("n_latent", "n_hidden", "n_layers", "n_hidden_decoder", "n_layers_decoder")
        for name in (*widths, "n_hidden_discriminator", "n_layers_discriminator"):
            check_int(params[name], name)
        self.n_input_used = self._input_widths(mdata, params.pop("n_input_comps"))
        for name in ("lam_self", "lam_cross", "lam_mse", "lam_kl", "lam_adversarial"):
            if not is_number(params[name]) or not np.isfinite(params[name]) or params[name] < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {params[name]!r}")
        if not is_number(params["dropout"]) or not 0 <= params["dropout"] < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {params['dropout']!r}")
        n_features = [len(self.registrations[mod].var_names) for mod in mods]
        with forked_torch_rng():
            torch.manual_seed(random_state)
            self.module = CLUEModule(
                [self.n_input_used[mod] for mod in mods],
                n_features,
                [setup["likelihoods"][mod] for mod in mods],
                len(setup["batch_levels"]),
                **params,
            )
        # The widths read, per modality: a saved model rebuilds the same encoders whatever the default becomes.
        hyperparameters = {**hyperparameters, "n_input_comps": dict(self.n_input_used)}
        self._init_params(config=config, random_state=random_state, **hyperparameters)

    def _input_widths(self, mdata: MuData, n_input_comps: object) -> dict[str, int]:
        """How many leading columns of each modality's representation the encoders read (see ``n_input_comps``)."""
        mods = self.setup_args["mods"]
        if isinstance(n_input_comps, Mapping):
            unknown = [mod for mod in n_input_comps if mod not in mods]
            if unknown:
                raise KeyError(f"n_input_comps names modalities {unknown} that are not embedded; use names from {mods}")
            requested = {mod: n_input_comps.get(mod) for mod in mods}
        else:
            # One number applies to ranked components (LSI, PCA), not to lsi_harmony's CLR values of every protein
            # (method "clr"), whose columns are proteins in the order of .var: a cut would drop the last ones.
            requested = {
                mod: None
                if mod in mdata.mod
                and representation_params(mdata, mod, self.registrations[mod].rep_key).get("method") == "clr"
                else n_input_comps
                for mod in mods
            }
        for mod, value in requested.items():
            check_int(
                value,
                f"n_input_comps for '{mod}'" if isinstance(n_input_comps, Mapping) else "n_input_comps",
                allow_none=True,
            )
        widths = {
            mod: self.registrations[mod].n_input if value is None else min(value, self.registrations[mod].n_input)
            for mod, value in requested.items()
        }
        for mod, width in widths.items():
            if mod not in mdata.mod:  # a saved model loaded to embed the other modalities
                continue
            rep_key, n_input = self.registrations[mod].rep_key, self.registrations[mod].n_input
            appended = int(representation_params(mdata, mod, rep_key).get("n_appended", 0))
            if appended and width < n_input:
                # The appended columns come last: a cut to the leading components drops them.
                logg.warning(
                    f"CLUE's encoders read the leading {width} of the {n_input} columns of mdata['{mod}'].obsm"
                    f"['{rep_key}']: its {appended} appended columns (mm.pp.append_depth) are not read; pass "
                    "model_kwargs={'n_input_comps': None} to read every column"
                )
        return widths

    @classmethod
    def _saved_init_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        # Models saved before n_input_comps existed read every column of their representations.
        return {"n_input_comps": None, **params}

    # ----- data ---------------------------------------------------------------------------------------------------
    def _inputs(self, mdata: MuData, mod: str) -> np.ndarray:
        """The columns of modality ``mod``'s representation that the encoders read (see ``n_input_comps``)."""
        return np.ascontiguousarray(modality_inputs(mdata, self.registrations[mod])[:, : self.n_input_used[mod]])

    def _cell_table(self, mdata: MuData) -> CellTable:
        """Every cell of the registered modalities of ``mdata``, with its inputs, counts and batch."""
        mods = self.setup_args["mods"]
        names = pd.Index(pd.unique(np.concatenate([mdata[mod].obs_names.to_numpy() for mod in mods])))
        positions = np.stack([mdata[mod].obs_names.get_indexer(names) for mod in mods], axis=1)
        reps = [self._inputs(mdata, mod) for mod in mods]
        counts = [sp.csr_matrix(check_layer(mdata, mod, self.setup_args["layer"]), dtype=np.float32) for mod in mods]
        levels = {level: code for code, level in enumerate(self.setup_args["batch_levels"])}
        batch_codes = np.full(positions.shape, -1, dtype=np.int64)
        for j, mod in enumerate(mods):
            labels = batch_labels(mdata, mod, self.setup_args["batch_key"])
            if labels is None:
                continue
            codes = labels.map(levels).fillna(-1).to_numpy(dtype=np.int64)
            present = positions[:, j] >= 0
            batch_codes[present, j] = codes[positions[present, j]]
        return CellTable(names, positions, reps, counts, batch_codes, len(levels))

    # ----- training -----------------------------------------------------------------------------------------------
    def train(
        self,
        max_epochs: int | None = None,
        *,
        lr: float = DEFAULT_LR,
        weight_decay: float = 0.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
        early_stopping: bool = True,
        patience: int = DEFAULT_PATIENCE,
        reduce_lr_patience: int | Literal["auto"] | None = "auto",
        validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
        monitor: Literal["loss", "matching"] = "loss",
        random_state: int = 0,
        accelerator: str = "auto",
        devices: int | str = "auto",
        progress_bar: bool = True,
        **trainer_kwargs: Any,
    ) -> None:
        """Train on every cell of the registered MuData (transductive), with early stopping on held-out cells.

        Parameters
        ----------
        max_epochs
            Epochs over all cells; default about 40,000 minibatches (capped at 1,000 epochs), usually cut short by
            early stopping.
        lr, weight_decay
            Adam's learning rate and weight decay.
        batch_size
            Cells per minibatch.
        early_stopping
            Stop when the monitored metric has not improved for ``patience`` epochs; the best weights are restored.
            ``False``: train ``max_epochs`` epochs and keep the last weights (``train_info["best_epoch"]`` still
            reports the best).
        patience
            Epochs without improvement before stopping.
        reduce_lr_patience
            The learning rate is divided by 10 when the monitored metric has not improved for more than this many
            epochs (again after each further such plateau; torch's ``ReduceLROnPlateau``); ``"auto"``: a third of
            ``patience``, rounded (scglue's ratio), or ``None`` below patience 3; ``None`` keeps the rate constant.
            At most ``patience - 2`` with early stopping, so that some epoch trains at the lower rate. Needs a
            validation split.
        validation_fraction
            Fraction of the cells (paired and unpaired, drawn with ``random_state``) held out for validation; 0
            trains on all cells without early stopping.
        monitor
            What early stopping, the learning-rate schedule and the choice of the kept weights watch: ``"loss"``,
            the validation value of what the encoders and decoders minimise (``history["validation_generator"]``:
            the loss with the discriminator's cross-entropy counted negatively, as scglue's ``gen_loss``, so that
            better alignment counts as progress; ``validation_loss`` counts it positively, as the optimiser sees
            it through the gradient reversal), or
            ``"matching"``, how well the held-out paired cells find their partner across modalities (FOSCTTM of
            their embeddings, cosine distance; falls back to the loss when fewer than 10 held-out cells are paired).
            Either way ``history["validation_foscttm"]`` records the matching of the held-out pairs. The loss is the
            default: on the starters and pbmc10k_cite, stopping on matching kept earlier weights that matched the
            test cells worse (``docs/benchmarks.md``); a few dozen held-out pairs rank too noisily.
        random_state
            Seed of the split, the minibatch order and the sampling noise.
        accelerator, devices, progress_bar, **trainer_kwargs
            Passed to ``lightning.Trainer`` (``"auto"`` uses a GPU when there is one; ``devices="auto"`` is one device,
            as in scvi-tools: pass ``devices=N`` for DDP on N devices, which then looks for parameters without a
            gradient unless a ``strategy`` is given, e.g. ``"ddp_spawn_find_unused_parameters_true"``).
        """
        self._check_trainable()
        check_int(batch_size, "batch_size", minimum=2)
        check_int(patience, "patience")
        explicit_reduce_lr = not (isinstance(reduce_lr_patience, str) and reduce_lr_patience == "auto")
        if not explicit_reduce_lr:
            # The rate drops on the (reduce_lr_patience + 1)-th epoch without improvement, early stopping comes on the
            # patience-th: below patience 3 there is no room for an epoch at the lower rate.
            third = round(patience * REDUCE_LR_PATIENCE_FRACTION)
            reduce_lr_patience = third if third + 1 < patience else None
        check_int(reduce_lr_patience, "reduce_lr_patience", allow_none=True)
        valid_fraction = isinstance(validation_fraction, int | float | np.integer | np.floating)
        if isinstance(validation_fraction, bool) or not valid_fraction or not 0 <= validation_fraction < 1:
            raise ValueError(f"validation_fraction must lie in [0, 1), got {validation_fraction!r}")
        validates = validation_fraction > 0
        if early_stopping and validates and reduce_lr_patience is not None and reduce_lr_patience + 1 >= patience:
            raise ValueError(
                f"reduce_lr_patience ({reduce_lr_patience}) must be at most patience - 2 ({patience - 2}): the rate "
                "drops after reduce_lr_patience + 1 epochs without improvement and training stops after patience; "
                "lower it, or pass None for a constant rate"
            )
        if reduce_lr_patience is not None and not validates and explicit_reduce_lr:
            logg.warning(
                "reduce_lr_patience needs a validation split (validation_fraction > 0); the rate stays constant"
            )
        check_int(max_epochs, "max_epochs", allow_none=True)
        check_positive(lr, "lr")
        if monitor not in ("matching", "loss"):
            raise ValueError(f"monitor must be 'loss' or 'matching', got {monitor!r}")
        table = self._cell_table(self.mdata)
        mods = self.setup_args["mods"]
        for j, rep in enumerate(table.reps):
            # One cell has no spread (its sample std is NaN): its input is then only centred.
            std = rep.std(0) if rep.shape[0] > 1 else torch.ones_like(rep[0])
            self.module.set_input_scaling(j, rep.mean(0), std)
        n_cells = len(table)
        order = np.random.default_rng(random_state).permutation(n_cells)
        # A fraction > 0 asks for validation: it holds out at least one cell, never silently none.
        n_validation = max(1, int(round(validation_fraction * n_cells))) if validation_fraction > 0 else 0
        if n_validation >= n_cells:
            raise ValueError(f"{n_cells} cells are too few to hold out validation_fraction={validation_fraction}")
        validation_rows, train_rows = np.sort(order[:n_validation]), np.sort(order[n_validation:])
        if max_epochs is None:
            steps_per_epoch = max(1, int(np.ceil(train_rows.size / batch_size)))
            max_epochs = int(min(MAX_EPOCHS_CAP, max(1, MAX_STEPS // steps_per_epoch)))
        start = logg.info(
            f"training CLUE on {n_cells} cells of {mods} ({int(((table.positions >= 0).sum(1) >= 2).sum())} measured "
            f"in several modalities), at most {max_epochs} epochs"
        )
        train_loader = _loader(table, train_rows, batch_size, shuffle=True, seed=random_state)
        validation_loader = (
            _loader(table, validation_rows, batch_size, shuffle=False, seed=random_state) if n_validation else None
        )
        pairs = _held_out_pairs(table, validation_rows)
        if monitor == "matching" and not pairs and validation_loader is not None:
            logg.warning(
                f"fewer than {MIN_MATCHING_CELLS} held-out cells are paired; early stopping watches the validation "
                "objective (raise validation_fraction to monitor matching)"
            )
        monitored = "validation_foscttm" if monitor == "matching" and pairs else "validation_generator"
        plan = MatchingTrainingPlan(
            self.module,
            lr=lr,
            weight_decay=weight_decay,
            pairs=pairs,
            reduce_lr_patience=reduce_lr_patience if validation_loader is not None else None,
            monitor=monitored,
        )
        self._fit(
            plan,
            train_loader,
            validation_loader,
            max_epochs=max_epochs,
            early_stopping=early_stopping and validation_loader is not None,
            patience=patience,
            monitor=monitored,
            accelerator=accelerator,
            devices=devices,
            progress_bar=progress_bar,
            seed=random_state,
            **trainer_kwargs,
        )
        self.train_info.update({"n_cells": n_cells, "n_validation": n_validation, "max_epochs": max_epochs})
        logg.info("    finished", time=start, deep=f"after {self.train_info['epochs']} epochs")

    # ----- inference ----------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def get_latent_representation(
        self,
        mdata: MuData | None = None,
        modality: str | None = None,
        *,
        normalize_subspaces: bool = True,
        batch_size: int = 4096,
    ) -> np.ndarray:
        """The embedding of every cell of one modality, computed from that modality alone.

        Parameters
        ----------
        mdata
            Data to embed (default: the registered MuData); its representation must come from the same
            preprocessing as the training data.
        modality
            The modality whose cells to embed (default: the first registered one).
        normalize_subspaces
            L2-normalise each modality's subspace and scale it by ``1/√K``, so that the cosine similarity of two
            cells is the mean of their K subspace cosine similarities (the default, as :func:`~mumatch.tl.train_clue`
            writes it). ``False``: the posterior means as they are, where the subspace whose posterior means have the
            largest norm dominates the cosine.
        batch_size
            Cells per forward pass.

        Returns
        -------
        ``(mdata[modality].n_obs, K * n_latent)`` float32: the posterior means of all K subspaces (each normalised,
        by default), concatenated.
        """
        if not isinstance(normalize_subspaces, bool | np.bool_):
            raise ValueError(f"normalize_subspaces must be True or False, got {normalize_subspaces!r}")
        check_int(batch_size, "batch_size")
        mdata = self._check_query(mdata)
        mods = self.setup_args["mods"]
        modality = modality or mods[0]
        if modality not in mods:
            raise KeyError(f"modality={modality!r} is not one of the model's modalities {mods}")
        inputs = torch.as_tensor(self._inputs(mdata, modality))
        index = mods.index(modality)
        n_mods, n_latent = self.module.n_mods, self.module.n_latent
        embedding = self._embed_in_batches(
            inputs, batch_size, lambda batch: self.module.embed(index, batch), n_mods * n_latent
        )
        if normalize_subspaces:
            # The subspaces combine as an ensemble's members do: cosine similarities average.
            embedding = concatenate_members(np.split(embedding, n_mods, axis=1))
        return embedding.astype(np.float32)


class MatchingTrainingPlan(TrainingPlan):
    """:class:`~mumatch.model._base.TrainingPlan` that also logs how well held-out paired cells match.

    ``validation_foscttm``: for each pair of modalities, the FOSCTTM of the held-out cells measured in both, between
    the embeddings each modality gives them on its own (cosine distance, as :func:`~mumatch.tl.match_ot` compares
    them); the mean over pairs. Lower is better, 0.5 is random.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        lr: float,
        weight_decay: float,
        pairs: Sequence[tuple[int, int, torch.Tensor, torch.Tensor]] = (),
        **plan_kwargs: Any,
    ):
        super().__init__(module, lr, weight_decay, **plan_kwargs)
        self.pairs = list(pairs)

    def on_validation_epoch_end(self) -> None:
        """Log ``validation_foscttm`` (after the validation loss; early stopping reads both at the end)."""
        if not self.pairs or self.trainer.sanity_checking:
            return
        values = []
        # The inputs follow the weights' precision (a Trainer's "bf16-true" or "64-true" converts the module only).
        dtype = next(self.module.parameters()).dtype
        with torch.no_grad():
            for j, k, reps_j, reps_k in self.pairs:
                embedding_j = nn_functional.normalize(self.module.embed(j, reps_j.to(self.device, dtype)), dim=1)
                embedding_k = nn_functional.normalize(self.module.embed(k, reps_k.to(self.device, dtype)), dim=1)
                values.append(_foscttm(embedding_j.float(), embedding_k.float()))
        self.log("validation_foscttm", torch.stack(values).mean(), on_epoch=True, sync_dist=True)


def _foscttm(x: torch.Tensor, y: torch.Tensor, max_entries: int = FOSCTTM_MAX_ENTRIES) -> torch.Tensor:
    """FOSCTTM of aligned unit-norm embeddings (row i of both is one cell), both directions, ties counted half.

    The similarities are computed a strip of rows at a time, at most ``max_entries`` of them: the whole matrix of the
    held-out paired cells, every epoch, would be 10 GB for 50k of them. A column's rank needs its true similarity,
    found in its own row's strip, so with several strips they are computed twice: once for the true similarities and
    the rows' ranks, once for the columns' ranks.
    """
    n = x.shape[0]
    step = max(1, min(n, max_entries // max(n, 1)))
    strips = [slice(start, min(start + step, n)) for start in range(0, n, step)]
    true = x.new_empty(n)
    greater_rows, ties_rows = (torch.empty(n, dtype=torch.long, device=x.device) for _ in range(2))
    greater_cols, ties_cols = (torch.zeros(n, dtype=torch.long, device=x.device) for _ in range(2))
    similarity = None
    for rows in strips:
        similarity = x[rows] @ y.T
        own = torch.arange(rows.start, rows.stop, device=x.device)
        true[rows] = similarity[own - rows.start, own]
        greater_rows[rows] = (similarity > true[rows, None]).sum(1)
        ties_rows[rows] = (similarity == true[rows, None]).sum(1)
    for rows in strips:
        if len(strips) > 1:
            similarity = x[rows] @ y.T
        greater_cols += (similarity > true[None, :]).sum(0)
        ties_cols += (similarity == true[None, :]).sum(0)
    closer_rows = greater_rows + 0.5 * ties_rows - 0.5
    closer_cols = greater_cols + 0.5 * ties_cols - 0.5
    return (closer_rows + closer_cols).float().mean() / (2 * max(n - 1, 1))


def _held_out_pairs(table: CellTable, rows: np.ndarray) -> list[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Held-out cells measured in two modalities, for each pair with at least :data:`MIN_MATCHING_CELLS` of them.

    Each item: the two modalities' indices and those cells' input representations in each.
    """
    pairs = []
    positions = table.positions[rows]
    n_mods = positions.shape[1]
    for j in range(n_mods):
        for k in range(j + 1, n_mods):
            both = (positions[:, j] >= 0) & (positions[:, k] >= 0)
            if both.sum() >= MIN_MATCHING_CELLS:
                reps_j = table.reps[j][torch.as_tensor(positions[both, j])]
                reps_k = table.reps[k][torch.as_tensor(positions[both, k])]
                pairs.append((j, k, reps_j, reps_k))
    return pairs


class _Rows(torch.utils.data.Dataset):
    """A subset of a :class:`CellTable` indexed by arrays of positions within the subset."""

    def __init__(self, table: CellTable, rows: np.ndarray):
        self.table, self.rows = table, rows

    def __len__(self) -> int:
        return self.rows.size

    def __getitem__(self, positions: np.ndarray):
        return self.table[self.rows[positions]]


def _loader(table: CellTable, rows: np.ndarray, batch_size: int, *, shuffle: bool, seed: int):
    """Minibatches of the cells ``rows`` of ``table`` (see :class:`~mumatch.model._base.ShuffledBatches`)."""
    sampler = ShuffledBatches(rows.size, batch_size, shuffle=shuffle, seed=seed)
    return torch.utils.data.DataLoader(_Rows(table, rows), sampler=sampler, batch_size=None)
