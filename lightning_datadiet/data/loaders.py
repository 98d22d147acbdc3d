"""Rebuild a DataLoader with the settings of an existing one: over another dataset (the DataModule wrappers), or
over the same dataset with another batch sampler (the sample-index tracking)."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

__all__ = ["loader_settings", "subclass_settings", "loader_batch_size", "rebuild_loader", "single_loader"]


def loader_settings(loader: DataLoader) -> dict[str, Any]:
    """The keyword arguments that carry ``loader``'s settings to a new ``DataLoader`` (everything but the dataset
    and the sampling: ``num_workers``, ``collate_fn``, ``pin_memory``, ``timeout``, ``worker_init_fn``,
    ``multiprocessing_context``, ``generator``, ``prefetch_factor``, ``persistent_workers``, ``pin_memory_device``,
    and ``in_order`` where torch has it)."""
    settings: dict[str, Any] = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": loader.generator,
        "prefetch_factor": loader.prefetch_factor,
        "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device,
    }
    if hasattr(loader, "in_order"):
        settings["in_order"] = loader.in_order
    return settings


def subclass_settings(loader: DataLoader) -> dict[str, Any]:
    """:func:`loader_settings`, plus the ``__init__`` arguments a ``DataLoader`` subclass adds to torch's (e.g.
    torchdata's ``StatefulDataLoader`` and its ``snapshot_every_n_steps``), read from the attributes of the same name.

    Raises:
        TypeError: a required argument the loader does not keep as an attribute: it cannot be rebuilt.
    """
    settings = loader_settings(loader)
    if type(loader) is DataLoader:
        return settings
    base = inspect.signature(DataLoader.__init__).parameters
    for name, param in inspect.signature(type(loader).__init__).parameters.items():
        if name == "self" or name in base or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if hasattr(loader, name):
            settings[name] = getattr(loader, name)
        elif param.default is param.empty:
            raise TypeError(
                f"{type(loader).__name__}.__init__ requires `{name}`, which the loader does not keep as an attribute "
                f"of that name, so the loader cannot be rebuilt with its settings. Store it as `self.{name}` in "
                f"{type(loader).__name__}.__init__, or return a torch DataLoader."
            )
    return settings


def loader_batch_size(loader: Any) -> int | None:
    """The batch size of ``loader``: its ``batch_size``, or its batch sampler's (a loader built with
    ``batch_sampler=``, such as the training loader the sample-index tracking rebuilds, has ``batch_size=None``)."""
    size = getattr(loader, "batch_size", None)
    if size is None:
        size = getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    return size if isinstance(size, int) else None


def single_loader(loader: Any, owner: str) -> DataLoader:
    """``loader`` if it is one ``DataLoader``; a clear error naming ``owner`` otherwise."""
    if not isinstance(loader, DataLoader):
        raise TypeError(
            f"{owner} needs the wrapped train_dataloader() to return one DataLoader, got {type(loader).__name__}. "
            "Wrap a datamodule with a single training loader over a map-style dataset."
        )
    return loader


def rebuild_loader(loader: DataLoader, dataset: Dataset, *, same_indices: bool, owner: str) -> DataLoader:
    """A plain ``DataLoader`` over ``dataset`` with ``loader``'s settings (:func:`loader_settings`, ``batch_size``,
    ``drop_last``) and sampling: a ``RandomSampler`` (``shuffle=True``, with its generator) shuffles ``dataset``, a
    ``SequentialSampler`` keeps index order.

    Args:
        loader: the loader whose settings carry over.
        dataset: the new dataset.
        same_indices: whether index ``i`` of ``dataset`` is item ``i`` of ``loader.dataset`` (a relabelled copy):
            then a custom sampler or batch sampler is reused as is. Otherwise (a subset) only the plain samplers
            can be carried over, and a custom one is a ``TypeError``.
        owner: named in messages.
    """
    fix = (
        f"{owner} re-indexes the training loader and supports the plain samplers only: return "
        "`DataLoader(dataset, batch_size=..., shuffle=True/False, ...)` from train_dataloader() (Lightning adds the "
        "DistributedSampler under DDP by itself)."
    )
    settings = loader_settings(loader)
    if type(loader) is not DataLoader:
        warnings.warn(
            f"The training loader is a {type(loader).__name__}; {owner}'s loader is a plain DataLoader with its "
            "settings.",
            stacklevel=3,
        )
    sampler, batch_sampler = loader.sampler, loader.batch_sampler
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        if not same_indices:
            raise TypeError(f"The training loader uses a custom batch sampler ({type(batch_sampler).__name__}). {fix}")
        return DataLoader(dataset, batch_sampler=batch_sampler, **settings)
    sampling: dict[str, Any]
    if type(sampler) is RandomSampler and not sampler.replacement and sampler._num_samples is None:
        sampling = {"shuffle": True}
        if sampler.generator is not None:
            settings["generator"] = sampler.generator
    elif type(sampler) is SequentialSampler:
        sampling = {"shuffle": False}
    elif same_indices:
        sampling = {"sampler": sampler}
    elif type(sampler) is RandomSampler:
        raise TypeError("The training loader samples with replacement or a fixed `num_samples`. " + fix)
    else:
        raise TypeError(f"The training loader uses a custom sampler ({type(sampler).__name__}). {fix}")
    return DataLoader(dataset, batch_size=loader.batch_size, drop_last=loader.drop_last, **sampling, **settings)
