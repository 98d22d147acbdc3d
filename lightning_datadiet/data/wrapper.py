"""``DataModuleWrapper``: the base of the DataModules that wrap another one and change only its training loader
(:class:`~lightning_datadiet.data.pruned.PrunedDataModule`, :class:`~lightning_datadiet.data.noise.NoisyLabelDataModule`).

Everything but ``train_dataloader()`` is the wrapped module's: ``prepare_data``, ``setup``, ``teardown``, the
validation/test/predict loaders, the batch-transfer hooks, ``on_exception``, the hyperparameters, the state dict and
any other attribute. Lightning decides whether to use a loader or a batch hook by whether the module overrides it, so
the wrapper mirrors the wrapped module: a hook it overrides is forwarded, any other stays LightningDataModule's
default (a missing ``val_dataloader`` skips validation; a LightningModule's own batch hooks are still used).
"""

from __future__ import annotations

import copy
from typing import Any

from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader

from lightning_datadiet.data.loaders import single_loader

__all__ = ["DataModuleWrapper"]

# hooks that pass through to the wrapped module exactly when it overrides them (Lightning checks `is_overridden`)
_MIRRORED_HOOKS = (
    "prepare_data",
    "setup",
    "teardown",
    "val_dataloader",
    "test_dataloader",
    "predict_dataloader",
    "transfer_batch_to_device",
    "on_before_batch_transfer",
    "on_after_batch_transfer",
    "on_exception",
)


class DataModuleWrapper(LightningDataModule):
    """Wrap ``datamodule``; subclasses implement ``train_dataloader()`` (from :meth:`wrapped_train_loader`) and may
    add their settings to the logged hyperparameters with :meth:`wrapper_hparams`.

    Args:
        datamodule: the ``LightningDataModule`` to wrap.
    """

    def __init__(self, datamodule: LightningDataModule) -> None:
        if not isinstance(datamodule, LightningDataModule):
            raise TypeError(f"`datamodule` must be a LightningDataModule, got {type(datamodule).__name__}.")
        super().__init__()
        self.datamodule = datamodule
        for name in _MIRRORED_HOOKS:
            if is_overridden(name, datamodule, LightningDataModule):
                setattr(self, name, getattr(datamodule, name))  # on this wrapper; the wrapped module is unchanged
        self.prepare_data_per_node = datamodule.prepare_data_per_node
        self.allow_zero_length_dataloader_with_multiple_devices = (
            datamodule.allow_zero_length_dataloader_with_multiple_devices
        )
        self._log_hyperparams = datamodule._log_hyperparams
        _repair_cli_hparams(datamodule)

    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails: anything else (``dm.num_classes``) is the wrapped module's
        wrapped = self.__dict__.get("datamodule")
        if wrapped is None or name.startswith("__"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(wrapped, name)

    @property
    def trainer(self) -> Any:
        return self.__dict__.get("_trainer")

    @trainer.setter
    def trainer(self, trainer: Any) -> None:
        # Lightning attaches the trainer to the module it is given: pass it on to the wrapped one.
        self.__dict__["_trainer"] = trainer
        wrapped = self.__dict__.get("datamodule")
        if wrapped is not None:
            wrapped.trainer = trainer

    @property
    def hparams(self) -> Any:  # type: ignore[override]
        """The wrapped module's hyperparameters, unchanged (the wrapper's settings are in :attr:`hparams_initial`,
        which Lightning logs)."""
        return self.datamodule.hparams

    @property
    def hparams_initial(self) -> Any:  # type: ignore[override]
        """What Lightning logs as the datamodule's hyperparameters: the wrapped module's, plus
        :meth:`wrapper_hparams`."""
        hparams = AttributeDict(copy.deepcopy(dict(self.datamodule.hparams_initial)))
        hparams.update(self.wrapper_hparams())
        return hparams

    def wrapper_hparams(self) -> dict[str, Any]:
        """The wrapper's own settings, logged with the wrapped module's hyperparameters (none by default)."""
        return {}

    def wrapped_train_loader(self) -> DataLoader:
        """The wrapped module's training loader (one ``DataLoader``, or a clear error)."""
        return single_loader(self.datamodule.train_dataloader(), type(self).__name__)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped module's state."""
        return self.datamodule.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.datamodule.load_state_dict(state_dict)


def _repair_cli_hparams(datamodule: LightningDataModule) -> None:
    """Undo a LightningCLI quirk: it instantiates *every* LightningDataModule in the ``data`` config with the
    hyperparameters of the whole ``data`` entry, so a nested (wrapped) module calling ``save_hyperparameters()``
    receives the wrapper's settings instead of its own. Its own ``init_args`` are inside them: restore those.
    (Its ``save_hyperparameters(ignore=...)`` cannot be replayed; all its init args are kept.)"""
    hparams = datamodule.__dict__.get("_hparams")
    if not hparams or hparams.get("_instantiator") != "lightning.pytorch.cli.instantiate_module":
        return
    nested = hparams.get("datamodule")
    own = type(datamodule).__name__
    if not isinstance(nested, dict) or str(nested.get("class_path", "")).rsplit(".", 1)[-1] != own:
        return
    if str(hparams.get("_class_path", "")).rsplit(".", 1)[-1] == own:
        return
    fixed = {
        "_class_path": nested["class_path"],
        **(nested.get("init_args") or {}),
        **(nested.get("dict_kwargs") or {}),
        "_instantiator": hparams["_instantiator"],
    }
    datamodule._hparams = AttributeDict(fixed)
    datamodule._hparams_initial = copy.deepcopy(datamodule._hparams)
