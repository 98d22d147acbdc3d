"""GraNd: the L2 norm of each example's loss gradient with respect to all trainable parameters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_flatten, tree_map

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
        inputs: ``[B, ...]`` a batch of inputs: a tensor, or a tuple/list/dict of tensors that share the batch
            dimension (passed to the model as one positional argument); the batch dimension is vmapped over.
        targets: ``[B]`` integer class ids.
        chunk_size: examples per vectorised chunk; peak memory grows with ``chunk_size x num_parameters``.
            ``None`` processes the whole batch at once.

    Returns:
        ``[B]`` scores in the parameters' dtype (float32 for a float32 model, float64 for a float64 model).

    Raises:
        TypeError: inputs that are not tensors (or a tuple/list/dict of tensors).
        ValueError: no trainable parameters, bad targets, outputs that are not ``[B, K]`` logits.
        FloatingPointError: NaN/inf logits or gradient norms.
        RuntimeError: the model draws random numbers in eval mode (per-example gradients are then undefined).

    Example:
        >>> net = nn.Linear(3, 2)
        >>> grand(net, torch.randn(4, 3), torch.tensor([0, 1, 1, 0])).shape
        torch.Size([4])
    """
    leaves, spec = tree_flatten(inputs)
    if not leaves or not all(isinstance(leaf, Tensor) and leaf.ndim >= 1 for leaf in leaves):
        kinds = sorted({type(leaf).__name__ for leaf in leaves}) or ["nothing"]
        raise TypeError(
            f"grand: inputs must be a tensor [B, ...] (or a tuple/list/dict of such tensors), got "
            f"{type(inputs).__name__} holding {', '.join(kinds)}. Drop non-tensor entries from the model inputs (with "
            "the scoring callbacks: pick the inputs with `input_key=`)."
        )
    batch = leaves[0].shape[0]
    if any(leaf.shape[0] != batch for leaf in leaves):
        raise ValueError(
            f"grand: every input tensor must have the batch size as its first dimension, got leading sizes "
            f"{[leaf.shape[0] for leaf in leaves]}."
        )
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"grand: chunk_size must be a positive int or None, got {chunk_size!r}.")
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise ValueError("grand: the model has no parameter with requires_grad=True, so every gradient norm is 0.")
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    check_targets(targets, batch, None, what="grand")
    if batch == 0:
        return torch.empty(0, dtype=next(iter(trainable.values())).dtype, device=leaves[0].device)

    def loss_of_one(params: dict[str, Tensor], x: Any, y: Tensor) -> tuple[Tensor, Tensor]:
        one = tree_map(lambda t: t.unsqueeze(0), x)
        logits = functional_call(model, (params, frozen, buffers), (one,), strict=False)  # [1, K]
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            got = type(logits).__name__ if not isinstance(logits, Tensor) else f"shape {tuple(logits.shape)}"
            raise ValueError(
                f"grand: the model must return [B, K] logits; got {got} for one example. If its forward returns a "
                "tuple or dict, score the submodule that returns the logits (GraNdCallback: `logits_module=`)."
            )
        loss = nn.functional.cross_entropy(logits, y.unsqueeze(0))
        return loss, logits.squeeze(0)

    def norm_of_one(params: dict[str, Tensor], x: Any, y: Tensor) -> tuple[Tensor, Tensor]:
        grads, logits = grad(loss_of_one, has_aux=True)(params, x, y)
        squared = sum(g.pow(2).sum() for g in grads.values())
        return torch.sqrt(squared), logits

    with eval_mode(model), torch.enable_grad():
        try:
            norms, logits = vmap(norm_of_one, in_dims=(None, 0, 0), chunk_size=chunk_size, randomness="error")(
                trainable, inputs, targets.long()
            )
        except (RuntimeError, IndexError) as err:
            if "randomness" in str(err) or "random operation" in str(err):
                raise RuntimeError(
                    "grand: the model draws random numbers in eval mode (e.g. torch.rand/randn or F.dropout(..., "
                    "training=True) in forward), so its per-example gradients are not defined: vmap refuses random "
                    "operations. Make the randomness depend on `self.training` (as nn.Dropout does), or score a "
                    "submodule without it (GraNdCallback: `logits_module=`)."
                ) from err
            # Explain the common causes (targets out of range, bad output shape) before the raw error.
            with torch.no_grad():
                probe = model(tree_map(lambda t: t[:1], inputs))
            check_logits(probe, what="grand", batch_size=1)
            check_targets(targets, batch, probe.shape[1], what="grand")
            raise
    check_logits(logits, what="grand", batch_size=batch)
    check_targets(targets, batch, logits.shape[1], what="grand")
    finite = torch.isfinite(norms)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise FloatingPointError(
            f"grand: {bad} example(s) have NaN/inf gradient norms although their logits are finite (an overflow in "
            "the backward pass, or a non-differentiable point such as sqrt(0) in the model). Score an earlier epoch, "
            "lower the learning rate, or compute in float64 (`model.double()`)."
        )
    return norms.detach()
