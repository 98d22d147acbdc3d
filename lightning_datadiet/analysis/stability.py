"""Score stability: Spearman rank correlation between score vectors (epochs, runs, methods).

The paper compares scores computed early and late in training, and a single run's scores with the mean over
several runs (a single run correlates only about 0.75 with the 10-run mean on CIFAR-10).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor
from torchmetrics.functional import spearman_corrcoef

from lightning_datadiet.store import load_scores

__all__ = ["rank_correlation", "StabilityTable", "stability_report", "single_vs_mean", "plot_heatmap"]

# torchmetrics sums the ordinal ranks of a tie group in int32: with N > 65535 a large tie group can overflow.
_TORCHMETRICS_SAFE_N = 65535
_TORCHMETRICS_EPS = 1e-6  # added by torchmetrics to the denominator of its Spearman correlation


def _finite_order_preserving(x: Tensor) -> Tensor:
    """Map ``+inf`` to ``max finite + 1`` and ``-inf`` to ``min finite - 1`` (ranks unchanged)."""
    finite = torch.isfinite(x)
    if finite.all():
        return x
    hi = float(x[finite].max()) if finite.any() else 0.0
    lo = float(x[finite].min()) if finite.any() else 0.0
    x = x.clone()
    x[x == math.inf] = hi + 1.0
    x[x == -math.inf] = lo - 1.0
    return x


def _average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..N in float64, ties given the mean of their ranks (the torchmetrics convention)."""
    n = x.numel()
    order = torch.argsort(x, stable=True)
    ordinal = torch.empty(n, dtype=torch.float64)
    ordinal[order] = torch.arange(1, n + 1, dtype=torch.float64)
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.numel(), dtype=torch.float64).index_add_(0, inverse, ordinal)
    return (sums / counts)[inverse]


def _rank_std(x: Tensor) -> float:
    """Population standard deviation of the average ranks of ``x``: ``((n^3 - n) - sum(t^3 - t)) / (12 n)``."""
    n = x.numel()
    t = torch.unique(x, return_counts=True)[1].to(torch.float64)
    return math.sqrt(((n**3 - n) - float((t**3 - t).sum())) / (12 * n))


def _as_vector(x: Tensor | Sequence[float], name: str) -> Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64).reshape(-1)
    if torch.isnan(t).any():
        raise ValueError(f"`{name}` contains NaN: Spearman correlation is undefined.")
    return t


def rank_correlation(a: Tensor | Sequence[float], b: Tensor | Sequence[float]) -> float:
    """Spearman rank correlation of two score vectors, with ``torchmetrics.functional.spearman_corrcoef``.

    Both vectors are cast to float64. Ties get the average of their ranks (as torchmetrics does). ``+inf``
    scores (never-learned examples under forgetting) are mapped to ``max finite + 1`` and ``-inf`` to
    ``min finite - 1`` before ranking, so infinite scores tie among themselves and rank above (below) every
    finite score. For N > 65535, where torchmetrics' int32 rank sums could overflow on large tie groups, the same
    formula (Pearson correlation of average ranks) is evaluated in float64 here. torchmetrics adds ``1e-6`` to
    the product of the rank standard deviations; that bias is undone with the exact (closed-form) rank standard
    deviations. torchmetrics computes ranks in float32, so the result agrees with an exact float64 computation
    to about 1e-7.

    Args:
        a: ``[N]`` scores.
        b: ``[N]`` scores of the same examples, in the same order.

    Returns:
        The correlation in ``[-1, 1]``; NaN when either vector is constant (the correlation is undefined).

    Raises:
        ValueError: for different lengths, fewer than 2 entries, or NaN scores.

    Example:
        >>> round(rank_correlation(torch.tensor([1.0, 2, 3, float("inf")]), torch.tensor([0.1, 0.3, 0.2, 0.9])), 6)
        0.8
    """
    x, y = _as_vector(a, "a"), _as_vector(b, "b")
    if x.numel() != y.numel():
        raise ValueError(f"Score vectors differ in length: {x.numel()} vs {y.numel()}.")
    if x.numel() < 2:
        raise ValueError("Spearman correlation needs at least 2 scores.")
    x, y = _finite_order_preserving(x), _finite_order_preserving(y)
    if bool((x == x[0]).all()) or bool((y == y[0]).all()):
        return float("nan")
    if x.numel() <= _TORCHMETRICS_SAFE_N:
        r = float(spearman_corrcoef(x, y))
        # torchmetrics divides by (std_x * std_y + 1e-6); undo that bias with the exact rank standard deviations.
        scale = _rank_std(x) * _rank_std(y)
        r *= (scale + _TORCHMETRICS_EPS) / scale
    else:
        rx, ry = _average_ranks(x), _average_ranks(y)
        rx, ry = rx - rx.mean(), ry - ry.mean()
        r = float((rx * ry).sum() / torch.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return max(-1.0, min(1.0, r))


@dataclass
class StabilityTable:
    """A symmetric matrix of pairwise Spearman correlations between named score vectors.

    Attributes:
        names: ``M`` names, in row/column order.
        matrix: ``float64[M, M]``, ones on the diagonal (NaN for a constant vector).
    """

    names: list[str]
    matrix: Tensor

    def __getitem__(self, key: tuple[str, str]) -> float:
        """The correlation between two named vectors: ``table["el2n@20", "el2n@200"]``."""
        i, j = (self.names.index(k) for k in key)
        return float(self.matrix[i, j])

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the matrix with a header row and a name column; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["", *self.names])
            for name, row in zip(self.names, self.matrix.tolist()):
                writer.writerow([name, *(f"{v:.6f}" for v in row)])
        return path

    def to_markdown(self, digits: int = 3) -> str:
        """The matrix as a Markdown table."""
        lines = ["| | " + " | ".join(self.names) + " |", "|---" * (len(self.names) + 1) + "|"]
        for name, row in zip(self.names, self.matrix.tolist()):
            lines.append(f"| {name} | " + " | ".join(f"{v:.{digits}f}" for v in row) + " |")
        return "\n".join(lines)


def _load(entry: Any) -> tuple[Tensor, str | None]:
    """A score vector and a default name from a tensor, a ScoreFile-like object or a path."""
    if isinstance(entry, (str, os.PathLike)):
        loaded = load_scores(entry)
        name = _score_file_name(loaded) or Path(entry).stem
        return loaded.scores, name
    if hasattr(entry, "scores") and not isinstance(entry, Tensor):
        return entry.scores, _score_file_name(entry)
    return torch.as_tensor(entry), None


def _score_file_name(score_file: Any) -> str | None:
    method = getattr(score_file, "method", None)
    if method is None:
        return None
    name = str(method)
    epoch, seed = getattr(score_file, "epoch", None), getattr(score_file, "seed", None)
    if epoch is not None:
        name += f"@{epoch}"
    if seed is not None:
        name += f" s{seed}"
    return name


def stability_report(
    scores: Mapping[str, Any] | Sequence[Any], *, labels: Sequence[str] | None = None
) -> StabilityTable:
    """Pairwise Spearman correlations between several score vectors of the same examples.

    Args:
        scores: a mapping ``name -> scores`` or a sequence of entries; each entry is a ``[N]`` tensor, an object
            with a ``.scores`` tensor (a ``ScoreFile``), or a path read with ``lightning_datadiet.store.load_scores``.
            Unnamed entries are named ``method@epoch sSEED`` from their score file, else ``scores[i]``;
            repeated names get a ``#i`` suffix.
        labels: names overriding the defaults, one per entry.

    Returns:
        A :class:`StabilityTable`, symmetric with ones on the diagonal.

    Example:
        >>> t = stability_report({"early": torch.tensor([1.0, 2, 3]), "late": torch.tensor([1.0, 3, 2])})
        >>> round(t["early", "late"], 6)
        0.5
    """
    items = list(scores.items()) if isinstance(scores, Mapping) else [(None, e) for e in scores]
    if labels is not None and len(labels) != len(items):
        raise ValueError(f"Got {len(labels)} labels for {len(items)} score vectors.")
    vectors, names = [], []
    for i, (key, entry) in enumerate(items):
        vector, default = _load(entry)
        vectors.append(vector)
        name = labels[i] if labels is not None else key if key is not None else default or f"scores[{i}]"
        names.append(str(name) if str(name) not in names else f"{name}#{i}")
    m = len(vectors)
    matrix = torch.eye(m, dtype=torch.float64)
    for i in range(m):
        if bool((vectors[i] == vectors[i].reshape(-1)[0]).all()):
            matrix[i, i] = float("nan")
        for j in range(i + 1, m):
            matrix[i, j] = matrix[j, i] = rank_correlation(vectors[i], vectors[j])
    return StabilityTable(names=names, matrix=matrix)


def single_vs_mean(
    runs: Sequence[Tensor], k: int | None = None, *, include_self: bool = False
) -> dict[str, Any]:
    """Spearman correlation between each single run's scores and a mean over ``k`` runs.

    For run ``i`` the reference is the mean of the ``k`` runs ``i+1, i+2, ...`` (cyclically, excluding ``i``), or
    with ``include_self=True`` the mean of run ``i`` and the ``k - 1`` runs after it.

    Args:
        runs: ``R`` score vectors ``[N]`` of the same examples from independent runs.
        k: runs in the mean; default all other runs (``R - 1``), or all runs (``R``) with ``include_self``.
        include_self: whether run ``i`` is part of its own reference mean.

    Returns:
        ``{"per_run": float64[R], "mean": float, "std": float, "k": int}``.
    """
    stack = torch.stack(
        [torch.as_tensor(r).detach().to("cpu", torch.float64).reshape(-1) for r in runs]
    )  # [R, N]
    r = stack.shape[0]
    if r < 2:
        raise ValueError("`single_vs_mean` needs at least 2 runs.")
    k = (r if include_self else r - 1) if k is None else int(k)
    if not 1 <= k <= (r if include_self else r - 1):
        raise ValueError(f"`k` must be in [1, {r if include_self else r - 1}] for {r} runs, got {k}.")
    start = 0 if include_self else 1
    per_run = torch.empty(r, dtype=torch.float64)
    for i in range(r):
        members = [(i + start + j) % r for j in range(k)]
        per_run[i] = rank_correlation(stack[i], stack[members].mean(0))
    return {
        "per_run": per_run,
        "mean": float(per_run.mean()),
        "std": float(per_run.std()) if r > 1 else 0.0,
        "k": k,
    }


def plot_heatmap(
    table: StabilityTable, path: str | os.PathLike, *, title: str | None = None, annotate: bool | None = None
) -> Path:
    """Draw ``table`` as a heatmap PNG/PDF (matplotlib, Agg canvas; no global pyplot state).

    Args:
        table: a :class:`StabilityTable`.
        path: output file; its suffix picks the format.
        title: figure title.
        annotate: write the value in each cell; default when there are at most 12 names.

    Returns:
        The path written.
    """
    m = len(table.names)
    annotate = m <= 12 if annotate is None else annotate
    size = max(3.5, 0.6 * m + 2.0)
    fig = Figure(figsize=(size + 1.0, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    values = table.matrix.numpy()
    finite = values[~torch.isnan(table.matrix).numpy()]
    vmin = min(0.0, float(finite.min())) if finite.size else 0.0
    image = ax.imshow(values, vmin=vmin, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(m), table.names, rotation=45, ha="right")
    ax.set_yticks(range(m), table.names)
    if annotate:
        for i in range(m):
            for j in range(m):
                v = values[i, j]
                ax.text(
                    j,
                    i,
                    "nan" if v != v else f"{v:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if v == v and v > vmin + 0.6 * (1.0 - vmin) else "white",
                )
    fig.colorbar(image, ax=ax, label="Spearman")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
