"""Forgetting events (Toneva et al. 2019): correct -> incorrect transitions of an example's prediction."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ForgettingState", "forgetting_update", "forgetting_scores", "occurrence_rounds"]


def occurrence_rounds(indices: Tensor) -> list[Tensor]:
    """Split an ordered sequence of presentations into rounds in which every index appears at most once.

    Round ``r`` is a ``BoolTensor[M]`` mask of the ``r``-th occurrence of each index, so applying the rounds in order
    applies each example's presentations in presentation order while every round stays a vectorised update.
    """
    if indices.numel() == 0:
        return []
    order = torch.sort(indices, stable=True).indices  # groups equal indices, presentation order within a group
    sorted_idx = indices[order]
    new_group = torch.ones_like(sorted_idx, dtype=torch.bool)
    new_group[1:] = sorted_idx[1:] != sorted_idx[:-1]
    group_start = torch.cummax(torch.where(new_group, torch.arange(len(order)), 0), dim=0).values
    occurrence = torch.empty_like(order)
    occurrence[order] = torch.arange(len(order)) - group_start
    return [occurrence == r for r in range(int(occurrence.max()) + 1)]


class ForgettingState:
    """Dense per-example state of forgetting counts: 6 bytes per example.

    Attributes:
        last_correct: ``BoolTensor[N]``, whether the latest presentation was classified correctly.
        ever_correct: ``BoolTensor[N]``, whether any presentation so far was classified correctly.
        forgotten: ``IntTensor[N]``, number of correct -> incorrect transitions so far.
    """

    def __init__(self, num_samples: int) -> None:
        self.last_correct = torch.zeros(num_samples, dtype=torch.bool)
        self.ever_correct = torch.zeros(num_samples, dtype=torch.bool)
        self.forgotten = torch.zeros(num_samples, dtype=torch.int32)

    @property
    def num_samples(self) -> int:
        return self.last_correct.numel()

    def state_dict(self) -> dict[str, Tensor]:
        return {"last_correct": self.last_correct, "ever_correct": self.ever_correct, "forgotten": self.forgotten}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name in ("last_correct", "ever_correct", "forgotten"):
            value = state[name]
            if value.shape != (self.num_samples,):
                raise ValueError(
                    f"Forgetting state {name!r} has shape {tuple(value.shape)} but the training set has "
                    f"{self.num_samples} examples: the checkpoint comes from a different dataset."
                )
            setattr(self, name, value.to(getattr(self, name).dtype).clone())


def forgetting_update(state: ForgettingState, indices: Tensor, correct: Tensor) -> None:
    """Apply one ordered sequence of presentations to ``state`` in place.

    Args:
        state: the running state.
        indices: ``LongTensor[M]`` dataset indices, in presentation order. An index may repeat (e.g. the padding of
            a ``DistributedSampler``); repeats are applied in order.
        correct: ``BoolTensor[M]``, whether each presentation was classified correctly.

    A forgetting event is a presentation that is incorrect while the previous presentation of the same example was
    correct. Learning an example (incorrect -> correct) is not an event.
    """
    indices = indices.long().cpu()
    correct = correct.bool().cpu()
    if indices.shape != correct.shape or indices.ndim != 1:
        raise ValueError("forgetting_update: indices and correct must be 1-D of the same length.")
    if indices.numel() == 0:
        return
    if int(indices.min()) < 0 or int(indices.max()) >= state.num_samples:
        raise IndexError(f"forgetting_update: sample index out of range [0, {state.num_samples}).")
    for pick in occurrence_rounds(indices):
        idx, c = indices[pick], correct[pick]
        forgot = state.last_correct[idx] & ~c
        state.forgotten.index_add_(0, idx[forgot], torch.ones(int(forgot.sum()), dtype=torch.int32))
        state.last_correct[idx] = c
        state.ever_correct[idx] |= c


def forgetting_scores(state: ForgettingState, *, never_learned: float = float("inf")) -> Tensor:
    """Forgetting counts as float32 ``[N]``; examples never classified correctly get ``never_learned``.

    The default ``+inf`` is the official semantics: never-learned examples are the hardest and are kept first.
    """
    out = state.forgotten.to(torch.float32)
    out[~state.ever_correct] = never_learned
    return out
