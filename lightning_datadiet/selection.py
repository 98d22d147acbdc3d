"""Selection rules: which training examples to keep, given one score per example.

Every rule is a pure function on tensors that returns the kept indices as a sorted ``LongTensor``.

**The ranking.** All score-based rules share one order: the *ascending rank order*, i.e. examples sorted by
``(score, index)`` ascending (see :func:`rank_order`). Rank 0 is the lowest score; among equal scores the lower
index comes first. ``+inf`` sorts above every finite score (never-learned examples under forgetting are the
hardest), ``-inf`` below, ``-0.0`` equals ``0.0``, and NaN is refused. Consequences, exactly:

- :func:`highest` keeps the top ``k`` ranks, so among tied scores it keeps the **larger** indices;
- :func:`lowest` keeps the bottom ``k`` ranks, so among tied scores it keeps the **smaller** indices;
- :func:`window` keeps ranks ``[offset, offset + size)``; ``highest`` is ``window(size=k, offset=N - k)`` and
  ``lowest`` is ``window(size=k, offset=0)``.

**Counts and fractions.** A ``k`` (``size``, ``offset``) given as an ``int`` is a count; a ``float`` is a fraction of
``N`` turned into a count by :func:`~lightning_datadiet._utils.fraction_count` (round half up, computed exactly on
the decimal value written), the one rounding of the package.

**Class balance.** With ``class_balanced=True`` the budget ``k`` is split into per-class quotas proportional to class
frequency by :func:`class_quotas` (largest-remainder rounding; they sum exactly to ``k``), and the rule is applied
within each class (ranks are then ranks within the class).

All rules run in O(N log N) without Python loops over examples (loops over classes or strata only).
"""

from __future__ import annotations

from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from lightning_datadiet._ranking import (
    _as_sorted,
    _group_order,
    _group_rank_order,
    _sort_key,
    _take_per_group,
    _take_ranges,
)
from lightning_datadiet._utils import fraction_count
from lightning_datadiet.data.budget import retrain_epochs, same_steps_epochs  # its home is data/; kept here

__all__ = [
    "SELECTION_RULES",
    "check_scores",
    "rank_order",
    "keep_count",
    "class_quotas",
    "highest",
    "lowest",
    "random",
    "random_subset",
    "window",
    "coverage",
    "select",
    "same_steps_epochs",
    "retrain_epochs",
]

SELECTION_RULES: tuple[str, ...] = ("highest", "lowest", "random", "window", "coverage")
"""Names accepted by :func:`select` and by ``PrunedDataModule(selection=...)``."""

Count = Union[int, float]


# ----------------------------------------------------------------------------------------------- input checks


def check_scores(scores: Any, *, allow_infinite: bool = True, name: str = "scores") -> Tensor:
    """Validate one score per example and return it as a 1-D CPU tensor (floating or integer dtype).

    Raises:
        TypeError: not a 1-D real tensor (or something ``torch.as_tensor`` turns into one).
        ValueError: NaN scores; ``+/-inf`` scores when ``allow_infinite=False``; an empty vector.
    """
    if not isinstance(scores, Tensor):
        try:
            scores = torch.as_tensor(scores)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"`{name}` must be a 1-D tensor of one score per example, got {type(scores).__name__}.") from err
    scores = scores.detach().cpu()
    if scores.ndim != 1 or scores.dtype == torch.bool or scores.is_complex():
        raise TypeError(
            f"`{name}` must be a 1-D real tensor of one score per example, got shape {tuple(scores.shape)} and dtype "
            f"{scores.dtype}."
        )
    if scores.numel() == 0:
        raise ValueError(f"`{name}` is empty: there is nothing to select from.")
    if scores.is_floating_point():
        nan = torch.isnan(scores)
        if bool(nan.any()):
            first = nan.nonzero()[:5].flatten().tolist()
            raise ValueError(
                f"`{name}` holds {int(nan.sum())} NaN value(s) (first at indices {first}). NaN has no rank: recompute "
                "the scores (a diverged run gives NaN) or fill them explicitly, e.g. `torch.nan_to_num(scores, nan=...)`."
            )
        if not allow_infinite:
            inf = torch.isinf(scores)
            if bool(inf.any()):
                first = inf.nonzero()[:5].flatten().tolist()
                raise ValueError(
                    f"`{name}` holds {int(inf.sum())} infinite value(s) (first at indices {first}) but infinite scores "
                    "are not allowed here. Pass `allow_infinite=True` (forgetting gives +inf to never-learned "
                    "examples, which then rank as the hardest) or replace them with a finite value."
                )
    return scores


def _check_labels(labels: Any, n: int) -> Tensor:
    if labels is None:
        raise ValueError(
            "`class_balanced=True` needs the class label of every example: pass `labels=` (a LongTensor[N]; "
            "`lightning_datadiet.data.targets.dataset_targets(dataset)` reads them)."
        )
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"`labels` must be a 1-D integer tensor of class ids, got shape {tuple(labels.shape)} and dtype {labels.dtype}.")
    if labels.numel() != n:
        raise ValueError(f"`labels` has {labels.numel()} entries but there are {n} scores; they must describe the same examples.")
    if n and int(labels.min()) < 0:
        raise ValueError("`labels` must be non-negative class ids; remap them, e.g. with `torch.unique(labels, return_inverse=True)`.")
    return labels.long()


def _dense_labels(labels: Any, n: int) -> tuple[Tensor, Tensor]:
    """Checked labels remapped to dense ids ``0..C-1`` of the classes present, in ascending class-id order (so
    "lower class id first" tie-breaks are unchanged), and the original id of each dense class. Work and memory
    follow the number of classes present, never the largest id."""
    labels = _check_labels(labels, n)
    classes, dense = torch.unique(labels, sorted=True, return_inverse=True)
    return dense.long(), classes


def _scalar(value: Any) -> Any:
    """A plain Python number for numpy scalars and 0-d tensors (so ``np.int64(3)``, ``np.float64(0.5)`` and
    ``torch.tensor(0.5)`` mean what ``3`` and ``0.5`` mean); anything else is returned unchanged."""
    if isinstance(value, bool):
        return value
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.ndim != 0 or value.is_complex():
            return value
        return bool(value.item()) if value.dtype == torch.bool else value.item()
    if isinstance(value, np.generic) and not isinstance(value, np.complexfloating):
        if isinstance(value, np.bool_):
            return bool(value)
        return value.item()
    return value


def keep_count(n: int, keep_fraction: float) -> int:
    """Number of examples kept when keeping ``keep_fraction`` of ``n``.

    :func:`~lightning_datadiet._utils.fraction_count` (round half up, computed exactly on the decimal value of
    ``keep_fraction``, so ``keep_count(10, 0.35) == 4`` and ``keep_count(5, 0.5) == 3``), and at least 1.

    Raises:
        ValueError: ``keep_fraction`` outside ``(0, 1]`` or ``n < 1``.
    """
    keep_fraction = _scalar(keep_fraction)
    if isinstance(keep_fraction, bool) or not isinstance(keep_fraction, (int, float)):
        raise TypeError(f"`keep_fraction` must be a number in (0, 1], got {keep_fraction!r}.")
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(
            f"`keep_fraction` must lie in (0, 1], got {keep_fraction!r}: it is the fraction of the training set kept "
            "(0.5 keeps half). To keep an absolute number of examples pass an int count to the selection rule."
        )
    if n < 1:
        raise ValueError(f"Cannot select from {n} examples.")
    return max(1, min(n, fraction_count(n, keep_fraction)))


def _as_count(value: Count, n: int, *, name: str, allow_zero: bool) -> int:
    """An int is a count; a float is a fraction of ``n`` (round half up). Numpy scalars and 0-d tensors count
    as the Python number they hold (an integer dtype is a count, a floating dtype a fraction)."""
    value = _scalar(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be an int count or a float fraction of N, got {value!r}.")
    if isinstance(value, float):
        lo_ok = value >= 0.0 if allow_zero else value > 0.0
        if not (lo_ok and value <= 1.0):
            bound = "[0, 1]" if allow_zero else "(0, 1]"
            raise ValueError(f"`{name}`={value!r} as a float is a fraction of N and must lie in {bound}; pass an int for a count.")
        count = fraction_count(n, value)
        return count if allow_zero else max(1, count)
    lo = 0 if allow_zero else 1
    if not lo <= value <= n:
        raise ValueError(f"`{name}`={value} as an int is a count and must lie in [{lo}, {n}] for N = {n} examples.")
    return int(value)


# ------------------------------------------------------------------------------------------------ the ranking


def rank_order(scores: Tensor) -> Tensor:
    """Indices of ``scores`` in ascending rank order: sorted by ``(score, index)``.

    ``rank_order(s)[r]`` is the index of the example of rank ``r``. Ties are broken by index (the lower index
    gets the lower rank); ``+inf`` ranks above every finite score. NaN is refused.

    Example:
        >>> rank_order(torch.tensor([0.5, 0.1, 0.5, float("inf"), 0.1])).tolist()
        [1, 4, 0, 2, 3]
    """
    scores = check_scores(scores)
    return torch.sort(_sort_key(scores), stable=True).indices


def class_quotas(labels: Tensor, k: int, *, num_classes: int | None = None) -> Tensor:
    """Per-class quotas proportional to class frequency that sum exactly to ``k``.

    Class ``c`` with ``n_c`` of the ``N`` examples gets ``floor(k * n_c / N)``; the ``k - sum(floors)`` remaining
    slots go one each to the classes with the largest remainders ``k * n_c mod N`` (exact integer arithmetic; equal
    remainders are broken by the lower class id). A quota never exceeds its class size.

    Returns:
        ``LongTensor[num_classes]`` (``num_classes`` defaults to ``labels.max() + 1``).

    Example:
        >>> class_quotas(torch.tensor([0, 0, 0, 1, 1, 2]), 4).tolist()
        [2, 1, 1]
    """
    labels = _check_labels(labels, torch.as_tensor(labels).numel())
    n = labels.numel()
    k = _scalar(k)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise ValueError(f"`k` must be an int count in [0, {n}], got {k!r}.")
    largest = int(labels.max()) if n else -1
    if num_classes is None:
        num_classes = largest + 1
    elif largest >= num_classes:
        raise ValueError(f"`labels` holds class id {largest} but `num_classes` = {num_classes}.")
    classes, dense = torch.unique(labels, sorted=True, return_inverse=True)
    if num_classes > max(4 * n, 1 << 16):
        raise ValueError(
            f"class_quotas would return a tensor of {num_classes} entries (one per class id up to {num_classes - 1}) "
            f"for {n} labels. Remap the labels to dense ids first, e.g. `torch.unique(labels, return_inverse=True)[1]`; "
            "the selection rules with class_balanced=True do this themselves."
        )
    quotas = torch.zeros(num_classes, dtype=torch.long)
    if n:
        quotas[classes] = _dense_quotas(dense, k, classes.numel())
    return quotas


def _dense_quotas(dense: Tensor, k: int, num_classes: int) -> Tensor:
    """:func:`class_quotas` of dense class ids ``0..num_classes-1``."""
    n = dense.numel()
    counts = torch.bincount(dense, minlength=num_classes)
    numer = k * counts
    quotas, remainders = numer // n, numer % n
    missing = k - int(quotas.sum())
    if missing:
        by_remainder = torch.sort(-remainders, stable=True).indices  # largest remainder first, then lower class id
        quotas[by_remainder[:missing]] += 1
    return quotas


def _per_class_ranges(labels: Tensor, classes: Tensor, k: int, offset: int | None, rule: str) -> tuple[Tensor, Tensor]:
    """``[lo, hi)`` rank ranges within each class for a class-balanced rule keeping ``k`` in total (``labels``
    dense ids, ``classes`` their original ids)."""
    counts = torch.bincount(labels, minlength=classes.numel())
    quotas = _dense_quotas(labels, k, counts.numel())
    if rule == "highest":
        return counts - quotas, counts
    if rule == "lowest":
        return torch.zeros_like(quotas), quotas
    assert offset is not None
    starts = _dense_quotas(labels, offset, counts.numel())
    over = starts + quotas > counts
    if bool(over.any()):
        c = int(over.nonzero()[0])
        raise ValueError(
            f"Class {int(classes[c])} cannot fill its quota: it has {int(counts[c])} examples but its share of the window is ranks "
            f"[{int(starts[c])}, {int(starts[c] + quotas[c])}) within the class (per-class offset {int(starts[c])}, "
            f"quota {int(quotas[c])}). The window reaches past the top of this class: lower `offset` or `size`, use "
            "`highest` for a window that ends at the top, or pass `class_balanced=False`."
        )
    return starts, starts + quotas


def _ranked_selection(scores: Tensor, k: int, offset: int, rule: str, labels: Any, class_balanced: bool) -> Tensor:
    n = scores.numel()
    if not class_balanced:
        order = torch.sort(_sort_key(scores), stable=True).indices  # ascending rank order
        return _as_sorted(order[offset : offset + k], n)
    labels, classes = _dense_labels(labels, n)
    lo, hi = _per_class_ranges(labels, classes, k, offset if rule == "window" else None, rule)
    sizes = torch.bincount(labels, minlength=lo.numel())
    return _as_sorted(_take_ranges(_group_rank_order(scores, labels), sizes, lo, hi), n)


# ---------------------------------------------------------------------------------------------------- the rules


def highest(scores: Tensor, k: Count, *, labels: Tensor | None = None, class_balanced: bool = False) -> Tensor:
    """Keep the ``k`` highest-scoring examples (prune the lowest): the paper's rule.

    Keeps ranks ``[N - k, N)`` of the ascending order; among tied scores the larger indices are kept.
    With ``class_balanced=True`` keeps the top ``quota_c`` ranks within each class.

    Args:
        scores: ``[N]`` one score per example (NaN refused; ``+inf`` ranks highest).
        k: int count in ``[1, N]`` or float fraction in ``(0, 1]``.
        labels: ``LongTensor[N]`` class ids, needed for ``class_balanced``.
        class_balanced: per-class quotas proportional to class frequency (see :func:`class_quotas`).

    Returns:
        Sorted ``LongTensor[k]`` of kept indices.

    Example:
        >>> highest(torch.tensor([0.3, 0.9, 0.3, 0.1, 0.3]), 2).tolist()  # tie at 0.3: the larger index wins
        [1, 4]
    """
    scores = check_scores(scores)
    n = scores.numel()
    k = _as_count(k, n, name="k", allow_zero=False)
    return _ranked_selection(scores, k, n - k, "highest", labels, class_balanced)


def lowest(scores: Tensor, k: Count, *, labels: Tensor | None = None, class_balanced: bool = False) -> Tensor:
    """Keep the ``k`` lowest-scoring examples (the easiest): ranks ``[0, k)``; among ties the smaller indices.

    Arguments as in :func:`highest`.

    Example:
        >>> lowest(torch.tensor([0.3, 0.9, 0.3, 0.1, 0.3]), 2).tolist()
        [0, 3]
    """
    scores = check_scores(scores)
    n = scores.numel()
    k = _as_count(k, n, name="k", allow_zero=False)
    return _ranked_selection(scores, k, 0, "lowest", labels, class_balanced)


def window(
    scores: Tensor,
    size: Count,
    offset: Count,
    *,
    labels: Tensor | None = None,
    class_balanced: bool = False,
) -> Tensor:
    """Keep ranks ``[offset, offset + size)`` of the ascending order: the paper's sliding window.

    ``size`` and ``offset`` are int counts or float fractions of ``N``. "Keep the top ``k`` but drop the ``m``
    highest" is ``window(scores, size=k, offset=N - m - k)``.
    With ``class_balanced=True`` class ``c`` keeps ranks ``[o_c, o_c + q_c)`` within the class, where ``q_c`` and
    ``o_c`` are the :func:`class_quotas` of ``size`` and of ``offset``; a class whose window reaches past its top
    raises ``ValueError``.

    Example:
        >>> window(torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0]), size=2, offset=1).tolist()  # ranks 1, 2 = scores 2, 3
        [3, 4]
    """
    scores = check_scores(scores)
    n = scores.numel()
    k = _as_count(size, n, name="size", allow_zero=False)
    start = _as_count(offset, n, name="offset", allow_zero=True)
    if start + k > n:
        raise ValueError(
            f"The window ranks [{start}, {start + k}) run past the {n} examples: `offset` + `size` must be at most N. "
            "Lower `offset` (or `size`)."
        )
    return _ranked_selection(scores, k, start, "window", labels, class_balanced)


def random_subset(
    scores_or_n: Tensor | int,
    k: Count,
    *,
    seed: int = 0,
    labels: Tensor | None = None,
    class_balanced: bool = False,
) -> Tensor:
    """Keep ``k`` examples uniformly at random, without replacement: the baseline every experiment needs.

    Deterministic given ``seed`` (a ``torch.Generator`` on CPU). ``scores_or_n`` is the score vector (only its
    length is used; scores are not checked) or ``N``. With ``class_balanced=True`` each class keeps ``q_c``
    random members.

    Example:
        >>> random_subset(10, 3, seed=0).tolist() == random_subset(10, 3, seed=0).tolist()
        True
    """
    n = scores_or_n if isinstance(scores_or_n, int) and not isinstance(scores_or_n, bool) else None
    if n is None:
        n = torch.as_tensor(scores_or_n).numel() if not isinstance(scores_or_n, Tensor) else scores_or_n.numel()
    if n < 1:
        raise ValueError(f"Cannot select from {n} examples.")
    k = _as_count(k, n, name="k", allow_zero=False)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    if not class_balanced:
        return _as_sorted(perm[:k], n)
    labels, classes = _dense_labels(labels, n)
    quotas = _dense_quotas(labels, k, classes.numel())
    return _as_sorted(_take_per_group(perm, labels[perm], torch.zeros_like(quotas), quotas), n)


random = random_subset  # the 0.1.0 name (it shadowed the stdlib module inside `from selection import *`)

DEFAULT_NUM_STRATA = 50  # CCS's default


def _stratum_budgets(counts: list[int], budget: int) -> list[int]:
    """Equal budget per non-empty stratum; strata too small give all they have and the rest is redistributed.

    Strata are served from the smallest to the largest (ties by stratum id); each gets
    ``min(size, remaining_budget // strata_left)``, so the largest strata absorb the integer remainders.
    """
    budgets = [0] * len(counts)
    by_size = sorted((c, i) for i, c in enumerate(counts) if c > 0)
    remaining = budget
    for j, (count, i) in enumerate(by_size):
        budgets[i] = min(count, remaining // (len(by_size) - j))
        remaining -= budgets[i]
    assert remaining == 0, "budget larger than the pool"
    return budgets


def coverage(
    scores: Tensor,
    k: Count,
    *,
    beta: float = 0.0,
    num_strata: int | None = None,
    seed: int = 0,
    labels: Tensor | None = None,
    class_balanced: bool = False,
) -> Tensor:
    """Coverage-centric selection (CCS, Zheng et al. 2023): keep ``k`` examples spread over the score range.

    1. Drop the hardest ``beta`` fraction: the ``round_half_up(beta * N)`` top ranks (likely mislabeled examples).
    2. Split the range ``[min, max]`` of the remaining finite scores into ``num_strata`` equal-width strata:
       stratum ``floor((s - min) / (max - min) * num_strata)``, the maximum joining the last one (all in one
       stratum when ``max == min``); remaining ``-inf`` / ``+inf`` scores form one extra stratum each below / above.
    3. Give every non-empty stratum an equal share of the budget; a stratum smaller than its share gives all its
       examples and the rest is redistributed among the others (smallest strata served first, each taking
       ``min(size, remaining // strata_left)``, so integer remainders go to the largest strata).
    4. Sample uniformly without replacement within each stratum: one ``torch.Generator`` seeded with ``seed``;
       stratum after stratum (in ascending score order), each keeps the first members (in index order) picked by
       a ``randperm`` of its size.

    With ``class_balanced=True`` the whole procedure runs within each class (its own ``beta`` drop, score range
    and strata) with the class's :func:`class_quotas` budget; a class left with fewer examples than its quota
    after the ``beta`` drop raises ``ValueError``. CCS helps most at high pruning rates, where keeping only the
    hardest examples collapses accuracy.

    Example:
        >>> scores = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 9.0, 10.0])
        >>> coverage(scores, 4, num_strata=2).tolist()  # both of the high stratum, 2 random ones of the low
        [0, 4, 5, 6]
    """
    scores = check_scores(scores)
    n = scores.numel()
    k = _as_count(k, n, name="k", allow_zero=False)
    beta = _scalar(beta)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= beta < 1.0:
        raise ValueError(f"`beta` is the hardest fraction dropped before sampling and must lie in [0, 1), got {beta!r}.")
    num_strata_given = num_strata is not None
    num_strata = DEFAULT_NUM_STRATA if num_strata is None else _scalar(num_strata)
    if isinstance(num_strata, bool) or not isinstance(num_strata, int) or num_strata < 1:
        raise ValueError(f"`num_strata` must be a positive int, got {num_strata!r}.")
    if num_strata_given and num_strata > n:
        raise ValueError(
            f"`num_strata`={num_strata} is larger than the {n} examples: most strata would be empty and the work "
            f"would grow with num_strata, not N. Pass at most N strata, or leave `num_strata` unset (CCS's {DEFAULT_NUM_STRATA}, for any N)."
        )
    if class_balanced:
        groups, classes = _dense_labels(labels, n)
        quotas = _dense_quotas(groups, k, classes.numel())
    else:
        groups, quotas = torch.zeros(n, dtype=torch.long), torch.tensor([k])
        classes = torch.zeros(1, dtype=torch.long)
    num_groups = quotas.numel()
    sizes = torch.bincount(groups, minlength=num_groups)

    # 1. drop the hardest beta fraction of every group (their top ranks)
    drops = torch.tensor([fraction_count(m, beta) for m in sizes.tolist()])
    if not int(drops.sum()):
        pool = torch.arange(n)
    elif num_groups == 1:
        pool = torch.sort(_sort_key(scores), stable=True).indices[: n - int(drops[0])]
    else:
        grouped = _group_rank_order(scores, groups)  # by group, ascending rank within a group
        pool = _take_ranges(grouped, sizes, torch.zeros_like(sizes), sizes - drops)
    short = (sizes - drops < quotas).nonzero().flatten()
    if short.numel():
        c = int(short[0])
        what = f"Class {int(classes[c])}" if class_balanced else "The selection"
        raise ValueError(
            f"{what} cannot fill its quota: {int(quotas[c])} examples are to be kept but only {int(sizes[c] - drops[c])} "
            f"of {int(sizes[c])} remain after dropping the hardest beta = {beta} fraction ({int(drops[c])}). Lower "
            "`beta` or the keep fraction."
        )

    # 2. equal-width strata over each group's finite score range; -inf / +inf get a stratum of their own
    g = groups[pool]
    s = scores[pool].to(torch.float64)
    finite = torch.isfinite(s)
    fg, fs = (g, s) if bool(finite.all()) else (g[finite], s[finite])
    lo = torch.full((num_groups,), torch.inf, dtype=torch.float64).scatter_reduce(0, fg, fs, "amin")
    hi = torch.full((num_groups,), -torch.inf, dtype=torch.float64).scatter_reduce(0, fg, fs, "amax")
    spread = hi > lo
    width = torch.where(spread, hi - lo, torch.ones_like(hi))
    inner = fs.sub(lo[fg]).div_(width[fg]).mul_(num_strata).floor_().clamp_(0, num_strata - 1).add_(1)
    inner = torch.where(spread[fg], inner, torch.ones_like(inner)).long()
    if fs is s:
        strata = inner
    else:
        strata = torch.where(s > 0, num_strata + 1, 0)
        strata[finite] = inner
    cells = g * (num_strata + 2) + strata  # (group, stratum) pairs

    # 3. equal budget per non-empty stratum of each group
    counts = torch.bincount(cells, minlength=num_groups * (num_strata + 2)).view(num_groups, num_strata + 2)
    budgets = torch.tensor(
        [_stratum_budgets(row, q) for row, q in zip(counts.tolist(), quotas.tolist())], dtype=torch.long
    ).flatten()

    # 4. uniform within each stratum: each (group, stratum) cell draws one randperm of its members, cells in order
    gen = torch.Generator().manual_seed(int(seed))
    grouped = pool[_group_order(cells)]
    parts, start = [], 0
    for count, budget in zip(counts.flatten().tolist(), budgets.tolist()):
        if budget:
            parts.append(grouped[start : start + count][torch.randperm(count, generator=gen)[:budget]])
        start += count
    return _as_sorted(torch.cat(parts), n)


# ------------------------------------------------------------------------------------------------- dispatcher


def select(
    scores: Tensor,
    keep_fraction_or_k: Count,
    rule: str = "highest",
    *,
    offset: Count | None = None,
    labels: Tensor | None = None,
    class_balanced: bool = False,
    seed: int = 0,
    tie_break: str = "index",
    **rule_kwargs: Any,
) -> Tensor:
    """Apply the selection rule named ``rule`` (one of :data:`SELECTION_RULES`) and return sorted kept indices.

    ``tie_break``: ``"index"`` (default) breaks ties among equal scores by dataset index, as every rule does;
    ``"random"`` breaks them by a permutation seeded with ``seed`` (still deterministic). Use ``"random"`` when many
    scores tie (forgetting counts, ``+inf`` never-learned examples) and the dataset is ordered, e.g. by class: with
    index order the kept tied examples would all come from the end of the dataset. Scores without ties select the
    same examples either way.

    ``keep_fraction_or_k``: float fraction in ``(0, 1]`` or int count. ``offset`` is required by ``"window"`` and
    refused by the other rules. ``seed`` is used by ``"random"`` and ``"coverage"``; ``rule_kwargs`` go to the
    rule (``beta``, ``num_strata`` for ``"coverage"``).

    Raises:
        ValueError: unknown rule name, misplaced ``offset``, or any error of the rule itself.
    """
    if rule not in SELECTION_RULES:
        raise ValueError(f"Unknown selection rule {rule!r}: choose one of {', '.join(map(repr, SELECTION_RULES))}.")
    if tie_break not in ("index", "random"):
        raise ValueError(f"`tie_break` must be 'index' or 'random', got {tie_break!r}.")
    if tie_break == "random" and rule != "random":
        n = scores.numel()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 7919))  # [N] position -> index
        kept = select(
            scores[perm], keep_fraction_or_k, rule, offset=offset,
            labels=None if labels is None else torch.as_tensor(labels)[perm],
            class_balanced=class_balanced, seed=seed, tie_break="index", **rule_kwargs,
        )
        return torch.sort(perm[kept]).values
    if rule == "window":
        if offset is None:
            raise ValueError(
                "The 'window' rule needs `offset`: the first kept rank of the ascending order (an int count or a "
                "float fraction of N)."
            )
    elif offset is not None:
        raise ValueError(
            f"`offset` only applies to selection='window' (got selection={rule!r}). To keep the top k but skip the m "
            "highest, use selection='window' with offset = N - m - k."
        )
    if rule != "coverage" and rule_kwargs:
        raise TypeError(f"Unexpected argument(s) {sorted(rule_kwargs)} for selection rule {rule!r}.")
    common: dict[str, Any] = {"labels": labels, "class_balanced": class_balanced}
    if rule == "highest":
        return highest(scores, keep_fraction_or_k, **common)
    if rule == "lowest":
        return lowest(scores, keep_fraction_or_k, **common)
    if rule == "window":
        return window(scores, keep_fraction_or_k, offset, **common)  # type: ignore[arg-type]
    if rule == "random":
        return random_subset(scores, keep_fraction_or_k, seed=seed, **common)
    return coverage(scores, keep_fraction_or_k, seed=seed, **common, **rule_kwargs)
