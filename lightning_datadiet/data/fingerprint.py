"""Content fingerprints of training data: tell two datasets apart by what they hold, not where they live.

A run key that names a dataset only by its path or by its labels reuses old results after the images behind the
path change, or for another folder with the same classes and counts. These helpers hash the content instead:

- :func:`array_fingerprint` hashes whole arrays (dtype, shape and every byte); use it when the data is already in
  memory as arrays or tensors (the ``datadiet`` pipeline hashes the whole uint8 CIFAR array this way: about a
  second for 50,000 images).
- :func:`dataset_fingerprint` hashes a map-style ``Dataset`` through ``__getitem__``: its length, all labels
  (``.targets`` when present, else read from the items) and the raw bytes of a deterministic, evenly spread sample
  of items (all items when ``sample`` is ``None`` or at least the length).

Both return ``"sha256:<64 hex digits>"`` and are deterministic across processes and machines (byte order is
fixed to little-endian).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["array_fingerprint", "dataset_fingerprint", "sample_indices"]

_U64 = struct.Struct("<Q")


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch Tensor, without importing torch here
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise TypeError(f"cannot fingerprint an object array (got {type(value).__name__}).")
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and np.little_endian is False):
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array)


def _update(digest: Any, value: Any) -> None:
    """Feed one value (array, tensor, number, string, bytes, or nested tuple/list/dict of those) to ``digest``."""
    if isinstance(value, Mapping):
        digest.update(b"M" + _U64.pack(len(value)))
        for key in sorted(value, key=str):
            _update(digest, str(key))
            _update(digest, value[key])
    elif isinstance(value, (tuple, list)):
        digest.update(b"L" + _U64.pack(len(value)))
        for item in value:
            _update(digest, item)
    elif isinstance(value, str):
        raw = value.encode()
        digest.update(b"S" + _U64.pack(len(raw)) + raw)
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        digest.update(b"B" + _U64.pack(len(raw)) + raw)
    elif value is None:
        digest.update(b"N")
    elif hasattr(value, "tobytes") and hasattr(value, "mode") and hasattr(value, "size"):  # a PIL image
        _update(digest, np.asarray(value))
    else:
        array = _as_numpy(value)
        header = f"{array.dtype.str}|{array.shape}".encode()
        digest.update(b"A" + _U64.pack(len(header)) + header)
        digest.update(memoryview(array.reshape(-1)).cast("B"))


def array_fingerprint(*arrays: Any) -> str:
    """SHA-256 over every byte of ``arrays`` (with their dtypes and shapes), in order.

    Args:
        *arrays: ``ndarray``/``Tensor`` objects, numbers, strings, or nested tuples/lists/dicts of them.

    Returns:
        ``"sha256:<64 hex digits>"``; it changes when any element, dtype or shape changes.

    Example:
        >>> a = np.zeros((2, 3), dtype=np.uint8)
        >>> array_fingerprint(a) == array_fingerprint(a.copy()) != array_fingerprint(a + 1)
        True
    """
    digest = hashlib.sha256(b"datadiet-array-v1")
    _update(digest, list(arrays))
    return "sha256:" + digest.hexdigest()


def sample_indices(length: int, sample: int | None) -> list[int]:
    """The item positions :func:`dataset_fingerprint` reads: all of them, or ``sample`` evenly spread ones
    (always the first and the last)."""
    if length <= 0:
        return []
    if sample is None or sample >= length:
        return list(range(length))
    if sample < 2:
        raise ValueError(f"`sample` must be at least 2 (first and last item) or None, got {sample}.")
    return sorted({int(round(i * (length - 1) / (sample - 1))) for i in range(sample)})


def dataset_fingerprint(dataset: Sequence[Any], *, labels: Any = None, sample: int | None = 256) -> str:
    """A content fingerprint of a map-style dataset: its length, all labels and a sample of items' raw bytes.

    Items are read with ``dataset[i]`` for the positions of :func:`sample_indices`; every tensor, array, number
    and string inside an item (tuples and dicts such as ``{"image", "label"}`` included) is hashed. Read the
    dataset **without random augmentation** (e.g. ``score_dataset()``): a random transform makes the fingerprint
    change between calls.

    Args:
        dataset: anything with ``__len__`` and ``__getitem__``.
        labels: the class ids of all items in index order; default: ``dataset.targets`` when present (all labels
            are then hashed without reading items), else only the sampled items' contents are hashed.
        sample: how many items to read (evenly spread, first and last included); ``None`` reads every item.

    Returns:
        ``"sha256:<64 hex digits>"``.

    Raises:
        TypeError: ``dataset`` has no length, or an item holds something that cannot be hashed as bytes.
    """
    try:
        length = len(dataset)
    except TypeError as err:
        raise TypeError(
            f"dataset_fingerprint needs a map-style dataset with a length, got {type(dataset).__name__}."
        ) from err
    if labels is None:
        labels = getattr(dataset, "targets", None)
    digest = hashlib.sha256(b"datadiet-dataset-v1")
    digest.update(_U64.pack(length))
    _update(digest, None if labels is None else _as_numpy(labels).astype("<i8"))
    positions = sample_indices(length, sample)
    _update(digest, np.asarray(positions, dtype="<i8"))
    for i in positions:
        _update(digest, dataset[i])
    return "sha256:" + digest.hexdigest()
