"""Input checks shared by the score functions: every refusal names the problem and the fix."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor


def check_targets(targets: Tensor, batch_size: int, num_classes: int | None, *, what: str) -> None:
    if not isinstance(targets, Tensor):
        raise TypeError(f"{what}: targets must be a tensor of class ids, got {type(targets).__name__}.")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(
            f"{what}: targets must be integer class ids of shape [B], got dtype {targets.dtype} with shape "
            f"{tuple(targets.shape)}. One-hot or soft labels are not supported: pass `targets.argmax(1)` if they are "
            "one-hot."
        )
    if targets.ndim != 1 or targets.shape[0] != batch_size:
        hint = ""
        if targets.ndim == 2 and targets.shape[0] == batch_size:
            hint = (
                " One-hot labels are not supported: pass `targets.argmax(1)`."
                if targets.shape[1] > 1
                else " Squeeze the trailing dimension: `targets.squeeze(1)`."
            )
        raise ValueError(
            f"{what}: targets must be integer class ids of shape [B] = [{batch_size}], got {tuple(targets.shape)}.{hint}"
        )
    if num_classes is not None and targets.numel():
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{what}: target class ids must lie in [0, {num_classes}) for {num_classes} logits, found values in "
                f"[{lo}, {hi}]. Check the label encoding or the model's number of outputs."
            )


def check_logits(logits: Tensor, *, what: str, batch_size: int | None = None, values: bool = True) -> None:
    """Shape and dtype of a ``[B, K]`` logits tensor, then (``values=True``, one host sync) that every value is
    finite and that the rows are not probabilities. ``values=False`` checks shape and dtype only (no sync), for
    loops that check the values once at the end."""
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"{what}: the model output must be a logits tensor [B, K], got {type(logits).__name__}. If your forward "
            "returns a tuple or dict, pass `logits_module=` naming the submodule that returns the logits."
        )
    if logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError(
            f"{what}: expected logits of shape [B, K] (floating point), got shape {tuple(logits.shape)} and dtype "
            f"{logits.dtype}. Scores need per-class logits for a classification model; pass `logits_module=` naming "
            "the submodule that returns them."
        )
    if logits.shape[1] < 2:
        raise ValueError(
            f"{what}: expected logits of shape [B, K] with K >= 2 classes, got {tuple(logits.shape)}. A single output "
            "column (binary classification with a sigmoid) has no class distribution to score: pass two-class logits, "
            "e.g. `torch.cat([torch.zeros_like(z), z], dim=1)` for one logit z per example."
        )
    if batch_size is not None and logits.shape[0] != batch_size:
        raise ValueError(f"{what}: the logits have {logits.shape[0]} rows for a batch of {batch_size} examples.")
    if logits.numel() == 0 or not values:
        return
    # one host sync for both checks: all finite? do the rows look like probabilities rather than logits?
    rows = logits.detach()
    prob_like = (rows.min() >= 0) & (rows.max() <= 1) & ((rows.sum(dim=1) - 1).abs() <= 1e-3).all()
    finite, probabilities = torch.stack([torch.isfinite(rows).all(), prob_like]).tolist()
    if not finite:
        bad = int((~torch.isfinite(rows)).any(dim=1).sum())
        raise FloatingPointError(
            f"{what}: {bad} example(s) have NaN/inf logits; the model diverged or the inputs hold NaN. Lower the "
            "learning rate, check the data, or score an earlier epoch."
        )
    if probabilities:
        warnings.warn(
            f"{what}: the model outputs look like probabilities (every row is non-negative and sums to 1), not "
            "logits. The scores apply softmax themselves, so softmax outputs give wrong scores (a double softmax). "
            "Return the logits, the input of softmax (log_softmax outputs are fine too).",
            UserWarning,
            stacklevel=3,
        )


def check_logits_targets(logits: Tensor, targets: Tensor, *, what: str) -> None:
    check_logits(logits, what=what)
    check_targets(targets, logits.shape[0], logits.shape[1], what=what)
