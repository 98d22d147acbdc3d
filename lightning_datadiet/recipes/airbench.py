"""Moved to :mod:`lightning_datadiet.demo.airbench` (the demo setups live in :mod:`lightning_datadiet.demo`, next to the
presets); this import path stays as an alias of that module."""

import sys

from lightning_datadiet.demo import airbench as _moved

sys.modules[__name__] = _moved
