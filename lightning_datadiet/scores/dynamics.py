"""Training-dynamics scores from the training forward passes, per example, in dense tensors.

Over the presentations of item ``i`` (its training-batch forward passes, in order; ``z`` the logits,
``p = softmax(z)``, ``y`` the label):

- ``aum`` (Pleiss et al. 2020): mean of ``z[y] - max_{k != y} z[k]``. Hard end: **low** (negative = likely mislabeled).
- ``confidence`` (Swayamdipta et al. 2020): mean of ``p[y]``. Hard end: **low**.
- ``variability``: population standard deviation (ddof 0) of ``p[y]``. Hard end: **high** ("ambiguous").
- ``correctness``: fraction of presentations with ``argmax z == y``. Hard end: **low**.
- ``dynamic_uncertainty`` (He et al. 2024): with windows of ``window`` consecutive presentations, the mean over all full
  windows of the population std of ``p[y]`` inside the window. Hard end: **high**.

Items never presented get NaN; ``dynamic_uncertainty`` is NaN for items with fewer than ``window`` presentations
(no full window). Sums are float64 per example (Welford's update for the variance). Memory: 44 bytes per example,
plus ``4 x window`` bytes for ``dynamic_uncertainty``'s ring buffer of the latest ``p[y]`` (84 bytes at the default
window of 10): O(N x window).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_datadiet.scores.forgetting import occurrence_rounds

__all__ = [
    "DYNAMICS_METRICS",
    "HARD_END",
    "DynamicsState",
    "presentation_values",
    "dynamics_update",
    "dynamics_scores",
]

DYNAMICS_METRICS: tuple[str, ...] = ("aum", "confidence", "variability", "correctness", "dynamic_uncertainty")
#: which end of each metric holds the hard examples
HARD_END: dict[str, str] = {
    "aum": "low",
    "confidence": "low",
    "variability": "high",
    "correctness": "low",
    "dynamic_uncertainty": "high",
}


def presentation_values(logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    """Per presentation: ``margin`` (``z[y] - max_{k != y} z[k]``), ``prob`` (``p[y]``) and ``correct``; float32 ``[B]``
    (``correct`` bool), computed in float32 on the logits' device."""
    z = logits.detach().float()
    y = targets.long().view(-1, 1)
    zy = z.gather(1, y).squeeze(1)
    others = z.scatter(1, y, float("-inf"))
    margin = zy - others.max(dim=1).values
    prob = torch.softmax(z, dim=1).gather(1, y).squeeze(1)
    return {"margin": margin, "prob": prob, "correct": z.argmax(dim=1) == y.squeeze(1)}


class DynamicsState:
    """Dense running sums per example (see the module docstring for memory)."""

    _FIELDS = ("count", "margin_sum", "correct_count", "prob_mean", "prob_m2", "du_sum", "du_windows")

    def __init__(self, num_samples: int, window: int = 10, *, ring: bool = True) -> None:
        if not isinstance(window, int) or isinstance(window, bool) or window < 2:
            raise ValueError(f"`window` must be an int >= 2 (presentations per window), got {window!r}.")
        self.window = window
        self.count = torch.zeros(num_samples, dtype=torch.int32)
        self.margin_sum = torch.zeros(num_samples, dtype=torch.float64)
        self.correct_count = torch.zeros(num_samples, dtype=torch.int32)
        self.prob_mean = torch.zeros(num_samples, dtype=torch.float64)
        self.prob_m2 = torch.zeros(num_samples, dtype=torch.float64)
        self.du_sum = torch.zeros(num_samples, dtype=torch.float64)
        self.du_windows = torch.zeros(num_samples, dtype=torch.int32)
        # latest `window` values of p[y] per example; slot (count - 1) % window holds the newest
        self.ring = torch.zeros((num_samples, window) if ring else (num_samples, 0), dtype=torch.float32)

    @property
    def num_samples(self) -> int:
        return self.count.numel()

    def state_dict(self) -> dict[str, Tensor | int]:
        state: dict[str, Tensor | int] = {name: getattr(self, name) for name in self._FIELDS}
        state["ring"] = self.ring
        state["window"] = self.window
        return state

    def load_state_dict(self, state: dict[str, Tensor | int]) -> None:
        if int(state["window"]) != self.window or state["ring"].shape[1] != self.ring.shape[1]:  # type: ignore[union-attr]
            raise ValueError(
                f"The checkpoint's training-dynamics state was recorded with window={int(state['window'])}; this "
                f"callback has window={self.window}. Resume with the same `window` and `metrics`."
            )
        for name in (*self._FIELDS, "ring"):
            value = state[name]
            assert isinstance(value, Tensor)
            if value.shape[0] != self.num_samples:
                raise ValueError(
                    f"Training-dynamics state {name!r} covers {value.shape[0]} examples but the training set has "
                    f"{self.num_samples}: the checkpoint comes from a different dataset."
                )
            setattr(self, name, value.to(getattr(self, name).dtype).clone())


def dynamics_update(state: DynamicsState, indices: Tensor, margin: Tensor, prob: Tensor, correct: Tensor) -> None:
    """Apply one ordered sequence of presentations (``[M]`` each) to ``state`` in place; an index may repeat and
    repeats are applied in order."""
    indices = indices.long().cpu()
    margin, prob, correct = margin.cpu().double(), prob.cpu().float(), correct.cpu().bool()
    if not (indices.shape == margin.shape == prob.shape == correct.shape) or indices.ndim != 1:
        raise ValueError("dynamics_update: indices, margin, prob and correct must be 1-D of the same length.")
    if indices.numel() == 0:
        return
    if int(indices.min()) < 0 or int(indices.max()) >= state.num_samples:
        raise IndexError(f"dynamics_update: sample index out of range [0, {state.num_samples}).")
    window = state.window
    for pick in occurrence_rounds(indices):
        idx = indices[pick]  # unique within a round
        state.count[idx] += 1
        n = state.count[idx].double()
        state.margin_sum[idx] += margin[pick]
        state.correct_count[idx] += correct[pick].int()
        p32 = prob[pick]
        p = p32.double()
        delta = p - state.prob_mean[idx]
        state.prob_mean[idx] += delta / n
        state.prob_m2[idx] += delta * (p - state.prob_mean[idx])
        if state.ring.shape[1]:
            slot = (state.count[idx].long() - 1) % window
            state.ring[idx, slot] = p32
            full = state.count[idx] >= window
            if bool(full.any()):
                done = idx[full]
                std = state.ring[done].double().std(dim=1, correction=0)
                state.du_sum[done] += std
                state.du_windows[done] += 1


def dynamics_scores(state: DynamicsState, metrics: tuple[str, ...] | list[str] = DYNAMICS_METRICS) -> dict[str, Tensor]:
    """The metrics as float32 ``[N]`` tensors; NaN for items never presented (and, for ``dynamic_uncertainty``, for
    items with fewer than ``window`` presentations)."""
    count = state.count.double()
    seen = state.count > 0
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    out: dict[str, Tensor] = {}
    for name in metrics:
        if name == "aum":
            value = state.margin_sum / count
        elif name == "confidence":
            value = state.prob_mean.clone()
        elif name == "variability":
            value = torch.sqrt(torch.clamp(state.prob_m2 / count, min=0.0))
        elif name == "correctness":
            value = state.correct_count.double() / count
        elif name == "dynamic_uncertainty":
            value = torch.where(state.du_windows > 0, state.du_sum / state.du_windows.double(), nan)
        else:
            raise ValueError(f"Unknown training-dynamics metric {name!r}; choose from {list(DYNAMICS_METRICS)}.")
        out[name] = torch.where(seen, value, nan).to(torch.float32)
    return out
