"""lightning-datadiet: find the training examples that matter, early in training, and train on less data.

Public API: the score functions (:func:`el2n`, :func:`grand`), the Lightning callbacks that compute them for
every training example (:class:`EL2NCallback`, :class:`GraNdCallback`, :class:`ForgettingCallback`), score files
(:func:`save_scores`, :func:`load_scores`, :func:`average_scores`), the selection rules
(:mod:`lightning_datadiet.selection`), :class:`PrunedDataModule`, and the analyses (:mod:`lightning_datadiet.analysis`).
"""

from typing import TYPE_CHECKING, Any

from lightning_datadiet._version import __version__

# The public names are imported on first use (PEP 562), so that `datadiet --help` and other light entry points
# do not import torch and Lightning (seconds). `from lightning_datadiet import EL2NCallback` works as before.
_LAZY = {
    "selection": "lightning_datadiet.selection",
    "EL2NCallback": "lightning_datadiet.callbacks",
    "ForgettingCallback": "lightning_datadiet.callbacks",
    "GraNdCallback": "lightning_datadiet.callbacks",
    "TrainingDynamicsCallback": "lightning_datadiet.callbacks",
    "DynamicPruningCallback": "lightning_datadiet.callbacks",
    "loss_weights": "lightning_datadiet.callbacks",
    "PrunedDataModule": "lightning_datadiet.data.pruned",
    "el2n": "lightning_datadiet.scores",
    "grand": "lightning_datadiet.scores",
    "ScoreFile": "lightning_datadiet.store",
    "ScoreFileError": "lightning_datadiet.store",
    "average_scores": "lightning_datadiet.store",
    "label_fingerprint": "lightning_datadiet.store",
    "load_scores": "lightning_datadiet.store",
    "save_scores": "lightning_datadiet.store",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from lightning_datadiet import selection
    from lightning_datadiet.callbacks import (
        DynamicPruningCallback,
        EL2NCallback,
        ForgettingCallback,
        GraNdCallback,
        TrainingDynamicsCallback,
        loss_weights,
    )
    from lightning_datadiet.data.pruned import PrunedDataModule
    from lightning_datadiet.scores import el2n, grand
    from lightning_datadiet.store import (
        ScoreFile,
        ScoreFileError,
        average_scores,
        label_fingerprint,
        load_scores,
        save_scores,
    )


def __getattr__(name: str) -> Any:
    import importlib

    if name not in _LAZY:
        raise AttributeError(f"module 'lightning_datadiet' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if name == "selection" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "el2n",
    "grand",
    "EL2NCallback",
    "GraNdCallback",
    "ForgettingCallback",
    "PrunedDataModule",
    "selection",
    "ScoreFile",
    "ScoreFileError",
    "save_scores",
    "load_scores",
    "average_scores",
    "label_fingerprint",
    "TrainingDynamicsCallback",
    "DynamicPruningCallback",
    "loss_weights",
]
