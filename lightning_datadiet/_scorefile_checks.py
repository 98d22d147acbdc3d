"""What a score file may hold, checked on the way in: ``save_scores``'s arguments (scores that float32 holds
faithfully, a plain method name, epoch, seed, JSON-able extra, integer labels), the header it writes, and reading a
file from disk (regular files only, without blocking). The byte layouts are in ``_scorefile_format``; the API is
``lightning_datadiet.store``."""

from __future__ import annotations

import json
import operator
import os
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_datadiet._scorefile_format import (
    DTYPE_NAME,
    FORMAT_NAME,
    METHOD_NAME,
    METHOD_RULE,
    PAYLOAD_DTYPE,
    ScoreFileNotFoundError,
    refuse,
)
from lightning_datadiet._version import __version__

SCORE_FILE_SUFFIX = ".scores"


# ------------------------------------------------------------------------------------------------ arguments


def labels_as_int64(labels: Any) -> np.ndarray:
    if isinstance(labels, Tensor):
        array = labels.detach().cpu().numpy()
    else:
        array = np.asarray(labels)
        if array.dtype == object:  # e.g. a list mixing ints and 0-d tensors
            try:
                array = np.fromiter((operator.index(x) for x in labels), dtype=np.int64)
            except TypeError as err:
                raise ValueError(
                    f"labels must be integer class ids; could not read them as integers ({err})."
                ) from err
    if array.ndim != 1:
        raise ValueError(
            f"labels must be 1-D (one class id per training example), got shape {tuple(array.shape)}."
        )
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError("labels must be integer class ids; got floats that are not whole numbers.")
    elif array.dtype.kind not in "iub":
        raise ValueError(f"labels must be integer class ids, got dtype {array.dtype}.")
    return np.ascontiguousarray(array, dtype="<i8")


def as_scores(scores: Any) -> Tensor:
    """A contiguous float32 CPU 1-D tensor; ValueError for other shapes, complex values and NaN."""
    if isinstance(scores, Tensor):
        tensor = scores.detach()
    else:
        try:
            tensor = torch.as_tensor(np.asarray(scores))
        except (TypeError, ValueError) as err:
            raise ValueError(f"scores must be a 1-D tensor or array of numbers ({err}).") from err
    if tensor.is_complex():
        raise ValueError("scores must be real numbers, got a complex tensor.")
    if tensor.ndim != 1:
        raise ValueError(
            f"scores must be a 1-D tensor with one score per training example, got shape {tuple(tensor.shape)}."
        )
    source = tensor.to("cpu")
    tensor = source.to(torch.float32).contiguous()
    check_float32_faithful(source, tensor)
    nan = int(torch.isnan(tensor).sum())
    if nan:
        raise ValueError(
            f"scores contain {nan} NaN entr{'y' if nan == 1 else 'ies'} (of {tensor.numel()}); NaN scores cannot "
            "be ranked. Fix the computation (e.g. a diverged run) or replace them, e.g. torch.nan_to_num(scores)."
        )
    return tensor


_FLOAT32_EXACT_INT = 2**24  # every integer of magnitude <= 2^24 is exact in float32


def check_float32_faithful(source: Tensor, stored: Tensor) -> None:
    """Refuse scores that float32 (the file's dtype) cannot hold faithfully: finite values that overflow to
    +-inf, and integers (integer dtypes, or whole-number floats beyond 2^24) that float32 would change, which
    would turn distinct counts into ties. Ordinary rounding of fractional float64 scores is accepted."""
    if source.dtype == torch.float32 or source.dtype == torch.bool:
        return
    if source.is_floating_point():
        overflow = torch.isfinite(source) & torch.isinf(stored)
        if bool(overflow.any()):
            first = int(overflow.nonzero()[0, 0])
            raise ValueError(
                f"scores hold {int(overflow.sum())} finite value(s) too large for float32 (e.g. scores[{first}] = "
                f"{source[first].item():g}, max {torch.finfo(torch.float32).max:g}); saved as float32 they would become "
                "+-inf and rank like 'never learned'. Fix: rescale the scores (e.g. divide by their max) or take "
                "their log before saving."
            )
        whole = torch.isfinite(source) & (source == torch.round(source)) & (source.abs() > _FLOAT32_EXACT_INT)
    else:
        whole = source.abs() > _FLOAT32_EXACT_INT
    if bool(whole.any()):
        back = stored.to(source.dtype)
        changed = whole & (back != source)
        if bool(changed.any()):
            first = int(changed.nonzero()[0, 0])
            raise ValueError(
                f"scores hold {int(changed.sum())} integer value(s) beyond 2^24 that float32 cannot represent exactly "
                f"(e.g. scores[{first}] = {source[first].item()} would be stored as {stored[first].item():.0f}), so "
                "distinct values could become ties. Fix: rescale them (e.g. subtract the minimum) or rank them "
                "first, e.g. scores.argsort().argsort(), before saving."
            )


def optional_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be an int or None, got a bool.")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"`{name}` must be an int or None, got {type(value).__name__}.") from None


def checked_method(method: Any) -> str:
    if not isinstance(method, str) or not METHOD_NAME.fullmatch(method):
        raise ValueError(
            f"`method` must be a plain name such as 'el2n', 'grand' or 'forgetting' ({METHOD_RULE}; no path "
            f"separators, dots or spaces), got {method!r}."
        )
    return method


def checked_epoch(epoch: Any) -> int | None:
    epoch = optional_int(epoch, "epoch")
    if epoch is not None and epoch < 0:
        raise ValueError(f"`epoch` must be a non-negative int (completed training epochs) or None, got {epoch}.")
    return epoch


def checked_extra(extra: Any) -> dict[str, Any]:
    if extra is None:
        return {}
    if not isinstance(extra, dict):
        raise ValueError(f"`extra` must be a dict, got {type(extra).__name__}.")
    try:
        # Round trip so the in-memory metadata equals what a later load returns (tuples -> lists and so on).
        return json.loads(json.dumps(extra, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"`extra` must be JSON-serialisable (str keys; str, int, finite float, bool, None, list, dict values): {err}."
        ) from err


def make_header(
    scores: Tensor,
    payload_sha256: str,
    method: str,
    epoch: int | None,
    seed: int | None,
    fingerprint: str | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "dtype": DTYPE_NAME,
        "num_samples": int(scores.numel()),
        "payload_sha256": payload_sha256,
        "method": method,
        "epoch": epoch,
        "seed": seed,
        "label_fingerprint": fingerprint,
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "extra": extra,
    }


def payload(scores: Tensor) -> np.ndarray:
    """The scores as a contiguous little-endian float32 array (a view on little-endian machines)."""
    return np.ascontiguousarray(scores.numpy(), dtype=PAYLOAD_DTYPE)


# ------------------------------------------------------------------------------------------------ reading


def read_regular_file(p: Path) -> bytes:
    """The bytes of ``p``; anything but a regular file (a named pipe, socket, device, directory) is refused before a
    single byte is read, and opening never blocks."""
    try:
        # O_NONBLOCK: opening a named pipe must not wait for a writer; anything but a regular file is refused below.
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise refuse(
            p,
            "no such score file",
            "check the path; score files are written by the scoring callbacks or save_scores",
            ScoreFileNotFoundError,
        ) from None
    except IsADirectoryError:
        raise refuse(
            p, "is a directory, not a score file", f"pass one of the *{SCORE_FILE_SUFFIX} files inside it"
        ) from None
    except OSError as err:
        raise refuse(p, f"cannot be opened ({err.strerror or err})", "check the path and its permissions") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise refuse(p, "is a directory, not a score file", f"pass one of the *{SCORE_FILE_SUFFIX} files inside it")
        if not stat.S_ISREG(mode):
            raise refuse(
                p,
                "is not a regular file (a named pipe, socket or device); score files are read only from regular files",
                "pass the path of a score file written by save_scores or a scoring callback",
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)
