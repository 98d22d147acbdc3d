"""Input checks shared by the score functions: every refusal names the problem and the fix."""

from __future__ import annotations

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
        raise ValueError(
            f"{what}: targets must have shape [B] = [{batch_size}], got {tuple(targets.shape)}."
        )
    if num_classes is not None and targets.numel():
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{what}: target class ids must lie in [0, {num_classes}) for {num_classes} logits, found values in "
                f"[{lo}, {hi}]. Check the label encoding or the model's number of outputs."
            )


def check_logits(logits: Tensor, *, what: str, batch_size: int | None = None) -> None:
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
    if batch_size is not None and logits.shape[0] != batch_size:
        raise ValueError(f"{what}: the logits have {logits.shape[0]} rows for a batch of {batch_size} examples.")
    if not bool(torch.isfinite(logits).all()):
        bad = int((~torch.isfinite(logits)).any(dim=1).sum())
        raise FloatingPointError(
            f"{what}: {bad} example(s) have NaN/inf logits; the model diverged or the inputs hold NaN. Lower the "
            "learning rate, check the data, or score an earlier epoch."
        )


def check_logits_targets(logits: Tensor, targets: Tensor, *, what: str) -> None:
    check_logits(logits, what=what)
    check_targets(targets, logits.shape[0], logits.shape[1], what=what)
