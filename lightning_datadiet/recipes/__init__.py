"""Training recipes shipped as presets of the ``datadiet`` study (``--model airbench``). Moved to
:mod:`lightning_datadiet.demo.airbench`; this package keeps the old import paths working."""

from lightning_datadiet.demo import airbench as _airbench

__all__ = list(_airbench.__all__)
globals().update({name: getattr(_airbench, name) for name in __all__})
