"""The study's building blocks: the data of a setting, a fresh model, a Trainer, accuracy, and the data's identity.

Every fit gets fresh objects built from the resolved config's class-path specs (:mod:`.specs`). The data of a
label-noise setting is the user's DataModule, wrapped in order by :class:`ValidationSplitDataModule` (when
``select_on_val`` needs validation data the DataModule does not have) and :class:`NoisyLabelDataModule` (training
labels only). Accuracy is measured by the study itself after each fit, from the logits of the module's forward on
the validation and test loaders, with the batch and logits discovery of the score callbacks, so the user's
LightningModule needs no ``validation_step``, ``test_step`` or logged metric.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader

from lightning_datadiet._utils import eval_mode
from lightning_datadiet.data.fingerprint import dataset_fingerprint
from lightning_datadiet.data.loaders import loader_batch_size
from lightning_datadiet.data.noise import NoisyLabelDataModule
from lightning_datadiet.data.targets import batch_inputs_targets, dataset_targets
from lightning_datadiet.data.valsplit import ValidationSplitDataModule
from lightning_datadiet.pipeline.config import PipelineConfig, PipelineError
from lightning_datadiet.pipeline.specs import SpecError, instantiate_spec, trainer_objects
from lightning_datadiet.scores._checks import check_logits

__all__ = [
    "make_datamodule",
    "make_module",
    "make_trainer",
    "AccuracyCallback",
    "content_key",
    "needs_val_split",
    "training_size",
    "quiet_lightning",
]

PROGRESS_REFRESH_RATE = 10  # progress bars redraw every 10 steps


def _instantiate(kind: str, spec: dict[str, Any]) -> Any:
    try:
        return instantiate_spec(kind, spec)
    except SpecError as err:
        raise PipelineError(str(err)) from err
    except (FileNotFoundError, ValueError, TypeError) as err:
        raise PipelineError(f"--{kind} {spec['class_path']}: building it failed: {err}") from err


def _has_loader(dm: LightningDataModule, name: str) -> bool:
    """Whether ``dm`` overrides the loader hook ``name`` and it gives at least one batch's worth of data."""
    if not is_overridden(name, dm, LightningDataModule):
        return False
    loader = getattr(dm, name)()
    if isinstance(loader, (list, tuple)):
        return len(loader) > 0
    return loader is not None


def base_datamodule(cfg: PipelineConfig) -> LightningDataModule:
    """A fresh instance of the configured DataModule, ``prepare_data()`` and ``setup("fit")`` called."""
    dm = _instantiate("data", cfg.data)
    if not isinstance(dm, LightningDataModule):
        raise PipelineError(f"--data {cfg.data['class_path']} is not a LightningDataModule.")
    dm.prepare_data()
    dm.setup("fit")
    return dm


def make_datamodule(cfg: PipelineConfig, label_noise: float) -> LightningDataModule:
    """The data of one label-noise setting (see the module docs); set up for fitting."""
    dm: LightningDataModule = base_datamodule(cfg)
    if needs_val_split(cfg, dm):
        dm = ValidationSplitDataModule(dm, cfg.val_size if cfg.val_size is not None else 0.1, seed=cfg.split_seed)
    if label_noise > 0:
        dm = NoisyLabelDataModule(dm, label_noise, cfg.noise_mode, cfg.noise_seed)
        dm.train_dataloader()  # draws the noise, so corrupted_mask is there
    return dm


def needs_val_split(cfg: PipelineConfig, dm: LightningDataModule) -> bool:
    """Whether the study carves a validation split from the training set: ``select_on_val`` is on and the
    DataModule has no validation loader of its own."""
    return bool(cfg.select_on_val) and not _has_loader(dm, "val_dataloader")


def training_size(dm: LightningDataModule) -> tuple[int, int, bool]:
    """``(examples, batch size, drop_last)`` of the training loader (what the retraining budget needs)."""
    loader = dm.train_dataloader()
    if not isinstance(loader, DataLoader):
        raise PipelineError(
            f"The study needs train_dataloader() to return one DataLoader, got {type(loader).__name__}."
        )
    drop_last = getattr(loader.batch_sampler, "drop_last", loader.drop_last)
    return len(loader.dataset), loader_batch_size(loader), bool(drop_last)  # type: ignore[arg-type]


def make_module(cfg: PipelineConfig) -> LightningModule:
    """A fresh LightningModule from the config (seed the RNG first)."""
    module = _instantiate("model", cfg.model)
    if not isinstance(module, LightningModule):
        raise PipelineError(f"--model {cfg.model['class_path']} is not a LightningModule.")
    return module


def tensorboard_logger(cfg: PipelineConfig, name: str, version: str) -> Any:
    if not cfg.tensorboard:
        return False
    return TensorBoardLogger(Path(cfg.output_dir) / "tensorboard", name=name, version=version, default_hp_metric=False)


def make_trainer(cfg: PipelineConfig, max_epochs: int, *, logger: Any, callbacks: list | None = None) -> Trainer:
    """A Trainer for one fit: the study's settings, the ``--trainer`` options (their callbacks built afresh and
    run before the study's) and ``callbacks``. Lightning's validation loop is off: accuracy is measured by
    :class:`AccuracyCallback`."""
    try:
        options = trainer_objects(cfg.trainer)
    except SpecError as err:
        raise PipelineError(str(err)) from err
    user_callbacks = options.pop("callbacks", None) or []
    if not isinstance(user_callbacks, list):
        user_callbacks = [user_callbacks]
    callbacks = [*user_callbacks, *(callbacks or [])]
    if cfg.progress_bar:  # redrawing the bar on every step costs more than a tiny model's step
        callbacks.append(TQDMProgressBar(refresh_rate=PROGRESS_REFRESH_RATE))
    options.setdefault("enable_checkpointing", False)
    options.setdefault("enable_model_summary", False)
    return Trainer(
        **options,
        max_epochs=max_epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        precision=cfg.precision,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=cfg.progress_bar,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=cfg.output_dir,
    )


class AccuracyCallback(Callback):
    """Measures top-1 accuracy of the trained module on the DataModule's validation and test loaders when the fit
    ends (module on its device, eval mode, the Trainer's precision), from the logits of its forward pass.

    A module may define ``eval_logits(inputs)`` to be measured with something else than its forward pass (the
    airbench recipe's test-time flip); the score callbacks always use the forward pass.

    Attributes:
        results: ``{"val": accuracy or None, "test": accuracy}`` after the fit.
    """

    def __init__(self, *, val: bool) -> None:
        self.val = val
        self.results: dict[str, float | None] = {"val": None, "test": None}

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = trainer.datamodule
        if self.val:
            self.results["val"] = accuracy(trainer, pl_module, dm.val_dataloader(), "validation")
        dm.setup("test")
        self.results["test"] = accuracy(trainer, pl_module, dm.test_dataloader(), "test")


def accuracy(trainer: Trainer, pl_module: LightningModule, loader: Any, what: str) -> float:
    """Top-1 accuracy of ``pl_module`` over ``loader`` (every batch, eval mode, no gradients)."""
    if isinstance(loader, (list, tuple)):
        if len(loader) != 1:
            raise PipelineError(f"The study measures accuracy on one {what} DataLoader, got {len(loader)}.")
        loader = loader[0]
    if loader is None:
        raise PipelineError(f"The DataModule gives no {what} DataLoader: the study needs one to measure accuracy.")
    logits_fn = getattr(pl_module, "eval_logits", None)
    forward = logits_fn if callable(logits_fn) else pl_module
    device = pl_module.device
    correct = torch.zeros((), dtype=torch.long, device=device)  # counted on the device: no host sync per batch
    finite = torch.ones((), dtype=torch.bool, device=device)
    total = 0
    with eval_mode(pl_module), torch.no_grad(), trainer.precision_plugin.forward_context():
        for batch in loader:
            batch = trainer.strategy.batch_to_device(batch, device)
            inputs, targets = batch_inputs_targets(batch)
            logits = forward(inputs)
            check_logits(logits, what=f"the model's output on the {what} set", batch_size=targets.shape[0], values=False)
            correct += (logits.argmax(dim=1) == targets.to(logits.device)).sum()
            finite &= torch.isfinite(logits).all()
            total += int(targets.shape[0])
    if total == 0:
        raise PipelineError(f"The {what} DataLoader is empty: the study needs {what} data to measure accuracy.")
    if not bool(finite):
        raise PipelineError(
            f"The model's output on the {what} set holds NaN/inf logits: the fit diverged (lower the learning rate, "
            "check the data), so its accuracy would mean nothing."
        )
    return int(correct) / total


# ------------------------------------------------------------------------------------------------ identity of the data


def content_key(cfg: PipelineConfig) -> dict[str, Any]:
    """What the data *is*, for the run keys: the DataModule's ``content_fingerprint()`` when it has one (the
    built-in ones hash every image and label), else a hash of the length, all labels and 256 evenly spread items of
    the training set (read from ``score_dataset()`` when present, so without augmentation) and of the test set."""
    dm = base_datamodule(cfg)
    carved = needs_val_split(cfg, dm)
    own = getattr(dm, "content_fingerprint", None)
    if callable(own):
        return {"content": own(), "carved_val": carved}
    train = dm.train_dataloader()
    if not isinstance(train, DataLoader):
        raise PipelineError(
            f"The study needs train_dataloader() to return one DataLoader, got {type(train).__name__}."
        )
    hook = getattr(dm, "score_dataset", None)
    view = hook() if callable(hook) else train.dataset
    dm.setup("test")
    test = dm.test_dataloader()
    test = test[0] if isinstance(test, (list, tuple)) and len(test) == 1 else test
    if not isinstance(test, DataLoader):
        raise PipelineError(
            f"--data {cfg.data['class_path']}: the study needs test_dataloader() to return one DataLoader (it reports "
            f"test accuracy), got {type(test).__name__}."
        )
    try:
        return {
            "train": dataset_fingerprint(view, labels=dataset_targets(view)),
            "test": dataset_fingerprint(test.dataset, labels=dataset_targets(test.dataset)),
            "carved_val": carved,
        }
    except TypeError as err:
        raise PipelineError(f"Cannot fingerprint the data of --data {cfg.data['class_path']}: {err}") from err


@contextlib.contextmanager
def quiet_lightning(cfg: PipelineConfig) -> Iterator[None]:
    """Fewer messages from Lightning (its info lines repeat for every run) and the configured torch threads."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning_datadiet")]
    levels = [lg.level for lg in loggers]
    threads = torch.get_num_threads()
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    with warnings.catch_warnings():
        for pattern in (
            ".*does not have many workers.*",
            ".*LeafSpec.*",
            ".*is smaller than the logging interval.*",
            ".*Checkpoint directory.*",
            ".*You defined a `validation_step` but have no `val_dataloader`.*",
            ".*You passed in a `val_dataloader` but have no `validation_step`.*",
        ):
            warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
            torch.set_num_threads(threads)
