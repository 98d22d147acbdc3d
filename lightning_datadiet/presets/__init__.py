"""Preset study configurations shipped with the package, as YAML files of the ``datadiet`` command.

- ``digits``, ``cifar10``, ``airbench``: the built-in model and data setups, written the LightningCLI way
  (``model`` and ``data`` as ``class_path`` / ``init_args``) with their study defaults. ``--dataset digits``,
  ``--dataset cifar10 --data_dir PATH`` and ``--model airbench`` are shorthands for them; a study of your own
  model and data is the same file with your class paths (``datadiet demo --config my_study.yaml``).
- ``reproduce_smoke``, ``reproduce_cpu``, ``reproduce_gpu``: the sizes of ``datadiet reproduce --scale``.

Every preset is a plain study configuration: ``datadiet demo --config $(python -c "from lightning_datadiet.presets
import preset_path; print(preset_path('digits'))")`` runs it, and ``--print_config`` shows it resolved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["PRESETS", "preset_path", "load_preset"]

_HERE = Path(__file__).resolve().parent
PRESETS = tuple(sorted(p.stem for p in _HERE.glob("*.yaml")))


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name`` (one of :data:`PRESETS`).

    Raises:
        ValueError: unknown name.
    """
    path = _HERE / f"{name}.yaml"
    if name not in PRESETS or not path.is_file():
        raise ValueError(f"Unknown preset {name!r}: choose one of {', '.join(PRESETS)}.")
    return path


def load_preset(name: str) -> dict[str, Any]:
    """Preset ``name`` as a dict (a fresh copy each call).

    Example:
        >>> load_preset("digits")["data"]["class_path"]
        'lightning_datadiet.demo.DigitsDataModule'
    """
    return yaml.safe_load(preset_path(name).read_text())
