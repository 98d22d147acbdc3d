"""Sliding-window sweep: test accuracy as a fixed-size window of kept ranks slides from low to high scores.

The paper keeps ranks ``[offset, offset + size)`` of the ascending score order and finds that the best window
is not the top one: dropping the very highest-EL2N examples helps, and helps more under label noise. This module
only chooses the windows, calls a user-supplied training function and collects the results; training is the
user's (e.g. a ``PrunedDataModule`` and a ``Trainer``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from lightning_datadiet._utils import fraction_count
from lightning_datadiet.selection import keep_count, window

__all__ = ["window_offsets", "sliding_window_sweep", "plot_sliding_window"]


def window_offsets(n: int, size: int, num_offsets: int = 10) -> list[int]:
    """``num_offsets`` evenly spaced window starts from 0 (the lowest scores) to ``n - size`` (the highest).

    Start ``i`` is ``i / (num_offsets - 1)`` of ``n - size``, rounded half up as every fraction of a count in the
    package (:func:`~lightning_datadiet._utils.fraction_count`).

    Args:
        n: number of examples.
        size: window size (count).
        num_offsets: number of windows (at least 1; 1 gives only the top window).

    Returns:
        Sorted distinct offsets, the last one always ``n - size``.
    """
    if not 1 <= size <= n:
        raise ValueError(f"`size` must be in [1, {n}], got {size}.")
    if num_offsets < 1:
        raise ValueError(f"`num_offsets` must be at least 1, got {num_offsets}.")
    last = n - size
    if num_offsets == 1:
        return [last]
    return sorted({fraction_count(last, Fraction(i, num_offsets - 1)) for i in range(num_offsets)})


def sliding_window_sweep(
    scores: Tensor | Mapping[Any, Tensor],
    window_size: int | float,
    train_and_evaluate: Callable[[Tensor, Any], float],
    *,
    offsets: Sequence[int] | None = None,
    num_offsets: int = 10,
) -> dict[str, Any]:
    """Accuracy of training on each window of ranks ``[offset, offset + size)``, optionally per noise level.

    Windows use ``lightning_datadiet.selection.window`` (ascending ``(score, index)`` order; ``+inf`` highest).

    Args:
        scores: ``[N]`` scores, or a mapping ``noise_level -> [N]`` scores computed on the training set with that
            label noise (the paper's figure: one curve per noise level).
        window_size: kept examples per window: an int count or a float fraction of ``N``.
        train_and_evaluate: ``f(kept_indices, noise_level) -> test accuracy``; ``kept_indices`` is a sorted
            ``LongTensor`` and ``noise_level`` is the mapping key (``None`` for a single score vector).
        offsets: window starts (ranks); default :func:`window_offsets` with ``num_offsets`` points.
        num_offsets: number of evenly spaced offsets when ``offsets`` is not given.

    Returns:
        ``{"window_size": int, "offsets": list[int], "accuracy": {level: list[float]},
        "best_offset": {level: int}, "best_accuracy": {level: float}}``; with a single score vector the level
        key is ``None``. Ties in accuracy go to the lower offset.
    """
    per_level = dict(scores) if isinstance(scores, Mapping) else {None: scores}
    sizes = {torch.as_tensor(s).numel() for s in per_level.values()}
    if len(sizes) != 1:
        raise ValueError(f"All score vectors must have the same length, got {sorted(sizes)}.")
    n = sizes.pop()
    size = window_size if isinstance(window_size, int) else keep_count(n, window_size)
    offsets = window_offsets(n, size, num_offsets) if offsets is None else [int(o) for o in offsets]
    accuracy: dict[Any, list[float]] = {}
    for level, level_scores in per_level.items():
        accuracy[level] = [
            float(train_and_evaluate(window(torch.as_tensor(level_scores), size, offset), level))
            for offset in offsets
        ]
    best = {
        level: max(range(len(offsets)), key=lambda i, acc=acc: (acc[i], -i))
        for level, acc in accuracy.items()
    }
    return {
        "window_size": size,
        "offsets": offsets,
        "accuracy": accuracy,
        "best_offset": {level: offsets[i] for level, i in best.items()},
        "best_accuracy": {level: accuracy[level][i] for level, i in best.items()},
    }


def plot_sliding_window(
    result: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    num_examples: int | None = None,
    title: str | None = None,
) -> Path:
    """Plot a :func:`sliding_window_sweep` result: accuracy against window offset, one line per noise level.

    Args:
        result: the sweep result.
        path: output image; the suffix picks the format.
        num_examples: ``N``; when given the x axis is the offset as a fraction of ``N``.
        title: figure title.

    Returns:
        The path written.
    """
    fig = Figure(figsize=(5.5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    scale = 1.0 / num_examples if num_examples else 1.0
    x = [o * scale for o in result["offsets"]]
    for level, acc in result["accuracy"].items():
        label = "scores" if level is None else f"noise {level}"
        (line,) = ax.plot(x, acc, marker="o", markersize=3, label=label)
        best = result["best_offset"][level] * scale
        ax.plot([best], [result["best_accuracy"][level]], marker="*", markersize=10, color=line.get_color())
    ax.set_xlabel("window offset (fraction of N)" if num_examples else "window offset (rank)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
