"""Scaffolding shared by mumatch's model classes: registration, Lightning training, history, save and load.

Why not scvi-tools' ``AnnDataManager`` and ``TrainRunner`` as they are: scvi-tools 1.4 registers one AnnData (or a
fully paired MuData: ``check_fully_paired_mudata`` refuses unpaired cells), and its runner builds its own data
splitter from that registration. mumatch keeps paired and unpaired cells in one transductive MuData. Like scvi-tools'
GIMVI, we register each modality on its own and find the paired cells by their shared obs names
(:mod:`mumatch._layout`); nothing is padded with zeros. The thin adapter is this module:

- :meth:`MuDataModel._register` (called by a subclass's ``setup_mudata``) checks the modalities and their inputs and
  records the setup arguments, JSON-serialisable, in ``mdata.uns['_mumatch_setup'][class name]``;
- :class:`MuDataModel` reads them back in ``__init__`` and :meth:`~MuDataModel.load`, and holds one
  :class:`ModalityRegistration` per modality (its input key, width and feature names);
- :class:`TrainingPlan` is a small ``LightningModule``: the torch module returns scvi-tools' ``LossOutput`` from
  ``module.loss(*batch)``; the plan logs it, stops on a non-finite loss and optimises with Adam;
- :meth:`MuDataModel._fit` runs ``lightning.Trainer`` (accelerator, devices, strategy and any trainer option pass
  through) with early stopping on the validation loss, the best weights restored at the end, an epoch progress bar
  and ``.history``;
- :meth:`MuDataModel.save` / :meth:`MuDataModel.load` write ``model.pt`` (a ``state_dict``, read back with
  ``torch.load(weights_only=True)``) and ``model.json`` (class, setup and init arguments, input widths, feature
  names, history): no pickled objects.

A subclass sets ``_module_cls``, implements ``setup_mudata`` (calling ``_register``), ``__init__`` (building
``self.module`` and calling ``self._init_params(...)`` with its JSON-serialisable hyperparameters) and ``train``
(building data loaders and calling ``_fit``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as lp
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ProgressBar
from mudata import MuData
from scanpy import logging as logg
from tqdm.auto import tqdm

from .._layout import plain_values, representation_fit, warn_conflicting_batches
from .._validate import (
    SETUP_KEY,
    check_batch_key,
    check_mod,
    check_mudata,
    check_obs_names,
    check_rep,
    obs_column,
)

WEIGHTS_FILE = "model.pt"
METADATA_FILE = "model.json"
# ReduceLROnPlateau's factor (torch's default, which scglue's trainers use).
LR_REDUCTION_FACTOR = 0.1
VALIDATION_PREFIX = "validation_"  # every metric of the validation loop is logged under it
# The weights' dtype under Lightning's "true" precisions (the names it accepts for them); others train in float32.
TRUE_PRECISION_DTYPES = {
    "64-true": torch.float64,
    "64": torch.float64,
    "16-true": torch.float16,
    "bf16-true": torch.bfloat16,
}


def device_options(devices: int | str | Sequence[int], trainer_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The Trainer's ``devices`` (and ``strategy``) for a model's ``devices`` argument.

    ``"auto"`` is one device, as in scvi-tools: Lightning's own ``"auto"`` takes every GPU of a node and runs DDP,
    which the caller did not ask for. With several devices and no ``strategy``, DDP looks for parameters without a
    gradient: a CLUE model always has some (a Bernoulli modality's unused dispersion; the discriminator when its
    weight is 0; a modality's networks on a minibatch without its cells), and plain DDP stops on them.
    """
    if isinstance(devices, str) and devices == "auto":
        return {"devices": 1}
    listed = isinstance(devices, Sequence) and not isinstance(devices, str)
    several = not (len(devices) == 1 if listed else devices in (1, "1"))
    if several and "strategy" not in trainer_kwargs:
        from lightning.pytorch.strategies import DDPStrategy

        return {"devices": devices, "strategy": DDPStrategy(find_unused_parameters=True)}
    return {"devices": devices}


@dataclass(frozen=True)
class ModalityRegistration:
    """What a model reads from one modality.

    Attributes
    ----------
    mod
        The modality's name in the MuData.
    rep_key
        The ``.obsm`` key of the modality's input representation.
    n_input
        Width of that representation.
    var_names
        The modality's feature names (checked when a saved model is loaded onto other data).
    fit_id
        Identity of the fitted projection that made the representation (``params['fit_id']`` that
        :func:`mumatch.pp.lsi_harmony` records in ``.uns[rep_key]``), None for a representation without one.
    """

    mod: str
    rep_key: str
    n_input: int
    var_names: tuple[str, ...]
    fit_id: str | None = None


def warn_other_fit(mdata: MuData, registration: ModalityRegistration) -> None:
    """Warn when ``mdata``'s representation comes from another fitted projection than the model's training data."""
    fit_id = representation_fit(mdata, registration.mod, registration.rep_key)
    if registration.fit_id is not None and fit_id is not None and fit_id != registration.fit_id:
        logg.warning(
            f"mdata['{registration.mod}'].obsm['{registration.rep_key}'] comes from another fit of the projection "
            "than the model's training data (same width, another basis: its embedding would be meaningless); "
            "embed new cells with mm.pp.lsi_harmony_transform(mdata, reference) on the training data's fit (then "
            "mm.pp.append_depth(mdata, reference=reference) for a representation with depth columns)"
        )


def modality_inputs(mdata: MuData, registration: ModalityRegistration, argument: str = "mdata") -> np.ndarray:
    """The input representation of every cell of a registered modality, float32, checked against the model.

    Raises a KeyError when the modality or its representation is missing and a ValueError when the width differs from
    the one the model was built for.
    """
    if registration.mod not in mdata.mod:
        raise KeyError(
            f"{argument} has no modality '{registration.mod}' (it has {list(mdata.mod)}); the model embeds the cells "
            f"of '{registration.mod}' from .obsm['{registration.rep_key}']: pass a MuData with that modality, or "
            "choose another modality="
        )
    values = check_rep(mdata, registration.mod, registration.rep_key, "rep_key")
    if values.shape[1] != registration.n_input:
        raise ValueError(
            f"mdata['{registration.mod}'].obsm['{registration.rep_key}'] has {values.shape[1]} columns but the model "
            f"was built for {registration.n_input}; compute the representation the same way as for the training data "
            "(e.g. with the same n_comps)"
        )
    return np.ascontiguousarray(values, dtype=np.float32)


# What Lightning's seed_everything exports for the processes it starts (reset_seed in a later run's DDP setup reads it).
SEED_ENVIRONMENT = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")


def forked_torch_rng() -> AbstractContextManager:
    """Give torch's generators back as they were after the block: the CPU's, and CUDA's where CUDA has started.

    ``fork_rng()``'s default reads the state of every CUDA device, which starts CUDA in the caller's process: a
    Lightning strategy that forks (``ddp_notebook``) then refuses to run.
    """
    devices = range(torch.cuda.device_count()) if torch.cuda.is_initialized() else []
    return torch.random.fork_rng(devices=devices)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Lightning's ``seed_everything(seed)`` inside; the caller's generators and environment as they were after it.

    Python's, numpy's and torch's global generators are given back, and Lightning's seed variables. A training that
    seeded the global generators and left them so reset the caller's random streams: every ``np.random`` draw after
    each training gave the same numbers.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002 (the caller's)
    environment = {name: os.environ.get(name) for name in SEED_ENVIRONMENT}
    with forked_torch_rng():
        try:
            lp.seed_everything(seed, verbose=False)
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)  # noqa: NPY002
            for name, value in environment.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


class ShuffledBatches(torch.utils.data.Sampler):
    """Minibatches of row indices, reshuffled each epoch from a seed; sharded across processes under DDP.

    Each item is an index array, so a dataset can gather a whole minibatch with one tensor indexing (much faster than
    collating cells one by one).
    """

    def __init__(self, n_rows: int, batch_size: int, shuffle: bool = True, seed: int = 0):
        self.n_rows, self.batch_size, self.shuffle, self.seed = n_rows, batch_size, shuffle, seed
        self.epoch = 0

    def _shard(self) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_rows)
            self.epoch += 1
        else:
            order = np.arange(self.n_rows)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
            # Every process takes the same number of rows so that all of them run the same number of steps.
            n_per_rank = self.n_rows // world
            order = order[rank * n_per_rank : (rank + 1) * n_per_rank]
        return order

    def __iter__(self) -> Iterator[np.ndarray]:
        order = self._shard()
        for start in range(0, order.size, self.batch_size):
            yield order[start : start + self.batch_size]

    def __len__(self) -> int:
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        return math.ceil((self.n_rows // world if world > 1 else self.n_rows) / self.batch_size)


class RowTensors(torch.utils.data.Dataset):
    """Aligned tensors indexed by arrays of rows: ``dataset[rows]`` returns each tensor's ``rows``."""

    def __init__(self, *tensors: np.ndarray | torch.Tensor):
        self.tensors = [torch.as_tensor(tensor) for tensor in tensors]

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __getitem__(self, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(rows, dtype=torch.long)
        return tuple(tensor[index] for tensor in self.tensors)


def row_loader(*arrays: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over aligned arrays that yields minibatches of rows (see :class:`ShuffledBatches`)."""
    dataset = RowTensors(*arrays)
    sampler = ShuffledBatches(len(dataset), batch_size, shuffle=shuffle, seed=seed)
    return torch.utils.data.DataLoader(dataset, sampler=sampler, batch_size=None)


class TrainingPlan(lp.LightningModule):
    """Adam on ``module.loss(*batch).loss``; logs ``train_loss``, ``validation_loss`` and the loss's extra metrics.

    A non-finite training loss stops training with a FloatingPointError that says what to try. With
    ``reduce_lr_patience``, the learning rate is divided by 10 whenever the validation metric ``monitor`` has not
    improved for more than that many validations (torch's ``ReduceLROnPlateau``, as scglue's trainers use it).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        lr: float,
        weight_decay: float,
        *,
        reduce_lr_patience: int | None = None,
        monitor: str = "validation_loss",
    ):
        super().__init__()
        self.module = module
        self.lr, self.weight_decay = lr, weight_decay
        self.reduce_lr_patience, self.monitor = reduce_lr_patience, monitor
        # What the callbacks learn during fit (history, epochs, best epoch). It travels in the state_dict, so that
        # it comes back from the worker processes of a spawning strategy (ddp_spawn) with the weights.
        self.fit_summary: dict[str, Any] = {}

    def get_extra_state(self) -> str:  # noqa: D102
        return json.dumps(self.fit_summary)

    def set_extra_state(self, state: str) -> None:  # noqa: D102
        self.fit_summary = json.loads(state)

    def _step(self, batch: Sequence[torch.Tensor], prefix: str) -> torch.Tensor:
        output = self.module.loss(*batch)
        loss = output.loss
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the {prefix} loss became {loss.item()} at epoch {self.current_epoch}; lower lr, or check that "
                "the input representation is finite and scaled (e.g. standardised LSI)"
                + getattr(self.module, "divergence_hint", "")
            )
        size = output.n_obs_minibatch or batch[0].shape[0]
        on_step = False
        self.log(f"{prefix}_loss", loss, on_step=on_step, on_epoch=True, batch_size=size, sync_dist=True)
        for name, value in output.extra_metrics.items():
            self.log(f"{prefix}_{name}", value, on_step=on_step, on_epoch=True, batch_size=size, sync_dist=True)
        return loss

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimisation step; the first of an epoch also logs the learning rate (``history["lr"]``)."""
        if batch_idx == 0:
            self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True, batch_size=1)
        return self._step(batch, "train")

    def validation_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> None:
        """The loss on held-out cells."""
        self._step(batch, "validation")

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        """Adam with weight decay, as MatchCLOT trains its encoders; divided by 10 on plateaus if asked."""
        optimizer = torch.optim.Adam(self.module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        if self.reduce_lr_patience is None:
            return optimizer
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=LR_REDUCTION_FACTOR, patience=self.reduce_lr_patience
        )
        # Step only on the epochs that validate (check_val_every_n_epoch), where the monitored metric exists; with a
        # validation interval in steps instead, skip the epochs without it.
        every = self.trainer.check_val_every_n_epoch
        config = {"scheduler": scheduler, "monitor": self.monitor, "frequency": every or 1, "strict": every is not None}
        return {"optimizer": optimizer, "lr_scheduler": config}


class BestWeights(Callback):
    """Keep a copy of the module's weights at the lowest value of ``monitor``; restore them when training ends.

    With ``restore=False`` only the best epoch and value are recorded (in the plan's ``fit_summary``).
    """

    def __init__(self, monitor: str = "validation_loss", restore: bool = True):
        self.monitor = monitor
        self.restore = restore
        self.best_value = math.inf
        self.best_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    # After the epoch's metrics are final, including those the module logs in its own on_validation_epoch_end.
    def on_validation_end(self, trainer: lp.Trainer, plan: lp.LightningModule) -> None:  # noqa: D102
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        if value < self.best_value:
            self.best_value, self.best_epoch = value, trainer.current_epoch
            if self.restore:
                self.best_state = copy.deepcopy(plan.module.state_dict())
            plan.fit_summary.update(best_epoch=self.best_epoch, best_value=self.best_value)

    def on_train_end(self, trainer: lp.Trainer, plan: lp.LightningModule) -> None:  # noqa: D102
        if self.best_state is not None:
            plan.module.load_state_dict(self.best_state)


class History(Callback):
    """The epoch-level metrics, as scvi-tools' ``model.history``: one DataFrame per metric, indexed by epoch."""

    def __init__(self):
        self.records: list[dict[str, float]] = []
        self.validated_epoch: int | None = None

    def on_validation_end(self, trainer: lp.Trainer, plan: lp.LightningModule) -> None:  # noqa: D102
        if not trainer.sanity_checking:
            self.validated_epoch = trainer.current_epoch

    def on_train_epoch_end(self, trainer: lp.Trainer, plan: lp.LightningModule) -> None:  # noqa: D102
        # callback_metrics keeps the last validation's values: on an epoch that did not validate (e.g. with
        # check_val_every_n_epoch) they are not this epoch's.
        validated = self.validated_epoch == trainer.current_epoch
        record = {"epoch": trainer.current_epoch}
        record.update(
            {
                name: float(value)
                for name, value in trainer.callback_metrics.items()
                if value.numel() == 1 and (validated or not name.startswith(VALIDATION_PREFIX))
            }
        )
        self.records.append(record)
        plan.fit_summary["history"] = self.records

    def on_train_end(self, trainer: lp.Trainer, plan: lp.LightningModule) -> None:  # noqa: D102
        plan.fit_summary["epochs"] = int(trainer.current_epoch)

    @staticmethod
    def frames(records: list[dict[str, float]]) -> dict[str, pd.DataFrame]:
        """One single-column DataFrame per metric."""
        if not records:
            return {}
        table = pd.DataFrame(records).set_index("epoch")
        return {name: table[[name]].dropna() for name in table.columns}


class EpochProgressBar(ProgressBar):
    """One bar over epochs with the latest losses (the default bar redraws a bar per epoch)."""

    def __init__(self):
        super().__init__()
        self._enabled = True
        self.bar: tqdm | None = None

    def enable(self) -> None:  # noqa: D102
        self._enabled = True

    def disable(self) -> None:  # noqa: D102
        self._enabled = False

    def on_train_start(self, trainer: lp.Trainer, plan: lp.LightningModule) -> None:  # noqa: D102
        self.bar = tqdm(total=trainer.max_epochs, desc="training", unit="epoch", disable=not self._enabled)

    def on_train_epoch_end(self, trainer: lp.Trainer, plan: lp.LightningModule) -> None:  # noqa: D102
        if self.bar is None:
            return
        metrics = trainer.callback_metrics
        self.bar.set_postfix(
            {name: f"{float(metrics[name]):.3f}" for name in ("train_loss", "validation_loss") if name in metrics}
        )
        self.bar.update(1)

    def on_train_end(self, trainer: lp.Trainer, plan: lp.LightningModule) -> None:  # noqa: D102
        if self.bar is not None:
            self.bar.close()


class MuDataModel:
    """Base of mumatch's model classes: one registration per modality of a transductive MuData.

    Subclasses set ``_module_cls`` and implement ``setup_mudata``, ``__init__`` and ``train`` (see the module
    docstring).
    """

    _module_cls: ClassVar[type[torch.nn.Module]]

    def __init__(self, mdata: MuData):
        check_mudata(mdata)
        self.setup_args = self._setup_args(mdata)
        # load() sets the saved registrations of the modalities the loaded data lacks before calling __init__.
        absent = getattr(self, "_absent_registrations", {})
        unknown = [mod for mod in self.setup_args["mods"] if mod not in mdata.mod and mod not in absent]
        if unknown:
            raise KeyError(
                f"mdata's setup for {type(self).__name__} (mdata.uns['{SETUP_KEY}']) names modalities {unknown} that "
                f"mdata lacks; call mm.model.{type(self).__name__}.setup_mudata again, or load a saved model with "
                f"mm.model.{type(self).__name__}.load(dir, mdata)"
            )
        self.registrations = {
            mod: absent[mod]
            if mod not in mdata.mod and mod in absent
            else ModalityRegistration(
                mod=mod,
                rep_key=self.setup_args["rep_keys"][mod],
                n_input=int(mdata[mod].obsm[self.setup_args["rep_keys"][mod]].shape[1]),
                var_names=tuple(map(str, mdata[mod].var_names)),
                fit_id=representation_fit(mdata, mod, self.setup_args["rep_keys"][mod]),
            )
            for mod in self.setup_args["mods"]
        }
        self.mdata = mdata
        self.module: torch.nn.Module
        self.init_params: dict[str, Any] = {}
        self.history: dict[str, pd.DataFrame] = {}
        self.train_info: dict[str, Any] = {}
        self.is_trained = False

    # ----- registration -----------------------------------------------------------------------------------------
    @classmethod
    def _register(
        cls,
        mdata: MuData,
        mods: Sequence[str],
        rep_key: str | Mapping[str, str],
        batch_key: str | None = None,
        *,
        check_pairs: bool = True,
        absent: Sequence[str] = (),
        **extra: Any,
    ) -> None:
        """Check the modalities and their inputs, then record the setup in ``mdata.uns['_mumatch_setup']``.

        Parameters
        ----------
        mdata
            The MuData.
        mods
            The modalities, in the order the module takes them.
        rep_key
            The ``.obsm`` key of each modality's input: one for all, or one per modality.
        batch_key
            Column of each modality's ``.obs`` (else of ``mdata.obs``) with the batch (may be missing in some modalities
            or cells). A column that no modality has raises a KeyError, except the default ``"batch"`` (no batches, with
            a warning).
        check_pairs
            Warn about cells paired by name whose batch labels differ between modalities (not when loading a model,
            which trains on nothing).
        absent
            Modalities of ``mods`` that ``mdata`` lacks (a saved model loaded to embed the cells of the others): they
            are recorded without being checked.
        **extra
            Further JSON-serialisable setup arguments of the subclass.
        """
        check_mudata(mdata)
        mods = list(mods)
        present = [mod for mod in mods if mod not in absent]
        for position, mod in enumerate(mods):
            if mod in absent:
                continue
            check_mod(mdata, mod, f"mod{position + 1}")
            check_obs_names(mdata, mod, in_mudata=False)  # paired cells are found by name
        if len(set(mods)) != len(mods):
            raise ValueError(f"the modalities must differ, got {mods}")
        rep_keys = {mod: rep_key for mod in mods} if isinstance(rep_key, str) else dict(rep_key)
        missing = [mod for mod in mods if mod not in rep_keys]
        if missing:
            raise KeyError(f"rep_key names no representation for {missing}; give one per modality")
        for mod in present:
            if check_rep(mdata, mod, rep_keys[mod], "rep_key").shape[1] == 0:
                # The encoders would see only their biases: every cell the same embedding, a loss that cannot move.
                raise ValueError(
                    f"mdata['{mod}'].obsm['{rep_keys[mod]}'] has no columns; give rep_key a representation with at "
                    "least one (e.g. X_lsi_harmony from mm.pp.lsi_harmony)"
                )
        if batch_key is not None and not check_batch_key(mdata, present, batch_key):
            logg.warning(f"no modality of {present} has a {batch_key!r} column: training without batches")
            batch_key = None
        for position, mod1 in enumerate(present if check_pairs else []):
            for mod2 in present[position + 1 :]:
                warn_conflicting_batches(mdata, mod1, mod2, batch_key, "different cells would be trained on as pairs")
        args = plain_values({"mods": mods, "rep_keys": rep_keys, "batch_key": batch_key, **extra})
        json.dumps(args)  # fails early on a value that could not be saved with the model
        setups = dict(mdata.uns.get(SETUP_KEY, {}))
        setups[cls.__name__] = json.dumps(args)
        mdata.uns[SETUP_KEY] = setups

    @classmethod
    def _setup_args(cls, mdata: MuData) -> dict[str, Any]:
        setups = mdata.uns.get(SETUP_KEY, {})
        if cls.__name__ not in setups:
            raise ValueError(f"mdata is not set up for {cls.__name__}; call mm.model.{cls.__name__}.setup_mudata first")
        return json.loads(setups[cls.__name__])

    @classmethod
    def _saved_init_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The ``__init__`` arguments of a saved model (subclasses fill in what older saves did not record)."""
        return params

    def _init_params(self, **params: Any) -> None:
        """Record the hyperparameters ``__init__`` was called with (JSON-serialisable; saved with the model)."""
        params = plain_values(params)
        json.dumps(params)
        self.init_params = params

    # ----- training ---------------------------------------------------------------------------------------------
    def _embed_in_batches(
        self, inputs: torch.Tensor, batch_size: int, embed: Callable[[torch.Tensor], torch.Tensor], width: int
    ) -> np.ndarray:
        """``embed`` of ``inputs`` a minibatch at a time, in eval mode; a (rows × ``width``) float32 array on the CPU.

        The inputs follow the weights: a Trainer's precision (e.g. ``"64-true"``) leaves them in its dtype, and a
        module moved to a GPU stays there.
        """
        self.module.eval()
        weight = next(self.module.parameters())
        parts = [
            embed(inputs[start : start + batch_size].to(weight.device, weight.dtype)).float().cpu()
            for start in range(0, len(inputs), batch_size)
        ]
        return torch.cat(parts).numpy() if parts else np.zeros((0, width), dtype=np.float32)

    def _fit(
        self,
        plan: lp.LightningModule,
        train_loader: torch.utils.data.DataLoader,
        validation_loader: torch.utils.data.DataLoader | None,
        *,
        max_epochs: int,
        early_stopping: bool,
        patience: int,
        min_delta: float = 0.0,
        monitor: str = "validation_loss",
        accelerator: str = "auto",
        devices: int | str = "auto",
        progress_bar: bool = True,
        seed: int = 0,
        **trainer_kwargs: Any,
    ) -> None:
        """Train ``plan`` with Lightning; restore the weights best on ``monitor``; fill ``history`` and ``train_info``.

        ``monitor`` is a validation metric that ``plan`` logs (lower is better); early stopping watches it too. The
        global generators are seeded with ``seed`` for the training and given back to the caller as they were.
        """
        # Lightning's own name for the switch (the docs pass extra arguments to the Trainer) means progress_bar.
        progress_bar = bool(trainer_kwargs.pop("enable_progress_bar", progress_bar))
        history, best = History(), BestWeights(monitor)
        callbacks: list[Callback] = [history, EpochProgressBar()] if progress_bar else [history]
        if validation_loader is not None and early_stopping:
            # Without early stopping the caller asked for max_epochs of training: the last weights are kept (as in
            # scvi-tools), and the best epoch is only reported.
            callbacks.append(best)
            callbacks.append(
                EarlyStopping(monitor, patience=patience, min_delta=min_delta, check_on_train_epoch_end=False)
            )
        elif validation_loader is not None:
            callbacks.append(BestWeights(monitor, restore=False))
        callbacks += list(trainer_kwargs.pop("callbacks", []))
        trainer_options = {
            "max_epochs": int(max_epochs),  # Lightning asserts a Python int: a numpy integer (np.arange) would fail
            "accelerator": accelerator,
            **device_options(devices, trainer_kwargs),
            "logger": False,
            "enable_checkpointing": False,
            "enable_model_summary": False,
            "enable_progress_bar": progress_bar,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "use_distributed_sampler": False,  # ShuffledBatches shards the rows itself
        }
        if validation_loader is None:
            trainer_options["limit_val_batches"] = 0  # Lightning's default (all batches) needs no option, nor a notice
        trainer_options.update(trainer_kwargs)
        # Lightning's "true" precisions convert the module to their dtype; the others (32-true, the mixed ones) feed
        # it float32 inputs and need float32 weights, which weights trained or loaded in another precision are not.
        weights_dtype = TRUE_PRECISION_DTYPES.get(str(trainer_options.get("precision", "32-true")), torch.float32)
        dtypes = {parameter.dtype for parameter in plan.module.parameters() if parameter.is_floating_point()}
        if dtypes and dtypes != {weights_dtype}:
            logg.info(f"the weights ({', '.join(sorted(map(str, dtypes)))}) train in {weights_dtype}")
            plan.module.to(weights_dtype)
        with seeded(seed):
            trainer = lp.Trainer(callbacks=callbacks, **trainer_options)
            plan.module.train()
            with warnings.catch_warnings():
                if validation_loader is None:
                    # Training without held-out cells is the caller's choice (validation=None), not a forgotten loader.
                    warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_dataloader`")
                trainer.fit(plan, train_dataloaders=train_loader, val_dataloaders=validation_loader)
        self.module = plan.module.cpu().eval()
        # Read from the plan, not the callbacks: a spawning strategy ran them in other processes.
        summary = plan.fit_summary
        epochs = int(summary.get("epochs", trainer.current_epoch))
        self.history = History.frames(summary.get("history", []))
        self.train_info = {
            "epochs": epochs,
            "best_epoch": summary.get("best_epoch"),
            "monitor": monitor,
            "best_value": summary.get("best_value"),
            "stopped_early": bool(early_stopping and epochs < max_epochs),
        }
        self.is_trained = True

    def _check_trainable(self) -> None:
        """Raise unless the registered MuData holds every modality (a loaded model may lack some; see load)."""
        absent = [mod for mod in self.setup_args["mods"] if mod not in self.mdata.mod]
        if absent:
            raise ValueError(
                f"the model was loaded onto data without {absent}: it can embed the cells of the other modalities "
                f"but trains only on data with all of them; load it onto such data ({type(self).__name__}.load(dir, "
                "mdata)) to train"
            )

    # ----- inference --------------------------------------------------------------------------------------------
    def _check_query(self, mdata: MuData | None) -> MuData:
        """The data to embed (the registered MuData by default), after warning about what would make it meaningless."""
        if not self.is_trained:
            # As scvi-tools does: an untrained model's embedding is its random initialisation.
            warnings.warn(
                f"{type(self).__name__} is not trained: its embedding comes from random weights; call train() first",
                UserWarning,
                stacklevel=3,
            )
        if mdata is None:
            return self.mdata
        check_mudata(mdata)
        for registration in self.registrations.values():
            if registration.mod in mdata.mod:
                warn_other_fit(mdata, registration)
            if registration.mod in mdata.mod and tuple(map(str, mdata[registration.mod].var_names)) != (
                registration.var_names
            ):
                logg.warning(
                    f"mdata['{registration.mod}'] has other features than the training data; the representation "
                    f"'{registration.rep_key}' must still come from the same projection (e.g. lsi_harmony_transform)"
                )
        return mdata

    # ----- save / load ------------------------------------------------------------------------------------------
    def save(self, dir_path: str | Path, *, overwrite: bool = False) -> None:
        """Save the weights and everything needed to rebuild the model (no pickled objects).

        Writes ``dir_path/model.pt`` (the module's ``state_dict``) and ``dir_path/model.json`` (class, setup and
        init arguments, input widths, feature names, training history).

        Parameters
        ----------
        dir_path
            Folder to write (created if needed).
        overwrite
            Replace an existing saved model in ``dir_path``.
        """
        folder = Path(dir_path)
        if (folder / WEIGHTS_FILE).exists() and not overwrite:
            raise FileExistsError(f"{folder / WEIGHTS_FILE} exists; pass overwrite=True to replace it")
        folder.mkdir(parents=True, exist_ok=True)
        metadata = {
            "class": type(self).__name__,
            "setup_args": self.setup_args,
            "init_params": self.init_params,
            "registrations": {mod: asdict(registration) for mod, registration in self.registrations.items()},
            "is_trained": self.is_trained,
            "train_info": self.train_info,
            "history": {name: frame[name].to_dict() for name, frame in self.history.items()},
        }
        torch.save(self.module.state_dict(), folder / WEIGHTS_FILE)
        (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=1, default=float))

    @classmethod
    def load(cls, dir_path: str | Path, mdata: MuData) -> MuDataModel:
        """Load a model saved with :meth:`save` and register ``mdata`` with its setup arguments.

        Parameters
        ----------
        dir_path
            Folder written by :meth:`save`.
        mdata
            Data with the same modalities and representations (of the same widths) as the training data, or with
            only some of the modalities (a CLIP model onto RNA alone, a CLUE model trained on RNA + ATAC + ADT onto a
            multiome query): the model then embeds the cells of those, and training it further needs every
            modality.

        Returns
        -------
        The model, ready for ``get_latent_representation``.
        """
        check_mudata(mdata)
        folder = Path(dir_path)
        if not (folder / METADATA_FILE).exists():
            raise FileNotFoundError(f"{folder / METADATA_FILE} not found; save a model there with model.save(dir)")
        metadata = json.loads((folder / METADATA_FILE).read_text())
        if metadata["class"] != cls.__name__:
            raise ValueError(f"{folder} holds a {metadata['class']} model; load it with mm.model.{metadata['class']}")
        saved_registrations = {
            saved["mod"]: ModalityRegistration(**{**saved, "var_names": tuple(saved["var_names"])})
            for saved in metadata["registrations"].values()
        }
        trained_on = list(saved_registrations)
        missing = [mod for mod in trained_on if mod not in mdata.mod]
        if len(missing) == len(trained_on):
            # With some of them it embeds their cells (the absent ones' networks are built from what was saved).
            raise KeyError(
                f"the model in {folder} was trained on modalities {trained_on}; mdata has none of them (its "
                f"modalities: {list(mdata.mod)}): it needs at least one, under the training data's name (rename it)"
            )
        present = [mod for mod in trained_on if mod not in missing]
        for mod in present:
            modality_inputs(mdata, saved_registrations[mod])
        setup = dict(metadata["setup_args"])
        if setup.get("batch_key") is not None and all(
            obs_column(mdata, mod, setup["batch_key"]) is None for mod in present
        ):
            # Embedding new cells needs no batch labels (decoders, which take them, are not used to embed).
            setup["batch_key"] = None
        had_setups, setups = SETUP_KEY in mdata.uns, mdata.uns.get(SETUP_KEY)
        previous = dict(setups) if isinstance(setups, Mapping) else setups
        try:
            # A loaded model embeds cells and trains on nothing: the pairs of the new data are not its concern.
            cls._register(mdata, setup.pop("mods"), setup.pop("rep_keys"), check_pairs=False, absent=missing, **setup)
            if metadata["setup_args"].get("batch_key") != setup.get("batch_key"):
                # The record keeps the training data's batch_key (columns missing here read as no batch): a model
                # saved again from these cells still finds the batches of data that has them.
                record = json.loads(mdata.uns[SETUP_KEY][cls.__name__])
                record["batch_key"] = metadata["setup_args"]["batch_key"]
                mdata.uns[SETUP_KEY] = {**mdata.uns[SETUP_KEY], cls.__name__: json.dumps(record)}
            model = cls.__new__(cls)
            model._absent_registrations = {mod: saved_registrations[mod] for mod in missing}
            model.__init__(mdata, **cls._saved_init_params(metadata["init_params"]))
            try:
                # On the CPU, where the model is built: weights saved from a module on a GPU load on a machine
                # without one.
                state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
                # Weights trained in another precision (a Trainer's precision="64-true") keep it: load_state_dict
                # would round them to the new module's float32.
                saved_dtypes = {value.dtype for value in state.values() if value.is_floating_point()}
                if len(saved_dtypes) == 1:
                    model.module.to(saved_dtypes.pop())
                model.module.load_state_dict(state)
            except RuntimeError as error:
                mismatch = str(error).splitlines()[-1].strip()
                raise ValueError(
                    f"the model in {folder} does not fit mdata ({mismatch}); load it onto data with the modalities, "
                    "features and representation widths it was trained on"
                ) from error
        except Exception:
            # Nothing of a failed load stays behind in the caller's MuData.
            if had_setups:
                mdata.uns[SETUP_KEY] = previous
            else:
                mdata.uns.pop(SETUP_KEY, None)
            raise
        if missing:
            logg.info(
                f"loaded onto data without {missing}: the model embeds the cells of {present}; training it further "
                "needs data with every modality it was trained on"
            )
        for saved in metadata["registrations"].values():
            if saved["mod"] in missing:
                continue
            # The training data's fit stays the model's reference for later queries.
            registration = model.registrations[saved["mod"]]
            model.registrations[saved["mod"]] = replace(registration, fit_id=saved.get("fit_id"))
            warn_other_fit(mdata, model.registrations[saved["mod"]])
            if tuple(map(str, mdata[saved["mod"]].var_names)) != tuple(saved["var_names"]):
                # Embedding reads only the representation; the decoders (further training) assume these features.
                logg.warning(
                    f"mdata['{saved['mod']}'] has other features than the model was trained on; its representation "
                    f"'{saved['rep_key']}' must come from the same projection (e.g. lsi_harmony_transform), and "
                    "training this model further would fit it to other features"
                )
        model.module.eval()
        model.is_trained = metadata["is_trained"]
        model.train_info = metadata["train_info"]
        model.history = {
            name: pd.DataFrame({name: pd.Series(values)}).rename(index=int).sort_index()
            for name, values in metadata["history"].items()
        }
        return model

    def __repr__(self) -> str:
        inputs = ", ".join(f"{r.mod}: .obsm['{r.rep_key}'] ({r.n_input})" for r in self.registrations.values())
        params = ", ".join(f"{name}={value}" for name, value in self.init_params.items())
        status = "trained" if self.is_trained else "not trained"
        return f"{type(self).__name__}({params}) on {inputs}; {status}"
