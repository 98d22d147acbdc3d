"""The pure score functions against independent references."""

import copy
import math

import pytest
import torch
from torch import nn

from lightning_datadiet import el2n, grand
from lightning_datadiet.scores import ForgettingState, forgetting_scores, forgetting_update

from tiny import TinyNet


def test_el2n_matches_written_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 5, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 5, (7,), generator=g)
    expected = []
    for row, y in zip(logits.tolist(), targets.tolist()):
        z = sum(math.exp(v) for v in row)
        p = [math.exp(v) / z for v in row]
        expected.append(math.sqrt(sum((pk - (1.0 if k == y else 0.0)) ** 2 for k, pk in enumerate(p))))
    got = el2n(logits, targets)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert el2n(logits.float(), targets).dtype == torch.float32


def test_el2n_extremes():
    # uniform over 2 classes: sqrt(0.5^2 + 0.5^2); confident right ~0; confident wrong ~sqrt(2)
    out = el2n(torch.tensor([[0.0, 0.0], [50.0, -50.0], [-50.0, 50.0]]), torch.tensor([0, 0, 0]))
    torch.testing.assert_close(out, torch.tensor([math.sqrt(0.5), 0.0, math.sqrt(2.0)]), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "logits,targets,err",
    [
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), ValueError),  # not [B, K]
        (torch.zeros(3, 2), torch.zeros(3), ValueError),  # float targets
        (torch.zeros(3, 2), torch.tensor([0, 1, 2]), ValueError),  # out of range
        (torch.zeros(3, 2), torch.tensor([0, 1]), ValueError),  # wrong length
        (torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]), FloatingPointError),
    ],
)
def test_el2n_refuses_bad_input(logits, targets, err):
    with pytest.raises(err):
        el2n(logits, targets)


def naive_grand(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Independent reference: one backward pass per example, eval mode."""
    model = copy.deepcopy(model).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(x.shape[0]):
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        out.append(torch.sqrt(sum((g**2).sum() for g in grads)))
    return torch.stack(out)


def _trained_bn_net():
    torch.manual_seed(0)
    net = TinyNet(3).double()
    net.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            net(torch.randn(16, 2, 4, 4, dtype=torch.float64) * 2 + 1)
    return net


@pytest.mark.parametrize("chunk_size", [None, 1, 3])
def test_grand_matches_naive_loop_float64(chunk_size):
    net = _trained_bn_net()
    x = torch.randn(9, 2, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (9,))
    ref = naive_grand(net, x, y)
    got = grand(net, x, y, chunk_size=chunk_size)
    rel = ((got - ref).abs() / ref.abs()).max()
    assert rel <= 1e-5, rel
    assert got.dtype == torch.float64


def test_grand_leaves_model_exactly_as_before():
    net = _trained_bn_net()
    net.bn.eval()  # mixed flags must come back as they were
    before_state = copy.deepcopy(net.state_dict())
    before_flags = [m.training for m in net.modules()]
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    grand(net, x, torch.randint(0, 3, (5,)))
    assert [m.training for m in net.modules()] == before_flags
    for k, v in net.state_dict().items():
        assert torch.equal(v, before_state[k]), k
    assert all(p.grad is None for p in net.parameters())


def test_grand_counts_trainable_parameters_only():
    net = _trained_bn_net()
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (4,))
    for p in net.conv.parameters():
        p.requires_grad_(False)
    torch.testing.assert_close(grand(net, x, y), naive_grand(net, x, y), rtol=1e-10, atol=1e-12)
    full = grand(_trained_bn_net(), x, y)
    assert (grand(net, x, y) < full).all()  # frozen conv gradients are excluded


def test_grand_is_independent_of_batch_composition():
    net = _trained_bn_net()
    x = torch.randn(6, 2, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    torch.testing.assert_close(grand(net, x, y)[:2], grand(net, x[:2], y[:2]), rtol=1e-12, atol=0)


def test_grand_refuses_bad_input():
    net = TinyNet(3)
    with pytest.raises(ValueError, match="targets"):
        grand(net, torch.randn(2, 2, 4, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        grand(net, torch.randn(2, 2, 4, 4), torch.tensor([0, 7]))
    frozen = TinyNet(3).requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        grand(frozen, torch.randn(2, 2, 4, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="chunk_size"):
        grand(net, torch.randn(2, 2, 4, 4), torch.tensor([0, 1]), chunk_size=0)


def test_forgetting_scripted_sequence():
    # rows: presentations over time; columns: examples 0..3
    seq = [
        [1, 0, 0, 1],
        [0, 1, 0, 1],  # ex0 forgets
        [1, 0, 0, 1],  # ex1 forgets
        [0, 1, 0, 0],  # ex0 forgets again, ex3 forgets
    ]
    state = ForgettingState(4)
    for row in seq:
        forgetting_update(state, torch.arange(4), torch.tensor(row, dtype=torch.bool))
    scores = forgetting_scores(state)
    assert scores.tolist() == [2.0, 1.0, math.inf, 1.0]  # ex2 never learned -> +inf
    assert forgetting_scores(state, never_learned=0.0).tolist() == [2.0, 1.0, 0.0, 1.0]


def test_forgetting_update_applies_repeats_in_order():
    # one call with repeated indices (DistributedSampler padding) equals one call per presentation
    g = torch.Generator().manual_seed(3)
    idx = torch.randint(0, 6, (60,), generator=g)
    correct = torch.rand(60, generator=g) > 0.4
    batched, one_by_one = ForgettingState(6), ForgettingState(6)
    forgetting_update(batched, idx, correct)
    for i, c in zip(idx, correct):
        forgetting_update(one_by_one, i.view(1), c.view(1))
    assert torch.equal(batched.forgotten, one_by_one.forgotten)
    assert torch.equal(batched.ever_correct, one_by_one.ever_correct)
    assert torch.equal(batched.last_correct, one_by_one.last_correct)
    assert batched.forgotten.sum() > 0
