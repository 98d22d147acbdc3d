"""How well a score finds corrupted labels: precision and recall of its highest scores.

The label corruption itself (:func:`corrupt_labels`, :func:`label_noise`, :class:`NoisyLabelDataset`,
:class:`NoisyLabelDataModule`) lives in :mod:`lightning_datadiet.data.noise` and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_datadiet._utils import fraction_count
from lightning_datadiet.data.noise import (
    LabelNoise,
    NoisyLabelDataModule,
    NoisyLabelDataset,
    corrupt_labels,
    label_noise,
)

__all__ = [
    "LabelNoise",
    "label_noise",
    "corrupt_labels",
    "NoisyLabelDataset",
    "NoisyLabelDataModule",
    "noise_detection",
    "precision_recall_curve",
]


def _ranking(
    scores: Tensor | Sequence[float], corrupted_mask: Tensor | Sequence[bool]
) -> tuple[Tensor, Tensor]:
    """Corrupted flags in order of decreasing score (ties: lower index first; +inf first; NaN rejected)."""
    s = torch.as_tensor(scores).detach().to("cpu", torch.float64).reshape(-1)
    m = torch.as_tensor(corrupted_mask).detach().to("cpu").reshape(-1).to(torch.bool)
    if s.numel() != m.numel():
        raise ValueError(f"`scores` has {s.numel()} entries but `corrupted_mask` has {m.numel()}.")
    if torch.isnan(s).any():
        raise ValueError("`scores` contains NaN.")
    order = torch.sort(s, descending=True, stable=True).indices
    return m[order], m


def noise_detection(
    scores: Tensor | Sequence[float], corrupted_mask: Tensor | Sequence[bool], top: float | int = 0.1
) -> dict[str, float | int]:
    """Precision and recall of the highest-scoring examples as a detector of corrupted labels.

    The ``k`` highest scores are flagged, where ``k = top x N`` (rounded half up) for a float ``top`` in
    ``[0, 1]`` and ``k = top`` for an int. Ties are broken by index (the lower index ranks higher), and ``+inf``
    ranks highest.

    Args:
        scores: ``[N]`` scores (higher = more suspicious).
        corrupted_mask: ``[N]`` bool, the truly corrupted examples.
        top: fraction (float) or count (int) of examples flagged.

    Returns:
        ``{"precision", "recall", "k", "true_positives", "num_corrupted", "base_rate"}``: precision = TP / k
        (NaN when k = 0), recall = TP / num_corrupted (NaN when nothing is corrupted), and base_rate =
        num_corrupted / N, the expected precision of a random pick.

    Example:
        >>> noise_detection(torch.tensor([0.9, 0.1, 0.8, 0.2]), torch.tensor([True, False, False, True]), top=2)["precision"]
        0.5
    """
    flags, mask = _ranking(scores, corrupted_mask)
    n = flags.numel()
    if isinstance(top, bool) or not isinstance(top, (int, float)):
        raise TypeError(f"`top` must be a float fraction or an int count, got {top!r}.")
    if isinstance(top, int):
        if not 0 <= top <= n:
            raise ValueError(f"`top` as a count must be in [0, {n}], got {top}.")
        k = top
    else:
        if not 0.0 <= top <= 1.0:
            raise ValueError(f"`top` as a fraction must be in [0, 1], got {top}.")
        k = fraction_count(n, top)
    tp = int(flags[:k].sum())
    num_corrupted = int(mask.sum())
    return {
        "precision": tp / k if k else float("nan"),
        "recall": tp / num_corrupted if num_corrupted else float("nan"),
        "k": k,
        "true_positives": tp,
        "num_corrupted": num_corrupted,
        "base_rate": num_corrupted / n if n else float("nan"),
    }


def precision_recall_curve(
    scores: Tensor | Sequence[float], corrupted_mask: Tensor | Sequence[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    """Precision and recall of the top-``k`` scores for every ``k = 1..N`` (same ranking as :func:`noise_detection`).

    Args:
        scores: ``[N]`` scores.
        corrupted_mask: ``[N]`` bool.

    Returns:
        ``(precision, recall, fractions)``, each ``float64[N]``; entry ``k - 1`` is for the top ``k`` examples and
        ``fractions = k / N``. Recall is NaN everywhere when nothing is corrupted.
    """
    flags, mask = _ranking(scores, corrupted_mask)
    n = flags.numel()
    k = torch.arange(1, n + 1, dtype=torch.float64)
    tp = torch.cumsum(flags.to(torch.float64), 0)  # [N]
    num_corrupted = float(mask.sum())
    recall = tp / num_corrupted if num_corrupted else torch.full_like(tp, float("nan"))
    return tp / k, recall, k / n
