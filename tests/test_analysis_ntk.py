import pytest
import torch
from torch import nn

from lightning_datadiet.analysis import (
    empirical_ntk,
    kernel_velocity,
    plot_velocity_by_group,
    velocity_by_group,
    velocity_report,
)


def _mlp(seed, k=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Dropout(0.5), nn.Linear(5, k)).double()


def _conv_bn(seed, k=3):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, k),
    ).double()
    # Non-trivial running statistics, so eval-mode BatchNorm differs from train mode.
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model


def _explicit_ntk(model, inputs):
    """Naive reference: one autograd.grad per (example, logit), in eval mode, trainable parameters only."""
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for x in inputs:
        out = model(x.unsqueeze(0))[0]  # [K]
        for k in range(out.numel()):
            grads = torch.autograd.grad(out[k], params, retain_graph=True)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    model.train(was_training)
    jac = torch.stack(rows)  # [n K, P]
    return jac @ jac.T


def _rel_err(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("make, shape", [(_mlp, (6, 4)), (_conv_bn, (5, 2, 4, 4))])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_ntk_matches_explicit_jacobian(make, shape, chunk_size):
    model = make(0)
    model.train()
    inputs = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gram = empirical_ntk(model, inputs, chunk_size=chunk_size)
    assert gram.shape == (shape[0] * 3, shape[0] * 3) and gram.dtype == torch.float64
    assert _rel_err(gram, _explicit_ntk(model, inputs)) < 1e-8
    # Training flags restored on every submodule, buffers untouched.
    assert all(m.training for m in model.modules())


def test_ntk_restores_mixed_training_flags_and_skips_frozen_parameters():
    model = _mlp(0)
    model.train()
    model[2].eval()
    model[0].weight.requires_grad_(False)
    inputs = torch.randn(4, 4, dtype=torch.float64)
    gram = empirical_ntk(model, inputs)
    assert model.training and model[0].training and not model[2].training
    assert _rel_err(gram, _explicit_ntk(model, inputs)) < 1e-8


def test_velocity_of_a_model_with_itself_is_zero():
    model = _conv_bn(0)
    inputs = torch.randn(6, 2, 4, 4, dtype=torch.float64)
    assert abs(kernel_velocity(model, model, inputs)) < 1e-6
    assert abs(kernel_velocity(model.float(), model.float(), inputs.float())) < 1e-6


@pytest.mark.parametrize("make, shape", [(_mlp, (5, 4)), (_conv_bn, (4, 2, 4, 4))])
def test_velocity_matches_formula_on_explicit_grams(make, shape):
    a, b = make(0), make(1)
    inputs = torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ga, gb = _explicit_ntk(a, inputs), _explicit_ntk(b, inputs)
    expected = 1 - float((ga * gb).sum() / (ga.norm() * gb.norm()))
    assert expected > 1e-3
    assert kernel_velocity(a, b, inputs, chunk_size=3) == pytest.approx(expected, rel=1e-8, abs=1e-12)


def test_velocity_by_group_and_report(tmp_path):
    models = [_mlp(s) for s in range(3)]
    inputs = torch.randn(11, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    scores = torch.tensor([5.0, 1, 9, 3, 7, 2, 8, 0, 6, 4, 10])
    out = velocity_by_group(models[0], models[1], inputs, scores, group_size=3)
    # Ascending order is 7,1,5,3,9,0,8,4,6,2,10; the 11 mod 3 = 2 lowest (7, 1) are left out.
    assert out["groups"].tolist() == [[5, 3, 9], [0, 8, 4], [6, 2, 10]]
    assert out["rank_start"].tolist() == [2, 5, 8]
    assert out["mean_score"].tolist() == pytest.approx([3.0, 6.0, 9.0])
    for g, v in zip(out["groups"], out["velocity"]):
        assert v.item() == pytest.approx(kernel_velocity(models[0], models[1], inputs[g]), rel=1e-10)
    report = velocity_report(models, inputs, scores, group_size=3)
    assert report["velocity"].shape == (2, 3)
    assert torch.allclose(report["velocity"][0], out["velocity"])
    assert plot_velocity_by_group(report["velocity"], tmp_path / "v.png").exists()
    assert plot_velocity_by_group({"clean": out["velocity"]}, tmp_path / "w.png").exists()
    with pytest.raises(ValueError, match="group_size"):
        velocity_by_group(models[0], models[1], inputs, scores, group_size=12)
