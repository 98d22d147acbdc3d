r"""The norm-only GraNd engine: exact per-example gradient norms from one ordinary backward pass.

No per-example gradient of the whole model is ever formed. Forward hooks keep each supported layer's input and the
gradient edge of its output; one backward pass of the *summed* per-example cross-entropy gives every layer's
output gradient ``g`` (in eval mode examples do not interact, so row ``i`` of ``g`` is example ``i``'s own output
gradient); then each layer adds the exact squared norm of its per-example weight and bias gradients, computed by
the cheaper of two exact forms (``T`` = positions per example, ``d`` = input features, ``p`` = output features):

* **ghost** (Gram) form: ``||sum_t g_t a_t^T||_F^2 = sum_{t,t'} (a_t . a_t')(g_t . g_t')``, cost ``T^2 (d + p)``;
* **instantiate** that layer's per-example gradient (``g^T a`` per example, a batched matmul), cost ``T p d``.

Ghost is used when ``T (d + p) < p d`` (fewer multiply-adds), else instantiate. Convolutions are unfolded
(im2col) first, per group. Normalisation layers (BatchNorm in eval mode, LayerNorm, GroupNorm) have per-channel
affine parameters whose per-example gradients are sums of ``g * x_hat`` and ``g``: instantiated, cheap.

Anything this engine cannot prove exact is refused with a reason (see :func:`norms_support`), and
:func:`lightning_datadiet.grand` then falls back to the ``torch.func`` path (``method="auto"``) or raises
(``method="norms"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge
from torch.utils._pytree import tree_map

from lightning_datadiet.scores._checks import check_logits, check_targets

__all__ = ["norms_support", "grand_norms", "NormsUnsupportedError", "SUPPORTED_LAYERS"]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, *_BN, nn.LayerNorm, nn.GroupNorm, nn.Embedding
)
_EMBEDDING_GHOST_MAX_T = 8  # Gram of token equality up to 8 tokens per example, else index_add over unique tokens

RANDOMNESS_MESSAGE = (
    "grand: the model draws random numbers in eval mode (e.g. torch.rand/randn or F.dropout(..., training=True) in "
    "forward), so its per-example gradients are not defined. Make the randomness depend on `self.training` (as "
    "nn.Dropout does), or score a submodule without it (GraNdCallback: `logits_module=`)."
)


class NormsUnsupportedError(ValueError):
    """The norm-only engine cannot compute this model's per-example gradient norms exactly."""


def _layer_kind(module: nn.Module) -> type[nn.Module] | None:
    """The supported base class whose forward ``module`` runs unchanged, or None."""
    for base in SUPPORTED_LAYERS:
        if isinstance(module, base):
            same = type(module).forward is base.forward
            if base in (nn.Conv1d, nn.Conv2d):
                same = same and type(module)._conv_forward is base._conv_forward
            return base if same else None
    return None


def _trainable_direct(module: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in module._parameters.items() if p is not None and p.requires_grad}


def norms_support(model: nn.Module) -> str | None:
    """Why the norm-only engine cannot score ``model`` exactly (a sentence naming the layer), or None if it can.

    This is the static part of the check (module types and settings); :func:`grand_norms` also checks, while it
    runs, that no supported module is called twice and that every trainable parameter is used only inside its
    own module's forward, and raises :class:`NormsUnsupportedError` otherwise.
    """
    glob = nn.modules.module
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        if getattr(glob, attr, None):
            return "global module hooks are registered (torch.nn.modules.module.register_module_*_hook)"
    owner: dict[int, str] = {}
    for name, module in model.named_modules():
        params = _trainable_direct(module)
        if not params:
            continue
        label = f"module {name or '<root>'!r} ({type(module).__name__})"
        for p in params.values():
            if id(p) in owner:
                return f"{label} shares a trainable parameter with module {owner[id(p)]!r} (weight tying)"
            owner[id(p)] = name or "<root>"
        kind = _layer_kind(module)
        if kind is None:
            return (
                f"{label} owns trainable parameters ({', '.join(params)}) and is not one of the supported layers "
                f"({', '.join(c.__name__ for c in SUPPORTED_LAYERS)}) with their own forward"
            )
        if set(params) - {"weight", "bias"}:
            return f"{label} has extra trainable parameters {sorted(set(params) - {'weight', 'bias'})}"
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks:
            return f"{label} has its own forward/backward hooks, which may change what it computes"
        if kind in _BN and (module.running_mean is None or module.running_var is None):
            return f"{label} has track_running_stats=False, so it uses batch statistics even in eval mode"
        if kind is nn.Embedding and (module.max_norm is not None or module.scale_grad_by_freq):
            return f"{label} uses max_norm or scale_grad_by_freq (the gradient depends on the batch)"
    return None


# ----------------------------------------------------------------------------------------- per-layer squared norms


def _gram_or_matmul(a: Tensor, g: Tensor, strategy: str) -> Tensor:
    """``[N, T, d]`` inputs and ``[N, T, p]`` output gradients -> ``[N]`` squared Frobenius norms of ``g^T a``."""
    n, t, d = a.shape
    p = g.shape[2]
    if t == 1:
        return a.pow(2).sum((1, 2)) * g.pow(2).sum((1, 2))
    ghost = t * (d + p) < p * d if strategy == "auto" else strategy == "ghost"
    if ghost:
        return (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
    return torch.bmm(g.transpose(1, 2), a).pow(2).sum((1, 2))


def _linear(m: nn.Linear, x: Tensor, g: Tensor, strategy: str) -> Tensor:
    b = g.shape[0]
    g = g.reshape(b, -1, m.out_features)  # [B, T, p]
    sq = g.new_zeros(b)
    if m.bias is not None and m.bias.requires_grad:
        sq = sq + g.sum(1).pow(2).sum(1)
    if m.weight.requires_grad:
        sq = sq + _gram_or_matmul(x.reshape(b, -1, m.in_features), g, strategy)
    return sq


def _unfold(x: Tensor, kernel: tuple, dilation: tuple, padding: tuple, stride: tuple) -> Tensor:
    """im2col ``[B, C, H, W] -> [B, C*kh*kw, Ho*Wo]`` (``F.unfold``'s layout) as one strided copy, faster on CPU."""
    if any(padding):
        x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    b, c, h, w = x.shape
    (kh, kw), (dh, dw), (sh, sw) = kernel, dilation, stride
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    s0, s1, s2, s3 = x.stride()
    windows = x.as_strided((b, c, kh, kw, ho, wo), (s0, s1, dh * s2, dw * s3, sh * s2, sw * s3))
    return windows.reshape(b, c * kh * kw, ho * wo)


def _conv_weight_sq_stride1(x: Tensor, g: Tensor, kernel: tuple, dilation: tuple, padding: tuple, groups: int) -> Tensor:
    """Squared norms of per-example stride-1 conv weight gradients without an im2col copy.

    With the input zero-padded and flattened row by row (row length ``Wp``), the input window of kernel offset
    ``(i, j)`` is the contiguous slice starting at ``i*dh*Wp + j*dw``, provided the output gradient is laid out on
    the same ``Wp``-wide rows (zeros in the ``Wp - Wo`` extra columns, so the wrapped-around entries count 0).
    Each offset is then one batched matmul on a view: ``dW[:, :, :, i, j] = g' @ window^T``.
    """
    b, _, ho, wo = g.shape
    (kh, kw), (dh, dw), (ph, pw) = kernel, dilation, padding
    xp = F.pad(x, (pw, pw, ph, ph + (1 if kw > 1 else 0)))  # one extra row keeps the last window in bounds
    wp = xp.shape[3]
    flat = xp.flatten(2)  # [B, Ci, (Hp + 1) * Wp]
    gp = (F.pad(g, (0, wp - wo)) if wp != wo else g).reshape(b * groups, -1, ho * wp)  # [B*G, p, Ho*Wp]
    ci = flat.shape[1] // groups
    length = ho * wp
    sq = g.new_zeros(b * groups)
    for i in range(kh):
        for j in range(kw):
            start = i * dh * wp + j * dw
            window = flat[:, :, start : start + length].reshape(b * groups, ci, length)  # a view
            sq += torch.bmm(gp, window.transpose(1, 2)).pow(2).sum((1, 2))
    return sq.view(b, groups).sum(1)


def _conv(m: nn.Conv1d | nn.Conv2d, x: Tensor, g: Tensor, strategy: str) -> Tensor:
    b = g.shape[0]
    sq = g.new_zeros(b)
    if m.bias is not None and m.bias.requires_grad:
        sq = sq + g.flatten(2).sum(2).pow(2).sum(1)
    if not m.weight.requires_grad:
        return sq
    kernel, stride, dilation = m.kernel_size, m.stride, m.dilation
    padding = m.padding
    if isinstance(padding, str) or m.padding_mode != "zeros":  # pad exactly as the module does, then unfold
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        x = F.pad(x, m._reversed_padding_repeated_twice, mode=mode)
        padding = (0,) * len(kernel)
    if x.ndim == 3:  # Conv1d as a 1 x L Conv2d
        x, g = x.unsqueeze(2), g.unsqueeze(2)
        kernel, stride, dilation, padding = (1, *kernel), (1, *stride), (1, *dilation), (0, *padding)
    groups = m.groups
    t = g.shape[2] * g.shape[3]
    d, p = m.in_channels // groups * kernel[0] * kernel[1], m.out_channels // groups
    ghost = t * (d + p) < p * d if strategy == "auto" else strategy == "ghost"
    if not ghost and stride == (1, 1) and t > 1 and m.in_channels // groups >= 8:  # else im2col is cheaper
        return sq + _conv_weight_sq_stride1(x, g, kernel, dilation, padding, groups)
    u = _unfold(x, kernel, dilation, padding, stride)  # [B, Ci*k, T]
    t = u.shape[2]
    g = g.reshape(b * groups, m.out_channels // groups, t)  # [B*G, p, T]
    if g.shape[2] != t:
        raise NormsUnsupportedError(f"{type(m).__name__}: unfolded input and output gradient disagree in size")
    u = u.view(b * groups, u.shape[1] // groups, t)  # [B*G, d, T]
    per_group = _gram_or_matmul(u.transpose(1, 2), g.transpose(1, 2), "ghost" if ghost else "instantiate")
    return sq + per_group.view(b, groups).sum(1)


def _affine(m: nn.Module, g: Tensor, x_hat: Tensor | Callable[[], Tensor], keep: int) -> Tensor:
    """Per-example gradients of an affine ``weight * x_hat + bias``: sums of ``g * x_hat`` and ``g`` over every
    dimension but the batch and the ``keep`` parameter dimensions (given as a slice of dims)."""
    b = g.shape[0]
    sq = g.new_zeros(b)
    dims = keep
    if m.weight is not None and m.weight.requires_grad:
        gw = g * (x_hat() if callable(x_hat) else x_hat)
        sq = sq + (gw.sum(dims) if dims else gw).reshape(b, -1).pow(2).sum(1)
    if getattr(m, "bias", None) is not None and m.bias.requires_grad:
        sq = sq + (g.sum(dims) if dims else g).reshape(b, -1).pow(2).sum(1)
    return sq


def _batchnorm(m: nn.Module, x: Tensor, g: Tensor, strategy: str) -> Tensor:
    if m.training:
        raise NormsUnsupportedError(f"{type(m).__name__} ran in training mode (batch statistics)")
    b, c = x.shape[:2]
    sq = g.new_zeros(b)
    g3 = g.reshape(b, c, -1)  # [B, C, S]
    if m.weight is not None and m.weight.requires_grad:  # sum_s g * (x - mean) / sqrt(var + eps), per channel
        centred = x.reshape(b, c, -1) - m.running_mean.view(1, c, 1)
        gx = (g3 * centred).sum(2) * torch.rsqrt(m.running_var + m.eps)
        sq = sq + gx.pow(2).sum(1)
    if m.bias is not None and m.bias.requires_grad:
        sq = sq + g3.sum(2).pow(2).sum(1)
    return sq


def _layernorm(m: nn.LayerNorm, x: Tensor, g: Tensor, strategy: str) -> Tensor:
    k = len(m.normalized_shape)
    if x.ndim <= k:
        raise NormsUnsupportedError("LayerNorm normalises over the batch dimension")
    norm_dims = tuple(range(x.ndim - k, x.ndim))

    def x_hat() -> Tensor:
        var, mean = torch.var_mean(x, norm_dims, correction=0, keepdim=True)
        return (x - mean) * torch.rsqrt(var + m.eps)

    return _affine(m, g, x_hat, tuple(range(1, x.ndim - k)))


def _groupnorm(m: nn.GroupNorm, x: Tensor, g: Tensor, strategy: str) -> Tensor:
    b = x.shape[0]

    def x_hat() -> Tensor:
        xr = x.reshape(b, m.num_groups, -1)
        var, mean = torch.var_mean(xr, 2, correction=0, keepdim=True)
        return ((xr - mean) * torch.rsqrt(var + m.eps)).view_as(x)

    return _affine(m, g, x_hat, tuple(range(2, x.ndim)))


def _embedding(m: nn.Embedding, ids: Tensor, g: Tensor, strategy: str) -> Tensor:
    b = ids.shape[0]
    ids = ids.reshape(b, -1)  # [B, T]
    g = g.reshape(b, ids.shape[1], m.embedding_dim)  # [B, T, D]
    if m.padding_idx is not None:  # the padding row gets no gradient
        g = g * (ids != m.padding_idx).unsqueeze(-1).to(g.dtype)
    t = ids.shape[1]
    ghost = t <= _EMBEDDING_GHOST_MAX_T if strategy == "auto" else strategy == "ghost"
    if ghost:  # sum_{t,t'} [id_t == id_t'] (g_t . g_t')
        same = (ids.unsqueeze(2) == ids.unsqueeze(1)).to(g.dtype)
        return (same * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
    # instantiate only the rows each example touches: one row per distinct (example, token) pair
    keys = (torch.arange(b, device=ids.device).unsqueeze(1) * m.num_embeddings + ids).reshape(-1)
    unique, inverse = torch.unique(keys, return_inverse=True)
    rows = g.new_zeros(unique.shape[0], m.embedding_dim).index_add_(0, inverse, g.reshape(-1, m.embedding_dim))
    return g.new_zeros(b).index_add_(0, unique // m.num_embeddings, rows.pow(2).sum(1))


_RULES: dict[type[nn.Module], Callable[[Any, Tensor, Tensor, str], Tensor]] = {
    nn.Linear: _linear, nn.Conv1d: _conv, nn.Conv2d: _conv, nn.LayerNorm: _layernorm,
    nn.GroupNorm: _groupnorm, nn.Embedding: _embedding, **dict.fromkeys(_BN, _batchnorm),
}

# ------------------------------------------------------------------------------------------------------- the pass


def _graph_consumers(root: Any) -> dict[int, int]:
    """Walk the autograd graph from ``root``: for every leaf tensor, how many graph edges lead into it."""
    counts: dict[int, int] = {}
    seen, stack = {root}, [root]
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            var = getattr(nxt, "variable", None)
            if var is not None:
                counts[id(var)] = counts.get(id(var), 0) + 1
            elif nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return counts


def _local_consumers(out_node: Any, stop: set[Any]) -> dict[int, int]:
    """The same count, inside one module call: from its output's node down to (not through) its input's node."""
    counts: dict[int, int] = {}
    seen, stack = {out_node}, [out_node]
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:
            if nxt is None or nxt in stop:
                continue
            var = getattr(nxt, "variable", None)
            if var is not None:
                counts[id(var)] = counts.get(id(var), 0) + 1
            elif nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return counts


def _rng_states(device: torch.device) -> list[Tensor]:
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def _one_pass(
    model: nn.Module, plan: dict[nn.Module, str], inputs: Any, targets: Tensor, strategy: str
) -> tuple[Tensor, Tensor]:
    """Squared per-example gradient norms ``[B]`` and logits ``[B, K]`` of one chunk (model already in eval mode)."""
    calls: dict[nn.Module, list[tuple[Any, ...]]] = {m: [] for m in plan}

    def keep(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        entry: tuple[Any, ...] = (args, kwargs, output)
        if len(args) == 1 and not kwargs and isinstance(args[0], Tensor) and isinstance(output, Tensor):
            x = args[0]
            out_edge = get_gradient_edge(output) if output.requires_grad else None
            in_node = get_gradient_edge(x).node if x.requires_grad else None
            entry = (x, output.shape, out_edge, in_node)
        calls[module].append(entry)

    batch = targets.shape[0]
    handles = [m.register_forward_hook(keep, with_kwargs=True) for m in plan]
    device = targets.device
    rng_before = _rng_states(device)
    try:
        logits = model(inputs)
    finally:
        for h in handles:
            h.remove()
    if any(not torch.equal(a, b) for a, b in zip(rng_before, _rng_states(device))):
        raise RuntimeError(RANDOMNESS_MESSAGE)
    if not isinstance(logits, Tensor):  # the same refusal as the vmap path
        raise ValueError(
            f"grand: the model must return [B, K] logits; got {type(logits).__name__}. If its forward returns a "
            "tuple or dict, score the submodule that returns the logits (GraNdCallback: `logits_module=`)."
        )
    check_logits(logits, what="grand", batch_size=batch)
    check_targets(targets, batch, logits.shape[1], what="grand")
    for m, seen in calls.items():
        if len(seen) > 1:
            raise NormsUnsupportedError(f"module {plan[m]!r} ({type(m).__name__}) is called {len(seen)} times in one forward (shared weights)")
        if seen and len(seen[0]) == 3:
            raise NormsUnsupportedError(f"module {plan[m]!r} ({type(m).__name__}) is called with other than one tensor")
        if seen and (seen[0][0].shape[0] != batch or seen[0][1][0] != batch):
            raise NormsUnsupportedError(
                f"module {plan[m]!r} ({type(m).__name__}) sees inputs/outputs whose first dimension is not the batch "
                f"({tuple(seen[0][0].shape)} for a batch of {batch})"
            )
    if not logits.requires_grad:
        raise NormsUnsupportedError("the logits do not depend on any trainable parameter through autograd")
    loss = F.cross_entropy(logits, targets, reduction="sum")  # row i of every output gradient is example i's own

    # every trainable parameter must be reached only from inside its own module's (single) call
    everywhere = _graph_consumers(loss.grad_fn)
    used = [(m, c[0]) for m, c in calls.items() if c and c[0][2] is not None]
    for m, (_, _, edge, in_node) in used:
        inside = _local_consumers(edge.node, {in_node} if in_node is not None else set())
        for pname, p in _trainable_direct(m).items():
            if everywhere.get(id(p), 0) != inside.get(id(p), 0):
                raise NormsUnsupportedError(
                    f"parameter {plan[m]}.{pname} is used outside the forward of its module {plan[m]!r} "
                    f"({type(m).__name__}), e.g. a direct use of the weight in a parent's forward"
                )
    reached = {id(p) for m, _ in used for p in _trainable_direct(m).values()}
    for m in plan:
        for pname, p in _trainable_direct(m).items():
            if id(p) not in reached and everywhere.get(id(p), 0):
                raise NormsUnsupportedError(
                    f"parameter {plan[m]}.{pname} is used although its module {plan[m]!r} ({type(m).__name__}) "
                    "never ran as a module (e.g. F.linear(x, layer.weight) in a parent's forward)"
                )

    grads = torch.autograd.grad(loss, [e for _, (_, _, e, _) in used], allow_unused=True)
    sq = logits.new_zeros(batch)
    for (m, (x, _, _, _)), g in zip(used, grads):
        if g is not None:
            sq = sq + _RULES[_layer_kind(m)](m, x.detach(), g, strategy).to(sq.dtype)
    return sq.detach(), logits.detach()


def grand_norms(
    model: nn.Module, inputs: Any, targets: Tensor, *, chunk_size: int | None = None, strategy: str = "auto"
) -> tuple[Tensor, Tensor]:
    """Per-example GraNd ``[B]`` and logits ``[B, K]`` by the norm-only engine. The caller puts the model in eval
    mode, enables grad and validates the arguments (see :func:`lightning_datadiet.grand`).

    Args:
        model: the model (in eval mode).
        inputs: a tensor ``[B, ...]`` or a tuple/list/dict of them.
        targets: ``[B]`` int64 class ids.
        chunk_size: examples per forward + backward pass (``None``: the whole batch). Results do not depend on it;
            peak memory grows with it like a training step's with its batch size.
        strategy: ``"auto"`` (the cheaper exact form per layer), or force ``"ghost"`` / ``"instantiate"`` for
            Linear, Conv and Embedding layers (tests).

    Raises:
        NormsUnsupportedError: the model is outside what the engine computes exactly (the message says why).
        RuntimeError: the model draws random numbers in eval mode.
    """
    reason = norms_support(model)
    if reason is not None:
        raise NormsUnsupportedError(reason)
    plan = {m: n or "<root>" for n, m in model.named_modules() if _trainable_direct(m)}
    batch = targets.shape[0]
    step = batch if chunk_size is None else chunk_size
    parts = [
        _one_pass(model, plan, tree_map(lambda t, i=i: t[i : i + step], inputs), targets[i : i + step], strategy)
        for i in range(0, batch, step)
    ]
    sq = torch.cat([p[0] for p in parts])
    logits = torch.cat([p[1] for p in parts])
    norms = sq.clamp_min(0).sqrt()
    if batch > 1:  # examples must not interact: the largest norm, scored alone, must come out the same
        i = int(norms.argmax())
        alone = _one_pass(model, plan, tree_map(lambda t: t[i : i + 1], inputs), targets[i : i + 1], strategy)[0]
        alone = alone.clamp_min(0).sqrt()[0]
        rtol = {torch.float64: 1e-6, torch.float32: 1e-3}.get(norms.dtype, 5e-2)
        if not bool((alone - norms[i]).abs() <= rtol * norms[i] + torch.finfo(norms.dtype).tiny):
            raise NormsUnsupportedError(
                f"example {i}'s gradient norm is {float(norms[i]):.6g} in the batch but {float(alone):.6g} alone: the "
                "model's output for an example depends on the other examples (batch statistics, a batch-first "
                "layout that is not [B, ...], or cross-example operations in forward)"
            )
    return norms, logits
