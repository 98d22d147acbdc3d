"""Which dataset items does each training batch hold? Exact under shuffling, workers, persistent workers and DDP.

A DataLoader with ``in_order=True`` (the default) delivers batches in the order its batch sampler produced them,
whatever the number of workers. :class:`SampleIndexTracker` therefore records, in the main process, the index list
of every batch the batch sampler yields (a FIFO), and the callback pops one list per training batch. The tracking
batch sampler replaces the loader's ``BatchSampler`` on that one DataLoader object only (nothing global is patched),
and it survives Lightning's re-instantiation of the loader for a ``DistributedSampler`` (it keeps the
``BatchSampler(sampler, batch_size, drop_last)`` signature, and the tracker travels on a per-tracker subclass).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, IterableDataset

__all__ = ["SampleIndexTracker", "track_dataloader", "install_tracking", "uninstall_tracking"]


class SampleIndexTracker:
    """FIFO of the dataset indices of the batches produced by a tracked loader, consumed in the same order."""

    def __init__(self) -> None:
        self._pending: deque[list[int]] = deque()
        self.epochs_started = 0

    def start_iteration(self) -> None:
        """A new pass over the loader began: batches produced but never consumed by the previous pass are dropped."""
        self._pending.clear()
        self.epochs_started += 1

    def push(self, indices: list[int]) -> None:
        self._pending.append(indices)

    def pop(self) -> Tensor:
        """Indices of the next consumed batch, as a ``LongTensor[B]``."""
        if not self._pending:
            raise RuntimeError(
                "lightning-datadiet lost track of the training batches: a batch arrived that the tracked sampler did "
                "not produce. Is the train DataLoader iterated elsewhere, or built with in_order=False?"
            )
        return torch.tensor(self._pending.popleft(), dtype=torch.long)

    def __len__(self) -> int:
        return len(self._pending)


class _TrackingBatchSampler(BatchSampler):
    """A ``BatchSampler`` that reports each batch's indices to its class's tracker before yielding it."""

    tracker: SampleIndexTracker

    def __iter__(self) -> Iterator[list[int]]:
        tracker = type(self).tracker
        tracker.start_iteration()
        for batch in super().__iter__():
            tracker.push(list(batch))
            yield batch


def _tracking_class(tracker: SampleIndexTracker) -> type[_TrackingBatchSampler]:
    return type("TrackingBatchSampler", (_TrackingBatchSampler,), {"tracker": tracker})


def track_dataloader(loader: Any, tracker: SampleIndexTracker) -> DataLoader:
    """Make ``loader`` report its batches' dataset indices to ``tracker``; returns the same DataLoader object.

    Raises:
        TypeError: the loader is not a single map-style ``DataLoader`` with automatic batching (``batch_size`` set,
            or a plain ``BatchSampler``), or it delivers batches out of order.
    """
    if not isinstance(loader, DataLoader):
        raise TypeError(
            "ForgettingCallback needs a single torch DataLoader for training, got "
            f"{type(loader).__name__}. Return one DataLoader from train_dataloader() (several train loaders or "
            "custom iterables cannot be mapped to dataset indices)."
        )
    if isinstance(loader.dataset, IterableDataset):
        raise TypeError(
            "ForgettingCallback needs a map-style dataset (with __len__ and __getitem__): an IterableDataset has no "
            "per-example index to attach the counts to."
        )
    if getattr(loader, "in_order", True) is False:
        raise TypeError("ForgettingCallback needs DataLoader(in_order=True) (the default) to know each batch's items.")
    batch_sampler = loader.batch_sampler
    if isinstance(batch_sampler, _TrackingBatchSampler):
        if type(batch_sampler).tracker is tracker:
            return loader
        raise RuntimeError("This DataLoader is already tracked by another callback instance.")
    if batch_sampler is None or type(batch_sampler) is not BatchSampler:
        raise TypeError(
            "ForgettingCallback needs a DataLoader built with batch_size= (and optionally sampler=/shuffle=), whose "
            f"batch sampler is torch's BatchSampler; got {type(batch_sampler).__name__}. Custom batch samplers are "
            "not supported yet: wrap your sampling logic in a Sampler passed as sampler= instead."
        )
    tracked = _tracking_class(tracker)(batch_sampler.sampler, batch_sampler.batch_size, batch_sampler.drop_last)
    # DataLoader forbids re-assigning batch_sampler after __init__; this changes this one loader object only.
    object.__setattr__(loader, "batch_sampler", tracked)
    return loader


def install_tracking(trainer: Any, tracker: SampleIndexTracker) -> None:
    """Arrange for the Trainer's training DataLoader to be tracked when Lightning requests it.

    The request goes through ``trainer.fit_loop._data_source``: a DataModule or LightningModule whose
    ``train_dataloader`` method is wrapped on that instance only, or a DataLoader passed to ``fit`` directly.
    """
    source = getattr(trainer.fit_loop, "_data_source", None)
    if source is None or not hasattr(source, "instance"):
        raise RuntimeError(
            "lightning-datadiet could not find the Trainer's training data source; this Lightning version is not "
            "supported (tested with lightning 2.4-2.6)."
        )
    instance = source.instance
    from lightning.pytorch import LightningDataModule, LightningModule

    if isinstance(instance, (LightningDataModule, LightningModule)):
        name = source.name
        original = getattr(instance, name)
        if getattr(original, "_datadiet_tracker", None) is tracker:
            return

        def train_dataloader(*args: Any, **kwargs: Any) -> Any:
            return track_dataloader(original(*args, **kwargs), tracker)

        train_dataloader._datadiet_tracker = tracker  # type: ignore[attr-defined]
        train_dataloader._datadiet_original = original  # type: ignore[attr-defined]
        train_dataloader.__wrapped__ = original  # type: ignore[attr-defined]
        setattr(instance, name, train_dataloader)
    elif instance is not None:
        source.instance = track_dataloader(instance, tracker)
    else:
        raise RuntimeError("The Trainer has no training data source: pass a DataModule or train_dataloaders to fit().")


def uninstall_tracking(trainer: Any) -> None:
    """Undo :func:`install_tracking` on a DataModule/LightningModule (a DataLoader keeps its tracking sampler)."""
    source = getattr(trainer.fit_loop, "_data_source", None)
    instance = getattr(source, "instance", None)
    if instance is None:
        return
    wrapped = instance.__dict__.get(source.name)
    if wrapped is not None and hasattr(wrapped, "_datadiet_tracker"):
        del instance.__dict__[source.name]
