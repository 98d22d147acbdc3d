r"""Per-layer rules of the norm-only GraNd engine: from a layer's input ``x`` and its output gradient ``g`` (row
``i`` = example ``i``'s own), the exact squared norm ``[B]`` of every example's gradient of that layer's own
parameters. Used by :mod:`lightning_datadiet.scores.grand_norms`, which runs each rule during the backward pass.

Every rule works on chunks of examples whose temporaries fit ``_WORKSPACE_BYTES`` (about the size of a core's L2
cache): large one-shot temporaries cost more in allocation, page faults and memory traffic than the arithmetic.
Norms are reduced with one fused reduction (``vector_norm``), never by materialising the squares.

Forms of a weight gradient ``sum_t g_t a_t^T`` (``T`` positions per example, ``d`` input and ``p`` output features
per group; for a convolution ``d = C_in / groups x kernel size``):

* ``"ghost"`` (Gram): ``sum_{t,t'} (a_t . a_t')(g_t . g_t')``, ``T^2 (d + p)`` multiply-adds per example; for a
  convolution the Gram of the unfolded input (``"ghost_unfold"``) or, cheaper when positions are few, built from the
  Gram of the input itself (``"ghost_input"``, ``S^2 C_in/groups`` for ``S`` input positions, no im2col);
* ``"instantiate"``: the per-example gradient ``g^T a`` by a batched matmul (a convolution's input unfolded,
  im2col, per chunk), ``T p d``;
* ``"grouped"`` (convolutions only): the per-example weight gradient as one grouped convolution weight-gradient
  over the chunk (``groups = chunk x groups``, :func:`torch.nn.grad.conv2d_weight`), ``T p d`` with no im2col copy;
  the fastest instantiation on CPU for spatial kernels with 8 to 64 input channels per group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STRATEGIES = ("auto", "ghost", "ghost_input", "ghost_unfold", "instantiate", "grouped")
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_EMBEDDING_GHOST_MAX_T = 8  # Gram of token equality up to 8 tokens per example, else index_add over unique tokens
_WORKSPACE_BYTES = 2**21  # CPU temporaries per chunk of examples (tests lower it to exercise many uneven chunks)
_ACCELERATOR_WORKSPACE_BYTES = 2**28  # the same on CUDA and other accelerators (not measured here)
_GROUPED_CHANNELS = (8, 64)  # input channels per group for which the grouped conv weight-gradient is the fastest
_COPY_COST = 16  # multiply-adds one element of an im2col copy is worth (measured on CPU)


class NormsUnsupportedError(ValueError):
    """The norm-only engine cannot compute this model's per-example gradient norms exactly."""


def _chunks(n: int, per_example_bytes: int, device: torch.device | None = None) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of examples whose temporaries fit the workspace (larger on accelerators, where
    many small kernels cost more than memory traffic)."""
    budget = _WORKSPACE_BYTES if device is None or device.type == "cpu" else _ACCELERATOR_WORKSPACE_BYTES
    step = max(1, min(n, budget // max(1, per_example_bytes)))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _sq(v: Tensor) -> Tensor:
    """``[c, ...]`` -> ``[c]`` squared Frobenius norms, one fused reduction."""
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1).square()


def _trainable(p: Tensor | None) -> bool:
    return p is not None and p.requires_grad


def _gram_costs(t: int, d: int, channels: int, positions: int) -> tuple[int, int]:
    """Multiply-adds per example of the two Grams of the ghost form: of the input, and of the unfolded input (plus
    its im2col copy, counted as ``_COPY_COST`` multiply-adds per element: copies are bound by memory traffic)."""
    return positions * positions * channels, t * t * d + _COPY_COST * t * d


def conv_form(t: int, d: int, p: int, channels: int, kernel: int, positions: int) -> str:
    """The form ``"auto"`` picks for a convolution, per group: ``t`` output positions, ``d`` unfolded input
    features, ``p`` outputs, ``channels`` input channels, ``kernel`` kernel positions, ``positions`` input
    positions (zero padding excluded). By multiply-adds per example (ghost: the cheaper of its two Grams, plus ``t^2 p`` for the
    output gradient's), then, among the instantiations (``t p d``), by measured speed."""
    if min(_gram_costs(t, d, channels, positions)) + t * t * p < t * p * d:
        return "ghost"
    lo, hi = _GROUPED_CHANNELS
    return "grouped" if kernel > 1 and lo <= channels <= hi else "instantiate"


def ghost_form(t: int, d: int, channels: int, positions: int) -> str:
    """The Gram the ghost form uses for a convolution: of the input (``"ghost_input"``) or of the unfolded input
    (``"ghost_unfold"``), whichever costs fewer multiply-adds (see :func:`_gram_costs`)."""
    of_input, of_unfolded = _gram_costs(t, d, channels, positions)
    return "ghost_input" if of_input <= of_unfolded else "ghost_unfold"


def _gram_or_matmul(a: Tensor, g: Tensor, form: str) -> Tensor:
    """``[N, T, d]`` inputs and ``[N, T, p]`` output gradients -> ``[N]`` squared Frobenius norms of ``g^T a``."""
    n, t, d = a.shape
    p = g.shape[2]
    if t == 1:
        return _sq(a) * _sq(g)
    out = g.new_empty(n)
    ghost = form == "ghost" or (form == "auto" and t * (d + p) < p * d)
    per = (2 * t * t if ghost else p * d) * g.element_size()
    for i, j in _chunks(n, per, g.device):
        ai, gi = a[i:j], g[i:j]
        if ghost:
            out[i:j] = torch.bmm(ai, ai.transpose(1, 2)).mul_(torch.bmm(gi, gi.transpose(1, 2))).sum((1, 2))
        else:
            out[i:j] = _sq(torch.bmm(gi.transpose(1, 2), ai))
    return out


def _linear(m: nn.Linear, x: Tensor, g: Tensor, strategy: str) -> Tensor:
    b = g.shape[0]
    g = g.reshape(b, -1, m.out_features)  # [B, T, p]
    sq = g.new_zeros(b)
    if _trainable(m.bias):
        sq += _sq(g.sum(1))
    if _trainable(m.weight):
        form = "ghost" if strategy.startswith("ghost") else "instantiate" if strategy == "grouped" else strategy
        sq += _gram_or_matmul(x.reshape(b, -1, m.in_features), g, form)
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


def _conv(m: nn.Conv1d | nn.Conv2d, x: Tensor, g: Tensor, strategy: str) -> Tensor:
    b = g.shape[0]
    sq = g.new_zeros(b)
    if _trainable(m.bias):
        sq += _sq(g.flatten(2).sum(2))
    if not _trainable(m.weight):
        return sq
    kernel, stride, dilation, padding = m.kernel_size, m.stride, m.dilation, m.padding
    if isinstance(padding, str) or m.padding_mode != "zeros":  # pad exactly as the module does
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        x = F.pad(x, m._reversed_padding_repeated_twice, mode=mode)
        padding = (0,) * len(kernel)
    if x.ndim == 3:  # Conv1d as a 1 x L Conv2d
        x, g = x.unsqueeze(2), g.unsqueeze(2)
        kernel, stride, dilation, padding = (1, *kernel), (1, *stride), (1, *dilation), (0, *padding)
    groups, c_in, c_out = m.groups, m.in_channels, m.out_channels
    ci, p, k = c_in // groups, c_out // groups, kernel[0] * kernel[1]
    ho, wo = g.shape[2], g.shape[3]
    t, d = ho * wo, ci * k
    h, w = x.shape[2], x.shape[3]
    form = conv_form(t, d, p, ci, k, h * w) if strategy == "auto" else strategy
    if form == "ghost":
        form = ghost_form(t, d, ci, h * w)
    el = g.element_size()
    if form == "grouped":
        for i, j in _chunks(b, groups * p * d * el, g.device):
            c = j - i
            dw = torch.nn.grad.conv2d_weight(
                x[i:j].reshape(1, c * c_in, h, w), (c * c_out, ci, *kernel), g[i:j].reshape(1, c * c_out, ho, wo),
                stride, padding, dilation, c * groups,
            )
            sq[i:j] += _sq(dw.view(c, -1))
        return sq
    if form == "ghost_input":
        for i, j in _chunks(b, groups * ((h * w) ** 2 + 2 * t * t) * el, g.device):
            sq[i:j] += _input_gram_sq(x[i:j], g[i:j], groups, kernel, dilation, padding, stride)
        return sq
    ghost = form == "ghost_unfold"
    for i, j in _chunks(b, groups * (d * t + (2 * t * t if ghost else p * d)) * el, g.device):
        c = j - i
        u = _unfold(x[i:j], kernel, dilation, padding, stride)  # [c, C_in*k, T]
        if u.shape[2] != t:
            raise NormsUnsupportedError(f"{type(m).__name__}: unfolded input and output gradient disagree in size")
        u = u.view(c * groups, d, t)
        gc = g[i:j].reshape(c * groups, p, t)
        if ghost:
            per_group = torch.bmm(u.transpose(1, 2), u).mul_(torch.bmm(gc.transpose(1, 2), gc)).sum((1, 2))
        else:
            per_group = _sq(torch.bmm(u, gc.transpose(1, 2)))  # [d, p]: faster than [p, d] for small d, large T
        sq[i:j] += per_group.view(c, groups).sum(1)
    return sq


def _valid(size: int, out: int, offset: int, pad: int, step: int) -> tuple[int, int, int]:
    """Output positions ``[lo, hi)`` whose input position ``o * step + offset - pad`` lies inside ``[0, size)``, and
    the input position of ``lo``."""
    lo = max(0, -((offset - pad) // step))  # ceil((pad - offset) / step)
    hi = min(out, (size - 1 + pad - offset) // step + 1)
    return lo, max(lo, hi), lo * step + offset - pad


def _input_gram_sq(x: Tensor, g: Tensor, groups: int, kernel: tuple, dilation: tuple, padding: tuple,
                   stride: tuple) -> Tensor:
    """Ghost norm of a convolution's per-example weight gradient from the Gram of its *input* (no im2col).

    With ``K[s, s'] = x_s . x_s'`` over input positions and ``o`` a kernel offset, the unfolded input's Gram is
    ``sum_o K[pos_o(t), pos_o(t')]`` (zero where a position falls into the zero padding), so
    ``||dW||^2 = sum_{t,t'} (g_t . g_t') sum_o K[pos_o(t), pos_o(t')]``: the positions of one offset form a strided
    block of ``K``, the same for ``t`` and ``t'``.
    """
    c, c_in, h, w = x.shape
    ho, wo = g.shape[2], g.shape[3]
    n = c * groups
    xs = x.reshape(n, c_in // groups, h * w)
    gram = torch.bmm(xs.transpose(1, 2), xs).view(n, h, w, h, w)
    shifted = gram.new_zeros(n, ho, wo, ho, wo)
    for i in range(kernel[0]):
        r0, r1, a0 = _valid(h, ho, i * dilation[0], padding[0], stride[0])
        rows = slice(a0, a0 + (r1 - r0 - 1) * stride[0] + 1, stride[0])
        for j in range(kernel[1]):
            q0, q1, b0 = _valid(w, wo, j * dilation[1], padding[1], stride[1])
            if r1 > r0 and q1 > q0:
                cols = slice(b0, b0 + (q1 - q0 - 1) * stride[1] + 1, stride[1])
                shifted[:, r0:r1, q0:q1, r0:r1, q0:q1] += gram[:, rows, cols, rows, cols]
    gt = g.reshape(n, -1, ho * wo)
    out = shifted.view(n, -1).mul_(torch.bmm(gt.transpose(1, 2), gt).view(n, -1)).sum(1)
    return out.view(c, groups).sum(1)


def _affine(m: nn.Module, x: Tensor | None, g: Tensor, x_hat: Callable[[Tensor], Tensor], dims: tuple[int, ...]) -> Tensor:
    """Per-example gradients of an affine ``weight * x_hat + bias``: sums of ``g * x_hat`` and ``g`` over ``dims``
    (every dimension but the batch and the parameter's), chunk by chunk; ``x_hat`` maps a chunk of ``x``."""
    b = g.shape[0]
    sq = g.new_zeros(b)
    if _trainable(m.weight):
        for i, j in _chunks(b, 2 * g[0].numel() * g.element_size(), g.device):
            gw = x_hat(x[i:j]).mul_(g[i:j])
            sq[i:j] += _sq(gw.sum(dims) if dims else gw)
    if _trainable(getattr(m, "bias", None)):
        sq += _sq(g.sum(dims) if dims else g)
    return sq


def _batchnorm(m: nn.Module, x: Tensor | None, g: Tensor, strategy: str) -> Tensor:
    if m.training:
        raise NormsUnsupportedError(f"{type(m).__name__} ran in training mode (batch statistics)")

    def x_hat(xc: Tensor) -> Tensor:  # (x - running_mean) / sqrt(running_var + eps), one fused kernel
        return F.batch_norm(xc, m.running_mean, m.running_var, training=False, eps=m.eps)

    return _affine(m, x, g, x_hat, tuple(range(2, g.ndim)))


def _layernorm(m: nn.LayerNorm, x: Tensor | None, g: Tensor, strategy: str) -> Tensor:
    k = len(m.normalized_shape)
    if g.ndim <= k:
        raise NormsUnsupportedError("LayerNorm normalises over the batch dimension")
    return _affine(m, x, g, lambda xc: F.layer_norm(xc, m.normalized_shape, eps=m.eps), tuple(range(1, g.ndim - k)))


def _groupnorm(m: nn.GroupNorm, x: Tensor | None, g: Tensor, strategy: str) -> Tensor:
    return _affine(m, x, g, lambda xc: F.group_norm(xc, m.num_groups, eps=m.eps), tuple(range(2, g.ndim)))


def _embedding(m: nn.Embedding, ids: Tensor, g: Tensor, strategy: str) -> Tensor:
    b = ids.shape[0]
    ids = ids.reshape(b, -1)  # [B, T]
    g = g.reshape(b, ids.shape[1], m.embedding_dim)  # [B, T, D]
    if m.padding_idx is not None:  # the padding row gets no gradient
        g = g * (ids != m.padding_idx).unsqueeze(-1).to(g.dtype)
    t = ids.shape[1]
    ghost = t <= _EMBEDDING_GHOST_MAX_T if strategy == "auto" else strategy.startswith("ghost")
    if ghost:  # sum_{t,t'} [id_t == id_t'] (g_t . g_t')
        same = (ids.unsqueeze(2) == ids.unsqueeze(1)).to(g.dtype)
        return (same * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
    # instantiate only the rows each example touches: one row per distinct (example, token) pair
    keys = (torch.arange(b, device=ids.device).unsqueeze(1) * m.num_embeddings + ids).reshape(-1)
    unique, inverse = torch.unique(keys, return_inverse=True)
    rows = g.new_zeros(unique.shape[0], m.embedding_dim).index_add_(0, inverse, g.reshape(-1, m.embedding_dim))
    return g.new_zeros(b).index_add_(0, unique // m.num_embeddings, rows.pow(2).sum(1))


RULES: dict[type[nn.Module], Callable[[Any, Tensor, Tensor, str], Tensor]] = {
    nn.Linear: _linear, nn.Conv1d: _conv, nn.Conv2d: _conv, nn.LayerNorm: _layernorm,
    nn.GroupNorm: _groupnorm, nn.Embedding: _embedding, **dict.fromkeys(_BN, _batchnorm),
}


def needs_input(m: nn.Module) -> bool:
    """Whether the rule for ``m`` reads the layer's input (only weights need it; biases need ``g`` alone)."""
    return _trainable(getattr(m, "weight", None))
