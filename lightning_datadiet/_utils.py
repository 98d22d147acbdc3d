"""Small helpers with one copy each in the package (light: importing this module imports neither torch nor
Lightning)."""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the pipeline and `datadiet --help` import this module without torch
    from torch import nn

__all__ = ["atomic_write_bytes", "eval_mode", "fraction_count", "fsync_dir", "plain"]


def fraction_count(n: int, fraction: float | Fraction) -> int:
    """``fraction`` x ``n`` as a count, with the one rounding the package uses everywhere: round half up, computed
    exactly on the decimal value written (``0.35`` is 7/20, not the binary 0.34999...; a ``Fraction`` is taken as
    is). May return 0; callers that need at least one example say so (:func:`~lightning_datadiet.selection.keep_count`).

    Example:
        >>> fraction_count(45, 0.7), fraction_count(10, 0.35), fraction_count(5, 0.5), fraction_count(3, 0.1)
        (32, 4, 3, 0)
    """
    exact = fraction if isinstance(fraction, Fraction) else Fraction(repr(float(fraction)))
    return math.floor(n * exact + Fraction(1, 2))


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[Any]:
    """Put ``modules`` in eval mode; afterwards every submodule gets back its own ``training`` flag (a model with
    mixed flags, e.g. a frozen BatchNorm in eval inside a training network, comes back exactly as it was). Yields
    the module (a tuple of them when several are given)."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield modules[0] if len(modules) == 1 else modules
    finally:
        for m, flag in flags:
            m.training = flag


def fsync_dir(directory: Path) -> None:
    """Make a rename durable where the OS allows opening directories (POSIX); best effort elsewhere."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(target: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``target`` atomically: a hidden temporary file in the same directory (``O_CREAT|O_EXCL``,
    so it never follows a link), flushed, ``fsync``-ed and renamed over ``target`` with ``os.replace``. If anything
    fails the temporary file is removed and a previous file at ``target`` is left untouched; a process killed
    mid-write leaves the old file and a stray ``.<name>.<hex>.tmp``. The parent directory is created."""
    target = Path(target)
    directory = target.parent
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{target.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o666)  # the umask applies, as for any new file
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def plain(value: Any) -> Any:
    """jsonargparse Namespaces (also inside lists and dicts) as plain dicts; anything else as it is."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
