"""Pure score functions on tensors: EL2N, GraNd and forgetting events."""

from lightning_datadiet.scores.el2n import el2n
from lightning_datadiet.scores.forgetting import ForgettingState, forgetting_scores, forgetting_update
from lightning_datadiet.scores.grand import eval_mode, grand

__all__ = ["el2n", "grand", "eval_mode", "ForgettingState", "forgetting_update", "forgetting_scores"]
