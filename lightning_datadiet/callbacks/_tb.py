"""TensorBoard histograms that account for every example, with what they show stated in the description."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torch.utils.tensorboard.summary import histogram

__all__ = ["log_full_histogram", "inf_plot_value", "tensorboard_writers"]


def tensorboard_writers(trainer: pl.Trainer) -> list[Any]:
    """The ``SummaryWriter`` of every TensorBoard logger of the trainer."""
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def inf_plot_value(scores: Tensor) -> float:
    """Where a histogram draws ``+inf`` scores: one past the largest finite score (rounded down), 0 if none."""
    finite = scores[torch.isfinite(scores)]
    return float(torch.floor(finite.max()) + 1) if finite.numel() else 0.0


def _add_histogram(writer: Any, tag: str, values: Tensor, step: int, description: str) -> None:
    bins = getattr(writer, "default_bins", None) or "auto"  # what SummaryWriter.add_histogram uses by default
    summary = histogram(tag, values.double().numpy(), bins=bins)
    summary.value[0].metadata.summary_description = description
    get = getattr(writer, "_get_file_writer", None)
    if get is None:  # another SummaryWriter flavour: no description, same values
        writer.add_histogram(tag, values, global_step=step)
        return
    get().add_summary(summary, step)


def log_full_histogram(trainer: pl.Trainer, method: str, scores: Tensor, step: int, *, inf_name: str = "") -> None:
    """Log ``scores`` as the histogram ``datadiet/<method>`` counting all N examples.

    ``+inf`` scores (e.g. forgetting's never-learned examples) are drawn at :func:`inf_plot_value`, and their number
    is also the scalar ``datadiet/<method>_infinite_count``; ``datadiet/<method>_infinite_plotted_at`` holds where they
    are drawn. NaN scores (examples never presented) cannot be placed: they are left out of the histogram and counted
    in ``datadiet/<method>_nan_count``. The histogram's description says all of this with the numbers.
    """
    writers = tensorboard_writers(trainer)
    if not writers:
        return
    scores = scores.detach().float().cpu()
    n = scores.numel()
    pos_inf = torch.isposinf(scores)
    nan = torch.isnan(scores)
    shown = scores[~nan].clone()
    at = inf_plot_value(scores)
    shown[torch.isposinf(shown)] = at
    shown = shown[torch.isfinite(shown)]  # -inf is not produced by any callback; left out if present
    k_inf, k_nan = int(pos_inf.sum()), int(nan.sum())
    # TensorBoard keeps the description of a tag's first event only: it states the rule, the scalars the numbers.
    parts = [f"{method} scores of all {n} training examples, one histogram per number of completed epochs."]
    if inf_name:
        parts.append(
            f"{inf_name.capitalize()} examples (score +inf) are drawn at one past the largest finite score of that "
            f"step (scalar datadiet/{method}_infinite_plotted_at); their number is datadiet/{method}_infinite_count."
        )
    else:
        parts.append(f"Examples never presented (NaN) cannot be drawn: their number is datadiet/{method}_nan_count.")
    description = " ".join(parts)
    for writer in writers:
        if shown.numel():
            _add_histogram(writer, f"datadiet/{method}", shown, step, description)
        if k_inf:
            writer.add_scalar(f"datadiet/{method}_infinite_count", k_inf, global_step=step)
            writer.add_scalar(f"datadiet/{method}_infinite_plotted_at", at, global_step=step)
        if k_nan or not inf_name:
            writer.add_scalar(f"datadiet/{method}_nan_count", k_nan, global_step=step)
        writer.flush()
