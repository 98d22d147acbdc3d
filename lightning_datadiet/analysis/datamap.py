"""Data maps (Swayamdipta et al. 2020): confidence against variability of every training example, coloured by
correctness, with corrupted (label-noise) examples marked. Pure functions of score tensors; matplotlib's Agg canvas,
no global pyplot state."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from lightning_datadiet.store import ScoreFile, load_scores

__all__ = ["data_map_figure", "plot_data_map", "data_map_from_files"]


def _vector(values: Any, name: str, n: int | None) -> Tensor:
    t = torch.as_tensor(values).detach().reshape(-1).double().cpu()
    if n is not None and t.numel() != n:
        raise ValueError(f"plot_data_map: `{name}` has {t.numel()} values but `confidence` has {n}.")
    return t


def data_map_figure(
    confidence: Any,
    variability: Any,
    correctness: Any = None,
    corrupted: Any = None,
    *,
    title: str | None = None,
    max_points: int = 20000,
) -> Any:
    """A matplotlib ``Figure`` of the data map: x = variability, y = confidence (the paper's axes), colour =
    correctness (fraction of presentations classified correctly), corrupted examples circled in red.

    Args:
        confidence, variability: ``[N]`` per example (e.g. ``TrainingDynamicsCallback.scores`` entries).
        correctness: ``[N]`` in ``[0, 1]``; ``None`` draws one colour.
        corrupted: ``[N]`` bool mask, or a sequence of corrupted indices (e.g. ``LabelNoise.corrupted``).
        title: figure title.
        max_points: at most this many points are drawn (an evenly spaced subsample by index, stated in the title);
            corrupted examples are always drawn.

    Examples with NaN confidence or variability (never presented) are left out and counted in the legend.
    """
    conf = _vector(confidence, "confidence", None)
    n = conf.numel()
    var = _vector(variability, "variability", n)
    corr = _vector(correctness, "correctness", n) if correctness is not None else None
    mask = torch.zeros(n, dtype=torch.bool)
    if corrupted is not None:
        c = torch.as_tensor(corrupted).reshape(-1)
        if c.dtype == torch.bool:
            if c.numel() != n:
                raise ValueError(f"plot_data_map: the `corrupted` mask has {c.numel()} entries, expected {n}.")
            mask = c.cpu()
        elif c.numel():
            mask[c.long().cpu()] = True
    finite = torch.isfinite(conf) & torch.isfinite(var)
    shown = finite.clone()
    step = 1
    if int(finite.sum()) > max_points:
        step = -(-int(finite.sum()) // max_points)
        keep = torch.zeros(n, dtype=torch.bool)
        keep[finite.nonzero().flatten()[::step]] = True
        shown = keep | (mask & finite)
    fig = Figure(figsize=(6.0, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x, y = var[shown].numpy(), conf[shown].numpy()
    if corr is not None:
        points = ax.scatter(x, y, c=corr[shown].numpy(), cmap="viridis", vmin=0.0, vmax=1.0, s=6, alpha=0.7,
                            linewidths=0)  # fmt: skip
        fig.colorbar(points, ax=ax, label="correctness (fraction of presentations correct)")
    else:
        ax.scatter(x, y, s=6, alpha=0.7, linewidths=0, label="examples")
    bad = shown & mask
    if bool(bad.any()):
        ax.scatter(var[bad].numpy(), conf[bad].numpy(), s=22, facecolors="none", edgecolors="red", linewidths=0.8,
                   label=f"corrupted label ({int((mask & finite).sum())})")  # fmt: skip
    ax.set_xlabel("variability (std of p[y] over presentations)")
    ax.set_ylabel("confidence (mean p[y] over presentations)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(left=-0.01)
    missing = n - int(finite.sum())
    notes = [f"{n} examples"]
    if step > 1:
        notes.append(f"every {step}th drawn")
    if missing:
        notes.append(f"{missing} never presented, not drawn")
    ax.set_title((title + "\n" if title else "") + "data map: " + ", ".join(notes), fontsize=9)
    if bool(bad.any()):
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_data_map(
    confidence: Any,
    variability: Any,
    correctness: Any = None,
    corrupted: Any = None,
    *,
    path: str | os.PathLike,
    title: str | None = None,
    max_points: int = 20000,
) -> Path:
    """Write the data map of :func:`data_map_figure` to ``path`` (the suffix picks the format); returns the path."""
    fig = data_map_figure(confidence, variability, correctness, corrupted, title=title, max_points=max_points)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out


def data_map_from_files(
    files: Any, path: str | os.PathLike, *, corrupted: Any = None, title: str | None = None
) -> Path | None:
    """The data map from score files (or loaded ``ScoreFile`` objects) written by ``TrainingDynamicsCallback``.

    Picks the files whose ``method`` is ``confidence`` and ``variability`` (and ``correctness`` for the colour),
    undoes the storage orientation (files store confidence and correctness negated so that higher = harder) and writes
    the PNG. Returns ``None`` when confidence or variability is missing (nothing to draw).
    """
    loaded = [f if isinstance(f, ScoreFile) else load_scores(f) for f in files]
    by_method: dict[str, Tensor] = {}
    for f in loaded:
        if f.method in ("confidence", "variability", "correctness") and f.method not in by_method:
            sign = -1.0 if f.extra.get("stored") == "negated" else 1.0
            by_method[f.method] = sign * f.scores
    if not {"confidence", "variability"} <= set(by_method):
        return None
    return plot_data_map(by_method["confidence"], by_method["variability"], by_method.get("correctness"), corrupted,
                         path=path, title=title)  # fmt: skip
