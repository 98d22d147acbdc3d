"""Which dataset items does each training batch hold? Exact under shuffling, workers, persistent workers and DDP.

A DataLoader with ``in_order=True`` (the default) delivers batches in the order its batch sampler produced them,
whatever the number of workers. :class:`SampleIndexTracker` therefore records, in the main process, the index list
of every batch the batch sampler yields (a FIFO), and the callback pops one list per training batch. The tracking
batch sampler replaces the loader's ``BatchSampler`` on that one DataLoader object only (nothing global is patched),
and it survives Lightning's re-instantiation of the loader for a ``DistributedSampler`` (it keeps the
``BatchSampler(sampler, batch_size, drop_last)`` signature, and the tracker travels on a per-tracker subclass).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, IterableDataset

__all__ = ["SampleIndexTracker", "track_dataloader", "install_tracking", "uninstall_tracking"]


class SampleIndexTracker:
    """FIFO of the dataset indices of the batches produced by a tracked loader, consumed in the same order."""

    def __init__(self, owner: str = "ForgettingCallback") -> None:
        self.owner = owner  # named in error messages
        self._pending: deque[list[int]] = deque()
        self.epochs_started = 0
        #: ``plan(sampler) -> indices | None``: this epoch's index stream for this rank (e.g. with pruned items
        #: omitted); ``None`` (or a plan returning ``None``) = the sampler's own stream. Called for ``len()`` and at the
        #: start of each pass, so it must return the same list for the same epoch.
        self.plan: Callable[[Any], list[int] | None] | None = None
        #: ``(batches, indices)`` after a mid-epoch resume: the next pass skips that many batches when they hold
        #: exactly ``indices`` (the interrupted run's presentations of this epoch), so it continues where it stopped.
        self.resume: tuple[int, Tensor] | None = None
        #: set when a resume could not skip because the sampler produced another order (reported by the owner)
        self.resume_mismatch = False
        self.loader_stateful = False
        #: after a resume: the epoch the first pass belongs to. Lightning creates the first iterator before it calls
        #: ``set_epoch`` for the resumed epoch, and a DataLoader with workers draws its first indices right then, so a
        #: fresh sampler would give epoch 0's order; the tracking sampler sets the epoch first.
        self.resume_epoch: int | None = None

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
    """A ``BatchSampler`` that reports each batch's indices to its class's trackers before yielding it."""

    trackers: list[SampleIndexTracker]

    def _plan(self) -> Callable[[Any], list[int] | None] | None:
        plans = [t.plan for t in type(self).trackers if t.plan is not None]
        if len(plans) > 1:
            raise RuntimeError("Two callbacks try to choose the training batches (e.g. two DynamicPruningCallbacks).")
        return plans[0] if plans else None

    def _batches(self) -> Iterator[list[int]]:
        plan = self._plan()
        indices = plan(self.sampler) if plan is not None else None
        if indices is None:
            yield from super().__iter__()
            return
        batch: list[int] = []
        for index in indices:
            batch.append(int(index))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __iter__(self) -> Iterator[list[int]]:
        trackers = type(self).trackers
        for tracker in trackers:
            tracker.start_iteration()
        epochs = [t.resume_epoch for t in trackers if t.resume_epoch is not None]
        for tracker in trackers:
            tracker.resume_epoch = None
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if epochs and callable(set_epoch):
            set_epoch(epochs[0])
        batches = self._batches()
        resumes = [t.resume for t in trackers if t.resume is not None]
        for tracker in trackers:
            tracker.resume = None
        if resumes and not any(t.loader_stateful for t in trackers):
            count, expected = resumes[0]
            head = list(itertools.islice(batches, count))
            flat = torch.tensor([i for b in head for i in b], dtype=torch.long)
            if not torch.equal(flat, expected.long()):
                for tracker in trackers:  # not the interrupted run's order: present everything, as Lightning does
                    tracker.resume_mismatch = True
                batches = itertools.chain(head, batches)
        for batch in batches:
            for tracker in trackers:
                tracker.push(list(batch))
            yield batch

    def __len__(self) -> int:
        plan = self._plan()
        indices = plan(self.sampler) if plan is not None else None
        if indices is None:
            return super().__len__()
        n = len(indices)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def _tracking_class(tracker: SampleIndexTracker) -> type[_TrackingBatchSampler]:
    return type("TrackingBatchSampler", (_TrackingBatchSampler,), {"trackers": [tracker]})


def track_dataloader(loader: Any, tracker: SampleIndexTracker) -> DataLoader:
    """Make ``loader`` report its batches' dataset indices to ``tracker``; returns the same DataLoader object.

    Raises:
        TypeError: the loader is not a single map-style ``DataLoader`` with automatic batching (``batch_size`` set,
            or a plain ``BatchSampler``), or it delivers batches out of order.
    """
    if not isinstance(loader, DataLoader):
        raise TypeError(
            f"{tracker.owner} needs a single torch DataLoader for training, got "
            f"{type(loader).__name__}. Return one DataLoader from train_dataloader() (several train loaders or "
            "custom iterables cannot be mapped to dataset indices)."
        )
    if isinstance(loader.dataset, IterableDataset):
        raise TypeError(
            f"{tracker.owner} needs a map-style dataset (with __len__ and __getitem__): an IterableDataset has no "
            "per-example index to attach the counts to."
        )
    if getattr(loader, "in_order", True) is False:
        raise TypeError(f"{tracker.owner} needs DataLoader(in_order=True) (the default) to know each batch's items.")
    batch_sampler = loader.batch_sampler
    if isinstance(batch_sampler, _TrackingBatchSampler):
        trackers = type(batch_sampler).trackers
        if tracker not in trackers:  # several callbacks track the same loader: each gets every batch's indices
            trackers.append(tracker)
            tracker.loader_stateful = any(t.loader_stateful for t in trackers)
        return loader
    if batch_sampler is None or type(batch_sampler) is not BatchSampler:
        raise TypeError(
            f"{tracker.owner} needs a DataLoader built with batch_size= (and optionally sampler=/shuffle=), whose "
            f"batch sampler is torch's BatchSampler; got {type(batch_sampler).__name__}. Custom batch samplers are "
            "not supported yet: wrap your sampling logic in a Sampler passed as sampler= instead."
        )
    tracked = _tracking_class(tracker)(batch_sampler.sampler, batch_sampler.batch_size, batch_sampler.drop_last)
    tracker.loader_stateful = callable(getattr(loader, "state_dict", None)) and callable(
        getattr(loader, "load_state_dict", None)
    )  # e.g. torchdata's StatefulDataLoader: Lightning itself restores its position on resume
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
