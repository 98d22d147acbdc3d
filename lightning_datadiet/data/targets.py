"""Read the class labels of a map-style dataset, cheaply when the dataset exposes them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset, TensorDataset

__all__ = ["dataset_targets", "batch_inputs_targets"]

_INPUT_KEYS = ("x", "input", "inputs", "image", "images", "img", "pixel_values", "data", "features")
_TARGET_KEYS = ("y", "target", "targets", "label", "labels", "class", "classes")


def _as_long(values: Any) -> Tensor | None:
    try:
        t = torch.as_tensor(values)
    except (TypeError, ValueError, RuntimeError):
        return None
    if t.ndim != 1 or t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        return None
    return t.to(torch.long)


def _fast_targets(dataset: Dataset) -> Tensor | None:
    """Labels without touching any item, or ``None`` when the dataset does not expose them."""
    if isinstance(dataset, Subset):
        parent = _fast_targets(dataset.dataset)
        return None if parent is None else parent[torch.as_tensor(dataset.indices, dtype=torch.long)]
    if isinstance(dataset, ConcatDataset):
        parts = [_fast_targets(d) for d in dataset.datasets]
        return None if any(p is None for p in parts) else torch.cat(parts)  # type: ignore[arg-type]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return _as_long(dataset.tensors[1])
    for name in ("targets", "labels"):
        values = getattr(dataset, name, None)
        if values is not None and not callable(values):
            t = _as_long(values)
            if t is not None and len(t) == len(dataset):  # type: ignore[arg-type]
                return t
    return None


def dataset_targets(
    dataset: Dataset,
    *,
    target_key: int | str | None = None,
    batch_size: int = 512,
    num_workers: int = 0,
    collate_fn: Callable | None = None,
) -> Tensor:
    """Class ids of every item of ``dataset`` as a ``LongTensor[N]``, in index order.

    Uses ``dataset.targets`` / ``dataset.labels`` (torchvision style), ``TensorDataset`` tensors, ``Subset`` and
    ``ConcatDataset`` without loading any item; otherwise reads the dataset once in index order.
    """
    fast = _fast_targets(dataset)
    if fast is not None:
        return fast
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_fn)
    parts = [batch_inputs_targets(batch, target_key=target_key)[1].reshape(-1).to(torch.long) for batch in loader]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)


def _pick_key(batch: dict, key: int | str | None, candidates: Sequence[str], what: str) -> Any:
    if key is not None:
        if key not in batch:
            raise KeyError(f"The batch is a dict without the {what} key {key!r}; its keys are {sorted(map(str, batch))}.")
        return batch[key]
    for name in candidates:
        if name in batch:
            return batch[name]
    raise ValueError(
        f"Cannot find the {what} in a dict batch with keys {sorted(map(str, batch))}. Pass "
        f"`{'input_key' if what == 'inputs' else 'target_key'}=` naming it (tried {list(candidates)})."
    )


def batch_inputs_targets(
    batch: Any, *, input_key: int | str | None = None, target_key: int | str | None = None
) -> tuple[Any, Tensor]:
    """Split a batch into ``(inputs, targets)``.

    Supported: a tuple/list ``(inputs, targets, *extra)`` (or the positions given by ``input_key`` /
    ``target_key``), and a dict/Mapping with common key names (``x``/``input``/``image``..., ``y``/``target``/
    ``label``...) or the keys given. Anything else raises ``TypeError`` naming the fix.
    """
    if isinstance(batch, dict) or hasattr(batch, "keys") and hasattr(batch, "__getitem__"):
        inputs = _pick_key(batch, input_key, _INPUT_KEYS, "inputs")
        targets = _pick_key(batch, target_key, _TARGET_KEYS, "targets")
    elif isinstance(batch, (tuple, list)):
        i = 0 if input_key is None else input_key
        j = 1 if target_key is None else target_key
        if not isinstance(i, int) or not isinstance(j, int):
            raise TypeError("The batch is a tuple/list: `input_key` and `target_key` must be integer positions.")
        if len(batch) < 2 or max(i, j) >= len(batch):
            raise TypeError(
                f"The batch is a {type(batch).__name__} of length {len(batch)}; expected (inputs, targets, ...). "
                "Return (inputs, targets) from the dataset, or pass `input_key=`/`target_key=` positions."
            )
        inputs, targets = batch[i], batch[j]
    else:
        raise TypeError(
            f"Unsupported batch type {type(batch).__name__}: expected a tuple/list (inputs, targets, ...) or a dict "
            "with input and target entries. Make the dataset return one of these forms."
        )
    if not isinstance(targets, Tensor):
        try:
            targets = torch.as_tensor(targets)
        except (TypeError, ValueError, RuntimeError) as err:
            first = targets[0] if isinstance(targets, (list, tuple)) and targets else targets
            raise TypeError(
                f"The batch's targets are a {type(targets).__name__} of {type(first).__name__}, which is not a tensor "
                f"of integer class ids ({err}). Map the labels to ints in the dataset (e.g. a class-name -> id dict), "
                "or pass `target_key=` if the targets are another entry of the batch."
            ) from err
    return inputs, targets
