"""Small file and console helpers of the study: atomic JSON/CSV/text writes, lenient reads, progress lines."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from lightning_datadiet._utils import atomic_write_bytes

__all__ = ["write_text", "write_json", "read_json", "write_csv", "say", "duration", "ETA"]


def write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or ``None`` when it is missing or unreadable (a run that did not finish)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...] | list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    write_text(path, buf.getvalue())


def say(message: str) -> None:
    print(message, flush=True)


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class ETA:
    """Running count and estimated time left of a stage's fits (mean time per finished fit x fits left)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def tick(self) -> str:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        left = elapsed / self.done * (self.total - self.done)
        return f"stage {duration(elapsed)}, eta {duration(left)}"
