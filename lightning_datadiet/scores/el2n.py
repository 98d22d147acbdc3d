"""EL2N: the L2 norm of the error vector ``softmax(f(x)) - onehot(y)``."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_datadiet.scores._checks import check_logits_targets

__all__ = ["el2n"]


def el2n(logits: Tensor, targets: Tensor) -> Tensor:
    r"""Per-example EL2N score, ``|| softmax(logits) - onehot(targets) ||_2`` (plain, not squared, L2 norm).

    .. math:: \mathrm{EL2N}(x, y) = \lVert \mathrm{softmax}(f(x)) - e_y \rVert_2 \in [0, \sqrt{2}]

    Args:
        logits: ``[B, K]`` un-normalised model outputs (not probabilities).
        targets: ``[B]`` integer class ids in ``[0, K)``.

    Returns:
        ``[B]`` float32 scores (computed in float64 when ``logits`` is float64, float32 otherwise).

    Raises:
        ValueError: logits are not ``[B, K]``, targets are not ``[B]`` integer ids in range, or logits hold NaN/inf.

    Example:
        >>> el2n(torch.tensor([[0.0, 0.0]]), torch.tensor([0]))
        tensor([0.7071])
    """
    check_logits_targets(logits, targets, what="el2n")
    work = logits if logits.dtype == torch.float64 else logits.float()
    probs = torch.softmax(work, dim=1)  # [B, K]
    error = probs - torch.nn.functional.one_hot(targets.long(), probs.shape[1]).to(probs.dtype)  # [B, K]
    out = torch.linalg.vector_norm(error, dim=1)  # [B]
    return out if logits.dtype == torch.float64 else out.float()
