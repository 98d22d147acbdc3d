"""Which dataset items does each training batch hold? Exact under shuffling, workers, persistent workers and DDP.

A DataLoader with ``in_order=True`` (the default) delivers batches in the order its batch sampler produced them,
whatever the number of workers. :class:`TrackingBatchSampler` therefore records, in the main process, the index list
of every batch it yields into each of its :class:`SampleIndexTracker` s (FIFOs), and the callbacks pop one list per
training batch.

**The seam.** Lightning offers no public hook between "the training DataLoader is requested" and "it is processed
and iterated", so the one private access of the package is here, in :func:`_train_source`: the fit loop's training
data source (``trainer.fit_loop._data_source``), which ``FitLoop.setup_data`` asks for the loader each time it needs
one. For the duration of a fit it is replaced by a :class:`TrackedTrainSource` that asks the original source (so the
user's ``train_dataloader`` hook runs exactly as without tracking) and returns a *new* DataLoader of the same class,
built with the public constructor over the same dataset with the same settings and a :class:`TrackingBatchSampler`
over the same sampler. Nothing the user owns changes: not the LightningModule, not the DataModule, not the loader
they returned. The source is put back in ``teardown`` (and ``on_exception``). ``tests/test_tracking.py`` fails loudly
if a Lightning release changes the attribute.

The new loader is built while Lightning requests it, i.e. inside Lightning's ``_replace_dunder_methods`` context,
which records its constructor arguments and those of the batch sampler: under DDP Lightning re-instantiates both
with a ``DistributedSampler`` as the batch sampler's ``sampler``, and the trackers (a constructor argument) come
along. Lightning chooses that sampler from the loader's ``sampler`` attribute, which for a loader built with
``batch_sampler=`` is a ``SequentialSampler``; the tracking batch sampler therefore applies Lightning's rule to the
user's own sampler (``origin``): a plain sampler gets Lightning's ``DistributedSampler``, a ``DistributedSampler``
the user set is kept, any other sampler is wrapped in Lightning's ``DistributedSamplerWrapper`` with the same
settings. ``overfit_batches`` turns shuffling off, as Lightning does.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import lightning
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from lightning_datadiet.data.loaders import subclass_settings

__all__ = [
    "SampleIndexTracker",
    "TrackingBatchSampler",
    "TrackedTrainSource",
    "tracked_loader",
    "install_tracking",
    "uninstall_tracking",
]

_LIGHTNING_CHANGED = (
    "lightning-datadiet tracks the training batches through the Trainer's training data source, "
    "`trainer.fit_loop._data_source` (an object with `dataloader()`, `instance` and `name`), and lightning "
    "{version} no longer has it ({found}). This Lightning release is not supported yet (tested with lightning "
    "2.4-2.6): install lightning<2.7, or report it to lightning-datadiet."
)


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


def _sampler_as_lightning_would(sampler: Any, origin: Any) -> Any:
    """The sampler Lightning would give the user's loader under DDP, when it re-instantiates the tracking batch
    sampler with ``sampler`` (chosen from the tracked loader's default ``SequentialSampler``) in place of ``origin``
    (the user's sampler). Mirrors ``_get_distributed_sampler`` and ``_requires_distributed_sampler`` of Lightning."""
    if origin is None or sampler is origin or type(sampler) is not DistributedSampler:
        return sampler
    if isinstance(origin, (RandomSampler, SequentialSampler)):
        return sampler
    if isinstance(origin, DistributedSampler):
        return origin  # Lightning leaves a loader that already has a DistributedSampler alone
    return DistributedSamplerWrapper(
        origin,
        num_replicas=sampler.num_replicas,
        rank=sampler.rank,
        shuffle=sampler.shuffle,
        seed=sampler.seed,
        drop_last=sampler.drop_last,
    )


class TrackingBatchSampler(BatchSampler):
    """A ``BatchSampler`` that reports each batch's indices to ``trackers`` before yielding it.

    Args:
        sampler, batch_size, drop_last: as for ``BatchSampler``.
        trackers: the :class:`SampleIndexTracker` s to report to (shared: a tracker added later also gets batches).
        origin: the user's sampler; when Lightning re-instantiates this batch sampler under DDP with another
            ``sampler``, the one Lightning would give the user's loader is used (see the module docstring).
    """

    def __init__(
        self,
        sampler: Sampler[int],
        batch_size: int,
        drop_last: bool,
        *,
        trackers: list[SampleIndexTracker],
        origin: Sampler[int] | None = None,
    ) -> None:
        super().__init__(_sampler_as_lightning_would(sampler, origin), batch_size, drop_last)
        self.trackers = trackers
        self.origin = origin

    def _plan(self) -> Callable[[Any], list[int] | None] | None:
        plans = [t.plan for t in self.trackers if t.plan is not None]
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
        trackers = list(self.trackers)
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


def tracked_loader(loader: Any, trackers: list[SampleIndexTracker], *, overfit: bool = False) -> DataLoader:
    """A new DataLoader of ``loader``'s class over the same dataset, with the same settings and a
    :class:`TrackingBatchSampler` over the same sampler (``loader`` itself is not changed).

    Args:
        loader: the training loader the user's ``train_dataloader`` returned.
        trackers: receive each batch's indices.
        overfit: ``Trainer(overfit_batches=...)`` is set: sample in order, as Lightning does.

    Raises:
        TypeError: the loader is not a single map-style ``DataLoader`` with automatic batching (``batch_size`` set,
            or a plain ``BatchSampler``), it delivers batches out of order, or its class cannot be rebuilt.
    """
    owner = trackers[0].owner if trackers else "lightning-datadiet"
    if not isinstance(loader, DataLoader):
        raise TypeError(
            f"{owner} needs a single torch DataLoader for training, got "
            f"{type(loader).__name__}. Return one DataLoader from train_dataloader() (several train loaders or "
            "custom iterables cannot be mapped to dataset indices)."
        )
    if isinstance(loader.dataset, IterableDataset):
        raise TypeError(
            f"{owner} needs a map-style dataset (with __len__ and __getitem__): an IterableDataset has no "
            "per-example index to attach the counts to."
        )
    if getattr(loader, "in_order", True) is False:
        raise TypeError(f"{owner} needs DataLoader(in_order=True) (the default) to know each batch's items.")
    batch_sampler = loader.batch_sampler
    if isinstance(batch_sampler, TrackingBatchSampler):  # a loader tracked before (e.g. from a previous fit)
        sampler = batch_sampler.origin if batch_sampler.origin is not None else batch_sampler.sampler
    elif batch_sampler is not None and type(batch_sampler) is BatchSampler:
        sampler = batch_sampler.sampler
    else:
        raise TypeError(
            f"{owner} needs a DataLoader built with batch_size= (and optionally sampler=/shuffle=), whose "
            f"batch sampler is torch's BatchSampler; got {type(batch_sampler).__name__}. Custom batch samplers are "
            "not supported yet: wrap your sampling logic in a Sampler passed as sampler= instead."
        )
    if overfit and not isinstance(sampler, SequentialSampler):
        rank_zero_warn(
            "You requested to overfit but enabled train dataloader shuffling. We are turning off the train dataloader "
            "shuffling for you."
        )  # Lightning's own warning: it no longer sees the user's sampler on the rebuilt loader
        sampler = SequentialSampler(loader.dataset)
    tracking = TrackingBatchSampler(
        sampler, batch_sampler.batch_size, batch_sampler.drop_last, trackers=trackers, origin=sampler
    )
    cls = type(loader).__name__
    settings = subclass_settings(loader)
    try:
        tracked = type(loader)(loader.dataset, batch_sampler=tracking, **settings)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{owner} tracks the training batches in a copy of the training DataLoader with a tracking batch "
            f"sampler, and `{cls}(dataset, batch_sampler=..., **settings)` failed: {err}. Return a torch DataLoader "
            f"from train_dataloader(), or let {cls}.__init__ take DataLoader's keyword arguments (dataset, "
            "batch_sampler, num_workers, collate_fn, ...) and pass them on to DataLoader.__init__."
        ) from err
    if tracked.batch_sampler is not tracking or tracked.dataset is not loader.dataset:
        raise TypeError(
            f"{owner} rebuilt the training {cls} with a tracking batch sampler, but {cls}.__init__ did not pass "
            "`dataset` and `batch_sampler` on to DataLoader.__init__, so the batches cannot be tracked. Return a "
            f"torch DataLoader from train_dataloader(), or pass them on in {cls}.__init__."
        )
    stateful = callable(getattr(tracked, "state_dict", None)) and callable(getattr(tracked, "load_state_dict", None))
    for tracker in trackers:  # e.g. torchdata's StatefulDataLoader: Lightning itself restores its position on resume
        tracker.loader_stateful = stateful
    return tracked


class TrackedTrainSource:
    """Stands in for the Trainer's training data source during a fit: asks the original source for the training
    loader, as Lightning would, and returns it tracked (:func:`tracked_loader`). Everything else is the original's.

    Args:
        original: the fit loop's source (Lightning's ``_DataLoaderSource``).
        trainer: the Trainer (``overfit_batches`` is read when the loader is requested).
    """

    def __init__(self, original: Any, trainer: Any) -> None:
        self.original = original
        self.trainer = trainer
        self.trackers: list[SampleIndexTracker] = []

    @property
    def instance(self) -> Any:
        return self.original.instance

    @instance.setter
    def instance(self, value: Any) -> None:  # Trainer.fit attaches the data here
        self.original.instance = value

    @property
    def name(self) -> str:
        return self.original.name

    def dataloader(self) -> DataLoader:
        overfit = bool(getattr(self.trainer, "overfit_batches", 0))
        return tracked_loader(self.original.dataloader(), self.trackers, overfit=overfit)

    def is_defined(self) -> bool:
        return self.original.is_defined()

    def is_module(self) -> bool:
        return self.original.is_module()

    def __getattr__(self, name: str) -> Any:  # anything a Lightning release adds to its source
        original = self.__dict__.get("original")
        if original is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(original, name)


def _train_source(trainer: Any, replace_with: Any = None) -> Any:
    """The package's one private access to Lightning: the fit loop's training data source,
    ``trainer.fit_loop._data_source``, which ``FitLoop.setup_data`` asks for the training loader. Returns it, after
    installing ``replace_with`` in its place when given.

    Raises:
        RuntimeError: this Lightning release has no such source (``tests/test_tracking.py`` guards the attribute).
    """
    loop = trainer.fit_loop
    source = getattr(loop, "_data_source", None)
    missing = [a for a in ("dataloader", "instance", "name") if not hasattr(source, a)]
    if source is None or missing or not callable(source.dataloader):
        found = "no `_data_source`" if source is None else f"its source lacks {missing or ['a callable dataloader']}"
        raise RuntimeError(_LIGHTNING_CHANGED.format(version=lightning.__version__, found=found))
    if replace_with is not None:
        loop._data_source = replace_with
    return source


def install_tracking(trainer: Any, tracker: SampleIndexTracker) -> None:
    """Track the Trainer's training loader for ``tracker`` from the next time Lightning requests it (call in the
    callback's ``setup``); several trackers share one :class:`TrackedTrainSource`."""
    source = _train_source(trainer)
    if not isinstance(source, TrackedTrainSource):
        if source.instance is None:
            raise RuntimeError(
                "The Trainer has no training data source: pass a DataModule or train_dataloaders to fit()."
            )
        source = TrackedTrainSource(source, trainer)
        _train_source(trainer, replace_with=source)
    if tracker not in source.trackers:
        source.trackers.append(tracker)


def uninstall_tracking(trainer: Any, tracker: SampleIndexTracker) -> None:
    """Undo :func:`install_tracking` for ``tracker``; the Trainer gets its own source back with the last tracker."""
    source = _train_source(trainer)
    if not isinstance(source, TrackedTrainSource):
        return
    if tracker in source.trackers:
        source.trackers.remove(tracker)
    if not source.trackers:
        _train_source(trainer, replace_with=source.original)
