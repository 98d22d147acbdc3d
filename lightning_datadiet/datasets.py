"""Moved to :mod:`lightning_datadiet.demo.data` (the demo setups live in :mod:`lightning_datadiet.demo`, next to the
presets); this import path stays as an alias of that module."""

import sys

from lightning_datadiet.demo import data as _moved

sys.modules[__name__] = _moved
