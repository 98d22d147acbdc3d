"""Lightning callbacks that score every training example."""

from lightning_datadiet.callbacks.dynamic_pruning import DynamicPruningCallback, loss_weights
from lightning_datadiet.callbacks.dynamics import TrainingDynamicsCallback
from lightning_datadiet.callbacks.el2n import EL2NCallback
from lightning_datadiet.callbacks.forgetting import ForgettingCallback
from lightning_datadiet.callbacks.grand import GraNdCallback

__all__ = ["EL2NCallback", "GraNdCallback", "ForgettingCallback", "TrainingDynamicsCallback", "DynamicPruningCallback", "loss_weights"]
