"""How the selection rules rank and slice fast: integer sort keys for a radix sort, grouped orders and per-group
ranges, all in O(N log N) without a Python loop over examples (loops over groups only). The rules themselves and the
ranking they document (:func:`~lightning_datadiet.selection.rank_order`) are in ``lightning_datadiet.selection``."""

from __future__ import annotations

import torch
from torch import Tensor


def _sort_key(scores: Tensor) -> Tensor:
    """An integer tensor whose order equals the order of ``scores`` (no NaN), so an integer radix sort applies."""
    if not scores.is_floating_point():
        return scores if scores.dtype in (torch.int32, torch.int64) else scores.to(torch.int64)
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    scores = torch.where(scores == 0, torch.zeros_like(scores), scores)  # -0.0 ties with 0.0
    if scores.dtype == torch.float32:
        bits, mask = scores.view(torch.int32), 0x7FFFFFFF
    else:
        bits, mask = scores.to(torch.float64).view(torch.int64), 0x7FFFFFFFFFFFFFFF
    # IEEE-754: non-negative floats order like their bit patterns; negative ones in reverse
    return torch.where(bits < 0, bits ^ mask, bits)


def _as_sorted(indices: Tensor, n: int) -> Tensor:
    """Sorted indices in O(n) through a mask."""
    mask = torch.zeros(n, dtype=torch.bool)
    mask[indices] = True
    return mask.nonzero().flatten()


def _group_order(groups: Tensor) -> Tensor:
    """Stable argsort of small non-negative group ids (an integer radix sort on the narrowest dtype)."""
    top = int(groups.max()) if groups.numel() else 0
    small = groups.to(torch.int16 if top < 2**15 else torch.int32 if top < 2**31 else torch.int64)
    return torch.argsort(small, stable=True)


def _group_rank_order(scores: Tensor, groups: Tensor) -> Tensor:
    """Indices grouped by ``groups`` (ascending group id), in ascending rank order within each group."""
    key = _sort_key(scores)
    if key.dtype == torch.int32 and int(groups.max()) < 2**31:  # one radix sort on (group, score) packed in 64 bits
        packed = (groups.to(torch.int64) << 32) | (key.to(torch.int64) + 2**31)
        return torch.sort(packed, stable=True).indices
    order = torch.sort(key, stable=True).indices
    return order[_group_order(groups[order])]


def _take_ranges(grouped: Tensor, sizes: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """``grouped`` holds group 0's elements, then group 1's, ... (``sizes[g]`` each): keep positions
    ``[lo[g], hi[g])`` of each group."""
    if sizes.numel() <= 256:  # few groups: slices
        spans, start = [], 0
        for count, a, b in zip(sizes.tolist(), lo.tolist(), hi.tolist()):
            if b > a:
                spans.append(grouped[start + a : start + b])
            start += count
        return torch.cat(spans) if spans else grouped[:0]
    g_sorted = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
    pos = torch.arange(grouped.numel()) - (torch.cumsum(sizes, 0) - sizes)[g_sorted]  # position within group
    return grouped[(pos >= lo[g_sorted]) & (pos < hi[g_sorted])]


def _take_per_group(order: Tensor, groups: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """For each group g, the elements of ``order`` at positions ``[lo[g], hi[g])`` among those of group g.

    ``order``: candidate indices [M]; ``groups``: the group of each element of ``order`` [M]; ``lo``/``hi``: [G].
    Positions within a group follow the order of ``order`` (stable grouping).
    """
    sizes = torch.bincount(groups, minlength=lo.numel())
    return _take_ranges(order[_group_order(groups)], sizes, lo, hi)
