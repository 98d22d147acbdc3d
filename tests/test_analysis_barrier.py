import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_datadiet.analysis import (
    classification_error,
    error_barrier,
    interpolate_state,
    update_bn_statistics,
)


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))


def _bn_mlp(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
    with torch.no_grad():  # stale statistics, far from the data's
        model[1].running_mean.fill_(3.0)
        model[1].running_var.fill_(0.01)
    return model


def _data(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def _state_copy(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(model, state):
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


@pytest.mark.parametrize("make", [_mlp, _bn_mlp])
def test_barrier_of_a_model_with_itself_is_zero(make):
    model = make(0)
    x, y = _data()
    out = error_barrier(model, model, (x, y))
    assert out["barrier"] == 0.0 and out["barrier_alpha"] is None
    assert len(set(out["errors"])) == 1 and out["error_a"] == out["error_b"]
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    assert error_barrier(model, model, loader, alphas=[0.1, 0.3, 0.5])["barrier"] == 0.0


def test_barrier_matches_explicit_midpoint_evaluation():
    a, b = _mlp(0), _mlp(1)
    x, y = _data()
    state_a, state_b = _state_copy(a), _state_copy(b)
    a.train()
    out = error_barrier(a, b, (x, y), alphas=(0, 0.5, 1), batch_size=64)

    # Reference: average the parameters by hand and count the mistakes directly.
    mid = _mlp(2)
    with torch.no_grad():
        for pm, pa, pb in zip(mid.parameters(), a.parameters(), b.parameters()):
            pm.copy_((pa + pb) / 2)

    def err(model):
        with torch.no_grad():
            return int((model(x).argmax(1) != y).sum()) / len(y)

    e_a, e_b, e_mid = err(a), err(b), err(mid)
    assert out["alphas"] == [0.0, 0.5, 1.0]
    assert out["errors"] == pytest.approx([e_b, e_mid, e_a])
    assert out["error_a"] == pytest.approx(e_a) and out["error_b"] == pytest.approx(e_b)
    assert out["barrier"] == pytest.approx(max(0.0, e_mid - (e_a + e_b) / 2))
    assert out["gaps"][1] == pytest.approx(e_mid - (e_a + e_b) / 2)
    # Inputs untouched.
    _assert_same_state(a, state_a)
    _assert_same_state(b, state_b)
    assert a.training and b.training  # training flags untouched


def test_barrier_detects_a_bad_midpoint():
    # Two networks computing the same perfect classifier; their average outputs a constant.
    torch.manual_seed(0)
    x = torch.randn(100, 2)
    y = (x[:, 0] > 0).long()
    # Same function, hidden units permuted: the average of the first layers is 0.
    a = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        a[0].weight.copy_(torch.tensor([[4.0, 0.0], [-4.0, 0.0]]))
        a[0].bias.zero_()
        a[2].weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        a[2].bias.zero_()
    b = copy.deepcopy(a)
    with torch.no_grad():  # permute the two hidden units
        b[0].weight.copy_(a[0].weight.flip(0))
        b[2].weight.copy_(a[2].weight.flip(1))
    assert classification_error(a, (x, y)) == 0.0 and classification_error(b, (x, y)) == 0.0
    out = error_barrier(a, b, (x, y), alphas=(0.5,))
    assert out["barrier"] == pytest.approx(out["errors"][0]) and out["barrier"] > 0.3
    assert out["barrier_alpha"] == 0.5


def test_update_bn_statistics_matches_hand_computation():
    model = _bn_mlp(0)
    model.train()
    x, _ = _data(64)
    assert update_bn_statistics(model, (x, torch.zeros(64)), batch_size=32)
    h = model[0](x).detach()  # BatchNorm input
    halves = h.split(32)
    mean = sum(t.mean(0) for t in halves) / 2  # momentum=None: average over batches
    var = sum(t.var(0, unbiased=True) for t in halves) / 2
    assert torch.allclose(model[1].running_mean, mean, atol=1e-6)
    assert torch.allclose(model[1].running_var, var, atol=1e-5)
    assert int(model[1].num_batches_tracked) == 2 and model[1].momentum == 0.1
    assert not any(m.training for m in model.modules())
    assert not update_bn_statistics(_mlp(0), (x, x))


def test_barrier_recomputes_bn_statistics_without_touching_inputs():
    a, b = _bn_mlp(0), _bn_mlp(1)
    x, y = _data(120)
    state_a = _state_copy(a)
    out = error_barrier(a, b, (x, y), alphas=(0, 0.5, 1), batch_size=1000)

    # Reference for alpha = 1: model_a with statistics of the single batch (unbiased variance).
    ref = copy.deepcopy(a).eval()
    with torch.no_grad():
        h = ref[0](x)
        ref[1].running_mean.copy_(h.mean(0))
        ref[1].running_var.copy_(h.var(0, unbiased=True))
        expected = int((ref(x).argmax(1) != y).sum()) / len(y)
    assert out["error_a"] == pytest.approx(expected)
    assert out["error_a"] != classification_error(a, (x, y))  # the stale statistics would give another error
    _assert_same_state(a, state_a)

    # "interior": the endpoints keep their own statistics.
    interior = error_barrier(a, b, (x, y), alphas=(0, 0.5, 1), bn_reset="interior")
    assert interior["error_a"] == classification_error(a, (x, y))
    assert interior["errors"][1] == out["errors"][1]
    # A separate bn_data changes the statistics, hence possibly the errors, but never the inputs.
    error_barrier(a, b, (x, y), bn_data=DataLoader(TensorDataset(x[:50], y[:50]), batch_size=25))
    _assert_same_state(a, state_a)


def test_interpolate_state():
    a, b = _bn_mlp(0), _bn_mlp(1)
    b[1].num_batches_tracked.fill_(7)
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in interpolate_state(a, b, 1.0).items())
    s0 = interpolate_state(a, b, 0.0)
    assert torch.equal(s0["0.weight"], b[0].weight.detach()) and int(s0["1.num_batches_tracked"]) == 0
    s = interpolate_state(a.state_dict(), b.state_dict(), 0.25)
    assert torch.allclose(s["4.bias"], 0.25 * a[4].bias + 0.75 * b[4].bias)
    with pytest.raises(ValueError, match="keys"):
        interpolate_state(a, _mlp(0), 0.5)
    with pytest.raises(ValueError, match="alphas"):
        error_barrier(a, b, _data(), alphas=(1.5,))
