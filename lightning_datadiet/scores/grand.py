"""GraNd: the L2 norm of each example's loss gradient with respect to all trainable parameters."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_flatten, tree_map

from lightning_datadiet._utils import eval_mode  # re-exported: lightning_datadiet.scores.eval_mode
from lightning_datadiet.scores._checks import check_logits, check_targets
from lightning_datadiet.scores.grand_norms import NormsUnsupportedError, grand_norms, norms_support

__all__ = ["grand", "eval_mode", "GRAND_METHODS"]

GRAND_METHODS = ("auto", "norms", "vmap")


def grand(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    chunk_size: int | None = None,
    method: str = "auto",
) -> Tensor:
    r"""Per-example GraNd score, ``|| \nabla_\theta CE(model(x_i), y_i) ||_2`` over every parameter with
    ``requires_grad`` (frozen parameters are constants and do not count).

    The model is scored in eval mode (BatchNorm uses its running statistics; dropout is off), so examples never
    interact. Two exact methods:

    * ``"norms"``: the norm-only engine (:mod:`lightning_datadiet.scores.grand_norms`): one forward and one
      backward pass of the summed loss, then per layer the exact per-example squared norms of the weight and bias
      gradients (ghost Gram form or that layer's per-example gradient, whichever is cheaper). Supports Linear,
      Conv1d/Conv2d, BatchNorm1d/2d/3d (eval mode), LayerNorm, GroupNorm and Embedding; refuses anything else.
    * ``"vmap"``: every example's full gradient from ``torch.func`` (``functional_call`` + ``vmap`` + ``grad``),
      any differentiable model; memory grows with ``chunk_size x num_parameters``.

    ``"auto"`` (default) uses ``"norms"`` when the model is supported and falls back to ``"vmap"`` otherwise
    (with a ``UserWarning`` naming the reason). Afterwards the model's training flags, parameters and buffers are
    exactly as before, and no ``.grad`` is touched.

    Args:
        model: a module mapping ``inputs`` to ``[B, K]`` logits.
        inputs: ``[B, ...]`` a batch of inputs: a tensor, or a tuple/list/dict of tensors that share the batch
            dimension (passed to the model as one positional argument); the batch dimension is vmapped over.
        targets: ``[B]`` integer class ids.
        chunk_size: examples processed at once; ``None`` = the whole batch. For ``"vmap"``: examples per
            vectorised chunk, peak memory grows with ``chunk_size x num_parameters``. For ``"norms"``: examples
            per forward + backward pass, peak memory grows like a training step's with its batch size. The scores
            do not depend on it.
        method: ``"auto"``, ``"norms"`` or ``"vmap"`` (see above).

    Returns:
        ``[B]`` scores in the parameters' dtype (float32 for a float32 model, float64 for a float64 model).

    Raises:
        TypeError: inputs that are not tensors (or a tuple/list/dict of tensors).
        ValueError: no trainable parameters, bad targets, outputs that are not ``[B, K]`` logits, an unknown
            ``method``, or ``method="norms"`` on a model the engine does not support (the message names the layer).
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
    if method not in GRAND_METHODS:
        raise ValueError(f"grand: method must be one of {', '.join(map(repr, GRAND_METHODS))}, got {method!r}.")
    trainable = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise ValueError("grand: the model has no parameter with requires_grad=True, so every gradient norm is 0.")
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    check_targets(targets, batch, None, what="grand")
    if batch == 0:
        return torch.empty(0, dtype=next(iter(trainable.values())).dtype, device=leaves[0].device)
    if method != "vmap":
        reason = norms_support(model)
        if reason is None:
            with eval_mode(model), torch.enable_grad():
                try:
                    norms, logits = grand_norms(model, inputs, targets.long(), chunk_size=chunk_size)
                except NormsUnsupportedError as err:
                    reason = str(err)
        if reason is None:
            _check_finite(norms)
            return norms
        if method == "norms":
            raise ValueError(
                f"grand(method='norms'): the norm-only engine cannot score this model exactly: {reason}. Use "
                "method='vmap' (any differentiable model; or method='auto', which falls back to it)."
            )
        warnings.warn(
            f"grand: {reason}; scoring with the slower torch.func path (method='vmap'). Pass method='vmap' to "
            "choose it explicitly.",
            UserWarning,
            stacklevel=2,
        )
    return _grand_vmap(model, inputs, targets, batch, chunk_size, trainable, frozen, buffers)


def _check_finite(norms: Tensor) -> None:
    finite = torch.isfinite(norms)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise FloatingPointError(
            f"grand: {bad} example(s) have NaN/inf gradient norms although their logits are finite (an overflow in "
            "the backward pass, or a non-differentiable point such as sqrt(0) in the model). Score an earlier epoch, "
            "lower the learning rate, or compute in float64 (`model.double()`)."
        )


def _grand_vmap(
    model: nn.Module,
    inputs: Any,
    targets: Tensor,
    batch: int,
    chunk_size: int | None,
    trainable: dict[str, Tensor],
    frozen: dict[str, Tensor],
    buffers: dict[str, Tensor],
) -> Tensor:
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
    _check_finite(norms)
    return norms.detach()
