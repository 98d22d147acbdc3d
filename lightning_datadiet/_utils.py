"""Small helpers with one copy each in the package."""

from __future__ import annotations

import math
import os
import secrets
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "fsync_dir", "fraction_count", "plain"]


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


def fraction_count(n: int, fraction: float) -> int:
    """``fraction`` of ``n`` as a count: round half up, computed exactly on the decimal value written (so
    ``fraction_count(10, 0.35) == 4``, ``fraction_count(45, 0.7) == 32``); may be 0."""
    from fractions import Fraction

    return int(math.floor(n * Fraction(repr(float(fraction))) + Fraction(1, 2)))


def plain(value: Any) -> Any:
    """jsonargparse Namespaces (also inside lists and dicts) as plain dicts; anything else as it is."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
