"""Empirical neural tangent kernel (NTK) and kernel velocity per score group.

The empirical NTK of a network ``f_w`` on ``n`` inputs with ``K`` logits is the ``(n K) x (n K)`` Gram matrix
``G = J J^T`` of the logit Jacobian ``J = d f_w(x) / d w`` (``[n K, P]``) with respect to all trainable
parameters. Row ``i * K + k`` belongs to logit ``k`` of example ``i``. The kernel velocity between two weight
sets is the kernel distance (one minus the cosine similarity in Frobenius inner product)::

    velocity = 1 - <G_a, G_b>_F / (||G_a||_F ||G_b||_F)

The paper sorts examples by EL2N, takes groups of adjacent ranks, and measures the velocity of each group's
kernel between consecutive epochs: higher-EL2N groups move faster, and under label noise the very highest
groups slow down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from lightning_datadiet._utils import eval_mode

__all__ = [
    "empirical_ntk",
    "kernel_velocity",
    "velocity_by_group",
    "velocity_report",
    "plot_velocity_by_group",
]


def _logit_jacobian_fn(model: nn.Module):
    """``x [c, ...] -> {name: Tensor[c * K, P_name]}``, the logit Jacobian per trainable parameter tensor."""
    trainable = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    fixed = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))
    if not trainable:
        raise ValueError("The model has no parameter with requires_grad=True: its empirical NTK is empty.")

    def logits(params: dict[str, Tensor], x: Tensor) -> Tensor:
        out = functional_call(model, {**params, **fixed}, (x.unsqueeze(0),))  # [1, K]
        if not isinstance(out, Tensor):
            raise TypeError(f"The model must return a logits tensor [B, K], got {type(out).__name__}.")
        return out.reshape(-1)  # [K]

    per_example = vmap(jacrev(logits), in_dims=(None, 0))

    def jacobian(x: Tensor) -> dict[str, Tensor]:
        jac = per_example(trainable, x)  # name -> [c, K, *shape]
        return {name: j.reshape(j.shape[0] * j.shape[1], -1) for name, j in jac.items()}

    return jacobian


def _gram(ja: dict[str, Tensor], jb: dict[str, Tensor]) -> Tensor:
    """``sum_p J_a[p] J_b[p]^T`` in float64: ``[rows_a, rows_b]``."""
    return sum(ja[name].to(torch.float64) @ jb[name].to(torch.float64).T for name in ja)  # type: ignore[return-value]


def _device(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def empirical_ntk(model: nn.Module, inputs: Tensor, *, chunk_size: int | None = None) -> Tensor:
    """The empirical NTK ``G = J J^T`` of ``model`` on ``inputs``.

    Computed with ``torch.func`` (``vmap`` over examples of ``jacrev`` of a ``functional_call``) with respect to
    every parameter with ``requires_grad=True``; buffers (BatchNorm running statistics) are constants. The model
    is put in eval mode for the computation (BatchNorm uses its running statistics, dropout is off, examples
    do not interact) and every submodule's training flag is restored afterwards. The model is not modified.

    Memory: with ``chunk_size=c`` only the Jacobians of two chunks (``2 c K P`` numbers) are held at a time and
    ``G`` is filled block by block; the Jacobian of chunk ``j`` is recomputed for each chunk ``i <= j``
    (``C (C + 1) / 2`` Jacobian passes for ``C`` chunks). ``chunk_size=None`` uses one chunk.

    Args:
        model: maps ``[B, ...]`` inputs to ``[B, K]`` logits.
        inputs: ``[n, ...]`` inputs (moved to the model's device).
        chunk_size: examples per Jacobian chunk.

    Returns:
        ``float64[n K, n K]`` on the model's device; row ``i * K + k`` is logit ``k`` of example ``i``.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive int or None, got {chunk_size}.")
    inputs = inputs.to(_device(model))
    n = inputs.shape[0]
    c = n if chunk_size is None else chunk_size
    starts = list(range(0, n, max(c, 1)))
    with eval_mode(model), torch.no_grad():
        jacobian = _logit_jacobian_fn(model)
        blocks: dict[tuple[int, int], Tensor] = {}
        for bi, si in enumerate(starts):
            ji = jacobian(inputs[si : si + c])
            for bj in range(bi, len(starts)):
                jj = ji if bj == bi else jacobian(inputs[starts[bj] : starts[bj] + c])
                blocks[bi, bj] = _gram(ji, jj)
                del jj
        if not blocks:
            return torch.zeros(0, 0, dtype=torch.float64, device=inputs.device)
        rows = [
            torch.cat([blocks[i, j] if j >= i else blocks[j, i].T for j in range(len(starts))], dim=1)
            for i in range(len(starts))
        ]
        return torch.cat(rows, dim=0)


def _kernel_distance(ga: Tensor, gb: Tensor) -> float:
    if ga.shape != gb.shape:
        raise ValueError(f"The two kernels differ in shape: {tuple(ga.shape)} vs {tuple(gb.shape)}.")
    ga, gb = ga.to(torch.float64), gb.to(torch.float64)
    denom = torch.linalg.matrix_norm(ga) * torch.linalg.matrix_norm(gb)
    return float(1.0 - (ga * gb).sum() / denom)


def kernel_velocity(
    model_a: nn.Module, model_b: nn.Module, inputs: Tensor, *, chunk_size: int | None = None
) -> float:
    """Kernel distance between the empirical NTKs of two models on the same inputs.

    ``1 - <G_a, G_b>_F / (||G_a||_F ||G_b||_F)``, accumulated in float64. It is 0 when the kernels are
    proportional (in particular for a model with itself) and at most 1 for positive semi-definite kernels.

    Args:
        model_a: first model (e.g. the checkpoint at epoch t).
        model_b: second model with the same output size (e.g. epoch t + 1), on the same device.
        inputs: ``[n, ...]`` inputs.
        chunk_size: examples per Jacobian chunk (see :func:`empirical_ntk`).

    Returns:
        The velocity as a Python float.
    """
    return _kernel_distance(
        empirical_ntk(model_a, inputs, chunk_size=chunk_size),
        empirical_ntk(model_b, inputs, chunk_size=chunk_size),
    )


def _groups(scores: Tensor, group_size: int) -> Tensor:
    """Indices sorted by ascending score (ties by index), cut into ``[G, group_size]`` groups of adjacent ranks.

    The ``N mod group_size`` lowest-scoring examples are left out so that the highest scores are always grouped.
    """
    scores = torch.as_tensor(scores).detach().to("cpu", torch.float64).reshape(-1)
    if group_size < 1 or group_size > scores.numel():
        raise ValueError(f"`group_size` must be in [1, {scores.numel()}], got {group_size}.")
    order = torch.sort(scores, stable=True).indices
    num_groups = scores.numel() // group_size
    return order[scores.numel() - num_groups * group_size :].reshape(num_groups, group_size)


def velocity_by_group(
    model_a: nn.Module,
    model_b: nn.Module,
    inputs: Tensor,
    scores: Tensor,
    group_size: int,
    *,
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """Kernel velocity between two models on groups of examples with adjacent scores.

    Examples are sorted by ascending score (ties by index) and cut into groups of ``group_size`` adjacent ranks;
    the ``N mod group_size`` lowest-scoring examples are left out. Each group's velocity is
    :func:`kernel_velocity` on that group's inputs (the NTK of the group alone).

    Args:
        model_a: model at time t.
        model_b: model at time t + 1.
        inputs: ``[N, ...]`` inputs, in the order of ``scores``.
        scores: ``[N]`` scores (e.g. EL2N).
        group_size: examples per group.
        chunk_size: examples per Jacobian chunk.

    Returns:
        ``{"velocity": float64[G], "mean_score": float64[G], "rank_start": int64[G], "groups": int64[G, group_size]}``
        with groups in ascending score order; ``rank_start`` is the ascending rank of each group's first example.
    """
    scores = torch.as_tensor(scores).detach().to("cpu", torch.float64).reshape(-1)
    if inputs.shape[0] != scores.numel():
        raise ValueError(f"`inputs` has {inputs.shape[0]} examples but `scores` has {scores.numel()}.")
    groups = _groups(scores, group_size)  # [G, group_size]
    velocity = torch.tensor(
        [
            kernel_velocity(model_a, model_b, inputs[g.to(inputs.device)], chunk_size=chunk_size)
            for g in groups
        ],
        dtype=torch.float64,
    )
    offset = scores.numel() - groups.numel()
    return {
        "velocity": velocity,
        "mean_score": scores[groups].mean(dim=1),
        "rank_start": offset + group_size * torch.arange(groups.shape[0]),
        "groups": groups,
    }


def velocity_report(
    models: Sequence[nn.Module],
    inputs: Tensor,
    scores: Tensor,
    group_size: int,
    *,
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    """Per-group kernel velocity between consecutive checkpoints ``models[t]`` and ``models[t + 1]``.

    Args:
        models: ``T >= 2`` models (e.g. the checkpoints of epochs 0..T-1).
        inputs: ``[N, ...]`` inputs.
        scores: ``[N]`` scores that define the groups (e.g. EL2N at a fixed epoch).
        group_size: examples per group.
        chunk_size: examples per Jacobian chunk.

    Returns:
        ``{"velocity": float64[T - 1, G], "mean_score": float64[G], "rank_start": int64[G],
        "groups": int64[G, group_size]}``.
    """
    if len(models) < 2:
        raise ValueError("`velocity_report` needs at least two models.")
    scores = torch.as_tensor(scores).detach().to("cpu", torch.float64).reshape(-1)
    if inputs.shape[0] != scores.numel():
        raise ValueError(f"`inputs` has {inputs.shape[0]} examples but `scores` has {scores.numel()}.")
    groups = _groups(scores, group_size)  # [G, group_size]
    velocity = torch.empty(len(models) - 1, groups.shape[0], dtype=torch.float64)
    for g, members in enumerate(groups):
        # One kernel per model and group: each inner checkpoint's kernel serves two velocities.
        grams = [empirical_ntk(m, inputs[members.to(inputs.device)], chunk_size=chunk_size) for m in models]
        for t in range(len(models) - 1):
            velocity[t, g] = _kernel_distance(grams[t], grams[t + 1])
    offset = scores.numel() - groups.numel()
    return {
        "velocity": velocity,
        "mean_score": scores[groups].mean(dim=1),
        "rank_start": offset + group_size * torch.arange(groups.shape[0]),
        "groups": groups,
    }


def plot_velocity_by_group(
    velocity: Tensor | Mapping[str, Tensor],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    xlabel: str = "group (ascending score)",
    **plot_kwargs: Any,
) -> Path:
    """Plot velocity against the group index, one line per row or per named entry.

    Args:
        velocity: ``[G]``, ``[T, G]`` (one line per row, labelled ``t -> t+1``), or a mapping label -> ``[G]``.
        path: output image; the suffix picks the format.
        title: figure title.
        xlabel: x-axis label.
        **plot_kwargs: passed to ``Axes.plot``.

    Returns:
        The path written.
    """
    if isinstance(velocity, Mapping):
        lines = {str(k): torch.as_tensor(v).reshape(-1) for k, v in velocity.items()}
    else:
        v = torch.as_tensor(velocity)
        lines = {"velocity": v} if v.ndim == 1 else {f"{t} -> {t + 1}": row for t, row in enumerate(v)}
    fig = Figure(figsize=(5.5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, values in lines.items():
        ax.plot(
            range(values.numel()),
            values.double().cpu().numpy(),
            marker="o",
            markersize=3,
            label=label,
            **plot_kwargs,
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("kernel velocity")
    if len(lines) > 1:
        ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
