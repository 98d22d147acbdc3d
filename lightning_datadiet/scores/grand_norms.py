r"""The norm-only GraNd engine: exact per-example gradient norms from one ordinary backward pass.

No per-example gradient of the whole model is ever formed. A forward hook on each supported layer registers a
hook on the layer's output tensor; one ordinary backward pass of the *summed* per-example cross-entropy, down to
the layer outputs only (no weight gradient is computed), hands each of those hooks the layer's output gradient
``g`` (in eval mode examples do not interact, so row ``i`` of ``g`` is example ``i``'s own), and the hook adds the
exact squared norm of every example's gradient of that layer's weight and bias, then drops the layer's input and
``g``: peak memory stays that of a training step. The per-layer rules live in
:mod:`lightning_datadiet.scores._grand_layers` (``T`` = positions per example, ``d`` = input features, ``p`` =
output features):

* **ghost** (Gram) form: ``||sum_t g_t a_t^T||_F^2 = sum_{t,t'} (a_t . a_t')(g_t . g_t')``, ``T^2 (d + p)``
  multiply-adds; for a convolution the Gram of the unfolded input, or the cheaper Gram of the input itself
  (shifted blocks summed over the kernel offsets);
* **instantiate** that layer's per-example gradient: a batched matmul (``T p d``), for convolutions on the
  unfolded input, or (**grouped**) one grouped convolution weight-gradient over a chunk of examples.

The form is chosen per layer by multiply-adds (and, between the two instantiations, by measured speed).
Normalisation layers (BatchNorm in eval mode, LayerNorm, GroupNorm) have per-channel affine parameters whose
per-example gradients are sums of ``g * x_hat`` and ``g``: instantiated, cheap.

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
from lightning_datadiet.scores._grand_layers import _BN, RULES, STRATEGIES, NormsUnsupportedError, needs_input

__all__ = ["norms_support", "grand_norms", "NormsUnsupportedError", "SUPPORTED_LAYERS"]

SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, *_BN, nn.LayerNorm, nn.GroupNorm, nn.Embedding
)

RANDOMNESS_MESSAGE = (
    "grand: the model draws random numbers in eval mode (e.g. torch.rand/randn or F.dropout(..., training=True) in "
    "forward), so its per-example gradients are not defined. Make the randomness depend on `self.training` (as "
    "nn.Dropout does), or score a submodule without it (GraNdCallback: `logits_module=`)."
)


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


# ------------------------------------------------------------------------------------------------------- the pass


def _consumers(root: Any, stop: set[Any] | frozenset = frozenset()) -> tuple[dict[int, int], set[Any]]:
    """Walk the autograd graph from ``root`` down to (not through) the nodes in ``stop``: for every leaf tensor,
    how many graph edges lead into it; and the nodes reached."""
    counts: dict[int, int] = {}
    seen, stack = {root}, [root]
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
    return counts, seen


def _rng_states(device: torch.device) -> list[Tensor]:
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def _one_pass(
    model: nn.Module, plan: dict[nn.Module, str], inputs: Any, targets: Tensor, strategy: str
) -> tuple[Tensor, Tensor]:
    """Squared per-example gradient norms ``[B]`` and logits ``[B, K]`` of one chunk (model already in eval mode).

    A forward hook on each supported layer registers a hook on its output tensor (before any later in-place op can
    touch it, so the hook sees the gradient of the output as the layer produced it); during the one backward pass
    of the summed loss that hook computes the layer's per-example squared norms from the layer's input and its
    output gradient and then drops both, so inputs and output gradients are released as in an ordinary backward.
    """
    calls: dict[nn.Module, list[tuple[Any, ...]]] = {m: [] for m in plan}
    parts: list[Tensor] = []

    def keep(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        entry: tuple[Any, ...] = (args, kwargs, output)
        if len(args) == 1 and not kwargs and isinstance(args[0], Tensor) and isinstance(output, Tensor):
            x = args[0]
            out_edge = get_gradient_edge(output) if output.requires_grad else None
            in_node = get_gradient_edge(x).node if x.requires_grad else None
            entry = (x.shape, output.shape, out_edge, in_node)
            if out_edge is not None:
                output.register_hook(_layer_hook(module, plan[module], x, strategy, parts))
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
        if seen and (seen[0][0][0] != batch or seen[0][1][0] != batch):
            raise NormsUnsupportedError(
                f"module {plan[m]!r} ({type(m).__name__}) sees inputs/outputs whose first dimension is not the batch "
                f"({tuple(seen[0][0])} for a batch of {batch})"
            )
    if not logits.requires_grad:
        raise NormsUnsupportedError("the logits do not depend on any trainable parameter through autograd")
    loss = F.cross_entropy(logits, targets, reduction="sum")  # row i of every output gradient is example i's own

    # every trainable parameter must be reached only from inside its own module's (single) call
    everywhere, reachable = _consumers(loss.grad_fn)
    used = [(m, c[0]) for m, c in calls.items() if c and c[0][2] is not None and c[0][2].node in reachable]
    for m, (_, _, edge, in_node) in used:
        inside = _consumers(edge.node, {in_node} if in_node is not None else set())[0]
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
                    "never ran as a module, or ran with an output that does not reach the logits (e.g. "
                    "F.linear(x, layer.weight) in a parent's forward)"
                )
    calls.clear()
    if used:  # the ordinary backward, down to the layer outputs only: no weight gradient is computed or stored
        torch.autograd.backward(loss, inputs=[e for _, (_, _, e, _) in used])
    sq = logits.new_zeros(batch)
    for part in parts:
        sq += part.to(sq.dtype)
    return sq.detach(), logits.detach()


def _layer_hook(module: nn.Module, name: str, x: Tensor, strategy: str, parts: list[Tensor]) -> Callable[[Tensor], None]:
    """The tensor hook of one layer call: its squared norms from its input (kept only if its rule reads it)."""
    kept = [x.detach() if needs_input(module) else None, None if x.is_inference() else x._version]
    rule = RULES[_layer_kind(module)]

    def hook(grad: Tensor) -> None:
        x_, version = kept
        kept[0] = None  # release the input as soon as it is used
        if x_ is not None and version is not None and x_._version != version:
            raise NormsUnsupportedError(
                f"the input of module {name!r} ({type(module).__name__}) was modified in place after the module used it"
            )
        parts.append(rule(module, x_, grad.detach(), strategy))

    return hook


def _alone_norm(model: nn.Module, inputs: Any, targets: Tensor) -> Tensor:
    """One example's gradient norm by plain autograd (its loss alone, the parameters' gradients): an independent
    check of the engine, cheaper than a second engine pass on one example."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(inputs), targets, reduction="sum")
    grads = [g for g in torch.autograd.grad(loss, params, allow_unused=True) if g is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else loss.new_zeros(())


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
        strategy: ``"auto"`` (the cheaper exact form per layer), or force one form on every Linear, Conv and
            Embedding layer (tests): ``"ghost"`` (for convolutions the cheaper of its two Grams), ``"ghost_input"``
            / ``"ghost_unfold"`` (convolutions: that Gram; other layers: ghost), ``"instantiate"``, ``"grouped"``
            (convolutions: the grouped weight gradient; other layers: instantiate).

    Raises:
        NormsUnsupportedError: the model is outside what the engine computes exactly (the message says why).
        RuntimeError: the model draws random numbers in eval mode.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"grand_norms: strategy must be one of {STRATEGIES}, got {strategy!r}")
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
        alone = _alone_norm(model, tree_map(lambda t: t[i : i + 1], inputs), targets[i : i + 1]).to(norms.dtype)
        rtol = {torch.float64: 1e-6, torch.float32: 1e-3}.get(norms.dtype, 5e-2)
        if not bool((alone - norms[i]).abs() <= rtol * norms[i] + torch.finfo(norms.dtype).tiny):
            raise NormsUnsupportedError(
                f"example {i}'s gradient norm is {float(norms[i]):.6g} in the batch but {float(alone):.6g} alone: the "
                "model's output for an example depends on the other examples (batch statistics, a batch-first "
                "layout that is not [B, ...], or cross-example operations in forward)"
            )
    return norms, logits
