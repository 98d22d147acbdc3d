"""GraNd: the L2 norm of each example's loss gradient with respect to all trainable parameters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from lightning_datadiet.scores._checks import check_logits, check_targets

__all__ = ["grand", "eval_mode"]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode and restore every submodule's own ``training`` flag afterwards."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag


def grand(model: nn.Module, inputs: Tensor, targets: Tensor, *, chunk_size: int | None = None) -> Tensor:
    r"""Per-example GraNd score, ``|| \nabla_\theta CE(model(x_i), y_i) ||_2`` over every parameter with
    ``requires_grad`` (frozen parameters are constants and do not count).

    Per-example gradients come from ``torch.func`` (``functional_call`` + ``vmap`` + ``grad``), with the model in
    eval mode (BatchNorm uses its running statistics; dropout is off), so examples never interact. Afterwards the
    model's training flags, parameters and buffers are exactly as before, and no ``.grad`` is touched.

    Args:
        model: a module mapping ``inputs`` to ``[B, K]`` logits.
        inputs: ``[B, ...]`` a batch of inputs (a tensor; the batch dimension is vmapped over).
        targets: ``[B]`` integer class ids.
        chunk_size: examples per vectorised chunk; peak memory grows with ``chunk_size x num_parameters``.
            ``None`` processes the whole batch at once.

    Returns:
        ``[B]`` scores in the parameters' dtype (float32 for a float32 model, float64 for a float64 model).

    Raises:
        ValueError: no trainable parameters, bad targets, outputs that are not ``[B, K]`` logits.
        FloatingPointError: NaN/inf logits.

    Example:
        >>> net = nn.Linear(3, 2)
        >>> grand(net, torch.randn(4, 3), torch.tensor([0, 1, 1, 0])).shape
        torch.Size([4])
    """
    if not isinstance(inputs, Tensor):
        raise TypeError(f"grand: inputs must be a tensor [B, ...], got {type(inputs).__name__}.")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"grand: chunk_size must be a positive int or None, got {chunk_size!r}.")
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise ValueError("grand: the model has no parameter with requires_grad=True, so every gradient norm is 0.")
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    check_targets(targets, inputs.shape[0], None, what="grand")
    if inputs.shape[0] == 0:
        return torch.empty(0, dtype=next(iter(trainable.values())).dtype, device=inputs.device)

    def loss_of_one(params: dict[str, Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = functional_call(model, (params, frozen, buffers), (x.unsqueeze(0),), strict=False)  # [1, K]
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            raise ValueError(
                "grand: the model must return [B, K] logits; got "
                f"{type(logits).__name__ if not isinstance(logits, Tensor) else tuple(logits.shape)} for one example."
            )
        loss = nn.functional.cross_entropy(logits, y.unsqueeze(0))
        return loss, logits.squeeze(0)

    def norm_of_one(params: dict[str, Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        grads, logits = grad(loss_of_one, has_aux=True)(params, x, y)
        squared = sum(g.pow(2).sum() for g in grads.values())
        return torch.sqrt(squared), logits

    with eval_mode(model), torch.enable_grad():
        try:
            norms, logits = vmap(norm_of_one, in_dims=(None, 0, 0), chunk_size=chunk_size, randomness="error")(
                trainable, inputs, targets.long()
            )
        except (RuntimeError, IndexError):
            # Explain the common causes (targets out of range, bad output shape) before the raw error.
            with torch.no_grad():
                probe = model(inputs[:1])
            check_logits(probe, what="grand", batch_size=1)
            check_targets(targets, inputs.shape[0], probe.shape[1], what="grand")
            raise
    check_logits(logits, what="grand", batch_size=inputs.shape[0])
    check_targets(targets, inputs.shape[0], logits.shape[1], what="grand")
    return norms.detach()
