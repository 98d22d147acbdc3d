"""Linear mode connectivity: error along the straight line between two weight sets, and its barrier.

For weights ``w_a`` and ``w_b`` and ``alpha`` in ``[0, 1]`` (the weight on ``model_a``)::

    w(alpha) = alpha * w_a + (1 - alpha) * w_b
    barrier  = max_alpha  err(w(alpha)) - (alpha * err(w_a) + (1 - alpha) * err(w_b))

so ``alpha = 1`` is ``model_a`` and ``alpha = 0`` is ``model_b``. The maximum is over the given alphas plus the two
endpoints (where the gap is 0), so the barrier is never negative.

BatchNorm. Averaging weights does not average activations: the running statistics of either endpoint do not
describe the interpolated network. Following the usual practice for mode connectivity of BatchNorm networks
(and ``torch.optim.swa_utils.update_bn``), the running statistics are reset and recomputed with one pass over
``bn_data`` (default: ``data``): BatchNorm layers in train mode with ``momentum=None`` (a cumulative average over
batches), every other module in eval mode (dropout off), no gradients; then the network is evaluated in eval
mode. By default (``bn_reset="all"``) this is done at **every** point of the path, endpoints included, so that
all points are treated alike and a model compared with itself has a barrier of exactly 0; ``"interior"`` keeps
the endpoints' own statistics, ``"none"`` interpolates the running statistics like any other buffer. Pass an
unshuffled ``bn_data`` for bit-reproducible statistics, and prefer (a random part of) the training set over a
small subset when measuring the barrier on a subset.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader

from lightning_datadiet._utils import eval_mode
from lightning_datadiet.data.targets import batch_inputs_targets

__all__ = ["interpolate_state", "update_bn_statistics", "classification_error", "error_barrier"]

Data = DataLoader | tuple[Tensor, Tensor] | Sequence[Tensor]


def _state(model: nn.Module | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    return model.state_dict() if isinstance(model, nn.Module) else model


def interpolate_state(
    model_a: nn.Module | Mapping[str, Tensor], model_b: nn.Module | Mapping[str, Tensor], alpha: float
) -> dict[str, Tensor]:
    """The state dict ``alpha * a + (1 - alpha) * b`` of two models of the same architecture.

    Floating-point parameters and buffers are interpolated; other entries (integer buffers such as BatchNorm's
    ``num_batches_tracked``) are copied from ``model_a``.

    Args:
        model_a: a module or a state dict (weight ``alpha``).
        model_b: a module or a state dict with the same keys and shapes (weight ``1 - alpha``).
        alpha: interpolation weight on ``model_a``; 1 gives ``a``, 0 gives ``b``.

    Returns:
        A new state dict (tensors detached and cloned).
    """
    sa, sb = _state(model_a), _state(model_b)
    if set(sa) != set(sb):
        raise ValueError(f"The two state dicts differ in keys: {sorted(set(sa) ^ set(sb))[:5]}...")
    out = {}
    for key, va in sa.items():
        vb = sb[key]
        if va.shape != vb.shape:
            raise ValueError(f"Entry {key!r} differs in shape: {tuple(va.shape)} vs {tuple(vb.shape)}.")
        if va.is_floating_point():
            out[key] = (alpha * va.detach() + (1.0 - alpha) * vb.detach().to(va.device, va.dtype)).clone()
        else:
            out[key] = va.detach().clone()
    return out


def _batches(data: Data, batch_size: int) -> Iterator[tuple[Any, Tensor]]:
    """``(inputs, targets)`` batches from a DataLoader (tuple or dict batches) or an ``(inputs, targets)`` pair."""
    if isinstance(data, DataLoader):
        for batch in data:
            yield batch_inputs_targets(batch)
        return
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        inputs, targets = data
        for start in range(0, inputs.shape[0], batch_size):
            yield inputs[start : start + batch_size], targets[start : start + batch_size]
        return
    raise TypeError(
        f"`data` must be a DataLoader or an (inputs, targets) pair of tensors, got {type(data).__name__}."
    )


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


def update_bn_statistics(
    model: nn.Module,
    data: Data | Iterable[Any],
    *,
    device: torch.device | str | None = None,
    batch_size: int = 256,
) -> bool:
    """Reset and recompute the running statistics of every BatchNorm layer of ``model`` in place.

    One pass over ``data`` without gradients, BatchNorm layers in train mode with ``momentum=None`` (cumulative
    average of the batch statistics), all other modules in eval mode. The model is left in eval mode and each
    layer's momentum is restored. Layers with ``track_running_stats=False`` are left alone.

    Args:
        model: the model to update.
        data: a DataLoader or an ``(inputs, targets)`` pair (targets unused).
        device: where to run; default the model's device.
        batch_size: batch size for tensor data.

    Returns:
        Whether the model has BatchNorm layers with running statistics (``False``: nothing was done).
    """
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not layers:
        return False
    device = torch.device(device) if device is not None else _device(model)
    momenta = [m.momentum for m in layers]
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    try:
        with torch.no_grad():
            for inputs, _ in _batches(data, batch_size):  # type: ignore[arg-type]
                model(_to(inputs, device))
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.eval()
    return True


def _device(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def classification_error(
    model: nn.Module, data: Data, *, device: torch.device | str | None = None, batch_size: int = 256
) -> float:
    """Top-1 error of ``model`` (eval mode, no gradients) on ``data``; the model's training flags are restored.

    Args:
        model: maps inputs to ``[B, K]`` logits.
        data: a DataLoader or an ``(inputs, targets)`` pair; targets are class ids ``[B]`` (or one-hot ``[B, K]``).
        device: where to run; default the model's device.
        batch_size: batch size for tensor data.

    Returns:
        The fraction of misclassified examples (NaN for empty data).
    """
    device = torch.device(device) if device is not None else _device(model)
    wrong, total = 0, 0
    with eval_mode(model), torch.no_grad():
        for inputs, targets in _batches(data, batch_size):
            logits = model(_to(inputs, device))  # [B, K]
            targets = targets.to(logits.device)
            if targets.ndim == 2:
                targets = targets.argmax(dim=1)
            wrong += int((logits.argmax(dim=1) != targets.reshape(-1)).sum())
            total += int(targets.numel())
    return wrong / total if total else float("nan")


def error_barrier(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Data,
    alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    *,
    bn_data: Data | None = None,
    bn_reset: Literal["all", "interior", "none"] = "all",
    device: torch.device | str | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Error along the linear path between two weight sets, and the error barrier.

    ``w(alpha) = alpha * w_a + (1 - alpha) * w_b``; the barrier is
    ``max_alpha err(alpha) - (alpha * err_a + (1 - alpha) * err_b)`` over ``alphas`` and the endpoints, with
    ``err_a = err(1)`` and ``err_b = err(0)``. BatchNorm statistics are recomputed as the module docstring says.
    The input models are never modified (the evaluation runs on a deep copy of ``model_a``).

    Args:
        model_a: first model (weight ``alpha``).
        model_b: second model of the same architecture.
        data: where the error is measured: a DataLoader or an ``(inputs, targets)`` pair of tensors.
        alphas: interpolation weights on ``model_a``, each in ``[0, 1]``.
        bn_data: data for recomputing BatchNorm statistics; default ``data``.
        bn_reset: recompute BatchNorm statistics at ``"all"`` points (default), only ``"interior"`` ones
            (``0 < alpha < 1``), or ``"none"``.
        device: where to evaluate; default ``model_a``'s device.
        batch_size: batch size for tensor data.

    Returns:
        ``{"alphas": list[float], "errors": list[float], "gaps": list[float], "barrier": float,
        "barrier_alpha": float, "error_a": float, "error_b": float}`` where ``gaps[i]`` is the error at
        ``alphas[i]`` minus the linear interpolation of the endpoint errors and ``barrier_alpha`` is where the
        maximum is reached (``None`` when no gap is positive and the barrier is 0).

    Example:
        >>> net = nn.Linear(3, 2)
        >>> error_barrier(net, net, (torch.randn(8, 3), torch.randint(0, 2, (8,))))["barrier"]
        0.0
    """
    alphas = [float(a) for a in alphas]
    if not alphas or any(not 0.0 <= a <= 1.0 for a in alphas):
        raise ValueError(f"`alphas` must be a non-empty sequence of values in [0, 1], got {alphas}.")
    if bn_reset not in ("all", "interior", "none"):
        raise ValueError(f"`bn_reset` must be 'all', 'interior' or 'none', got {bn_reset!r}.")
    device = torch.device(device) if device is not None else _device(model_a)
    bn_data = data if bn_data is None else bn_data
    work = copy.deepcopy(model_a).to(device)

    cache: dict[float, float] = {}

    def error_at(alpha: float) -> float:
        if alpha not in cache:
            work.load_state_dict(interpolate_state(model_a, model_b, alpha))
            if bn_reset == "all" or (bn_reset == "interior" and 0.0 < alpha < 1.0):
                update_bn_statistics(work, bn_data, device=device, batch_size=batch_size)
            cache[alpha] = classification_error(work, data, device=device, batch_size=batch_size)
        return cache[alpha]

    error_a, error_b = error_at(1.0), error_at(0.0)
    errors = [error_at(a) for a in alphas]
    # e - (a * err_a + (1 - a) * err_b), written so that equal errors give exactly 0.
    gaps = [(e - error_b) - a * (error_a - error_b) for a, e in zip(alphas, errors)]
    best = max(range(len(alphas)), key=lambda i: gaps[i])
    barrier, barrier_alpha = (gaps[best], alphas[best]) if gaps[best] > 0 else (0.0, None)
    return {
        "alphas": alphas,
        "errors": errors,
        "gaps": gaps,
        "barrier": barrier,
        "barrier_alpha": barrier_alpha,
        "error_a": error_a,
        "error_b": error_b,
    }
