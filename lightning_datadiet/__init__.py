"""lightning-datadiet: find the training examples that matter, early in training, and train on less data.

Public API: the score functions (:func:`el2n`, :func:`grand`), the Lightning callbacks that compute them for
every training example (:class:`EL2NCallback`, :class:`GraNdCallback`, :class:`ForgettingCallback`,
:class:`TrainingDynamicsCallback`), pruning during training (:class:`DynamicPruningCallback`, :func:`loss_weights`), score files
(:func:`save_scores`, :func:`load_scores`, :func:`average_scores`), the selection rules
(:mod:`lightning_datadiet.selection`), :class:`PrunedDataModule`, and the analyses (:mod:`lightning_datadiet.analysis`).
"""

__version__ = "0.1.0"

from lightning_datadiet import selection  # noqa: E402
from lightning_datadiet.callbacks import (  # noqa: E402
    DynamicPruningCallback,
    EL2NCallback,
    ForgettingCallback,
    GraNdCallback,
    TrainingDynamicsCallback,
    loss_weights,
)
from lightning_datadiet.data.pruned import PrunedDataModule  # noqa: E402
from lightning_datadiet.scores import el2n, grand  # noqa: E402
from lightning_datadiet.store import (  # noqa: E402
    ScoreFile,
    ScoreFileError,
    average_scores,
    label_fingerprint,
    load_scores,
    save_scores,
)

__all__ = [
    "__version__",
    "el2n",
    "grand",
    "EL2NCallback",
    "GraNdCallback",
    "ForgettingCallback",
    "TrainingDynamicsCallback",
    "DynamicPruningCallback",
    "loss_weights",
    "PrunedDataModule",
    "selection",
    "ScoreFile",
    "ScoreFileError",
    "save_scores",
    "load_scores",
    "average_scores",
    "label_fingerprint",
]
