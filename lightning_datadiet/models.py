"""Moved to :mod:`lightning_datadiet.demo.models` (the demo setups live in :mod:`lightning_datadiet.demo`, next to the
presets); this import path keeps working: every name is looked up in the moved module."""

from typing import Any

from lightning_datadiet.demo import models as _moved


def __getattr__(name: str) -> Any:
    return getattr(_moved, name)
