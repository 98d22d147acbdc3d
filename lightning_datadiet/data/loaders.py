"""Rebuild a DataLoader over another dataset with the settings of an existing one."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader

__all__ = ["loader_settings"]


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
