"""The norm-only GraNd engine against an independent naive per-example loop, in float64."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_datadiet import GraNdCallback, grand
from lightning_datadiet.scores import _grand_layers
from lightning_datadiet.scores._grand_layers import conv_form, ghost_form
from lightning_datadiet.scores.grand_norms import NormsUnsupportedError, grand_norms, norms_support

from tiny import TinyNet

DT = torch.float64


def naive(model: nn.Module, x, y) -> torch.Tensor:
    """Independent reference: per example, a forward in eval mode, the loss, autograd.grad, the norm."""
    model = copy.deepcopy(model).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    out = []
    for i in range(y.shape[0]):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        out.append(torch.sqrt(sum((g**2).sum() for g in grads if g is not None)))
    return torch.stack(out)


def _rel(a, b):
    return float(((a - b).abs() / b.abs()).max())


def assert_exact(model, x, y, strategies=("auto", "ghost", "ghost_input", "ghost_unfold", "instantiate", "grouped")):
    ref = naive(model, x, y)
    got = grand(model, x, y, method="norms")
    assert got.dtype == DT
    assert _rel(got, ref) <= 1e-6, _rel(got, ref)
    for s in strategies:  # every exact form, not only the one the cost rule picks
        with torch.enable_grad():
            forced, _ = grand_norms(copy.deepcopy(model).eval(), x, y, strategy=s)
        assert _rel(forced, ref) <= 1e-6, (s, _rel(forced, ref))
    # the rules work on chunks of examples that fit a workspace: one example per chunk, and uneven chunks
    for workspace in (1, 3 * 1024):
        saved, _grand_layers._WORKSPACE_BYTES = _grand_layers._WORKSPACE_BYTES, workspace
        try:
            for s in strategies:
                with torch.enable_grad():
                    forced, _ = grand_norms(copy.deepcopy(model).eval(), x, y, strategy=s)
                assert _rel(forced, ref) <= 1e-6, (workspace, s, _rel(forced, ref))
        finally:
            _grand_layers._WORKSPACE_BYTES = saved
    return got


def _warm_bn(net, make_x):
    net.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            net(make_x() * 2 + 1)
    return net


class Flat(nn.Module):
    def __init__(self, body, features, k=3):
        super().__init__()
        self.body, self.head = body, nn.Linear(features, k)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x)).flatten(1))


@pytest.mark.parametrize(
    "body,shape,features",
    [
        (nn.Linear(5, 4), (5,), 4),
        (nn.Linear(5, 4, bias=False), (3, 5), 12),  # 3-D input: a sequence of 3
        (nn.Conv2d(2, 4, 3), (2, 6, 6), 64),
        (nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2), (4, 7, 7), 6 * 16),
        (nn.Conv2d(2, 4, (2, 3), stride=(2, 1), padding=(1, 0), bias=False), (2, 5, 6), 4 * 3 * 4),
        (nn.Conv2d(2, 3, 3, padding="same", padding_mode="reflect"), (2, 5, 5), 75),
        (nn.Conv2d(2, 2, 4, padding="same", dilation=2, groups=2), (2, 5, 5), 50),  # 'same' padding
        (nn.Conv2d(16, 4, 3, padding=2, dilation=2, groups=2), (16, 5, 6), 120),  # stride 1, >= 8 channels/group
        (nn.Conv2d(8, 3, (3, 2), padding="same", padding_mode="reflect"), (8, 4, 5), 60),
        (nn.Conv2d(8, 3, 1), (8, 3, 3), 27),
        (nn.Conv1d(8, 4, 3, padding=2, dilation=2), (8, 7), 28),
        (nn.Conv1d(3, 4, 3, stride=2, padding=1, dilation=2), (3, 9), 16),
        (nn.Conv1d(4, 4, 3, groups=4, padding=1, padding_mode="circular"), (4, 6), 24),
        (nn.LayerNorm(5), (3, 5), 15),
        (nn.LayerNorm((3, 5), bias=False), (2, 3, 5), 30),
        (nn.GroupNorm(2, 4), (4, 3, 3), 36),
        (nn.GroupNorm(1, 4, affine=True), (4, 5), 20),
    ],
    ids=["linear", "linear-3d", "conv2d", "conv2d-grouped-strided-dilated-padded", "conv2d-rect", "conv2d-reflect",
         "conv2d-same-asym", "conv2d-wide-dilated-grouped", "conv2d-wide-reflect", "conv2d-1x1",
         "conv1d-wide-dilated", "conv1d", "conv1d-depthwise-circular", "layernorm", "layernorm-2d-nobias", "groupnorm",
         "groupnorm-1"],
)
def test_each_layer_alone_matches_the_naive_loop(body, shape, features):
    torch.manual_seed(0)
    model = Flat(body, features).to(DT)
    x = torch.randn(7, *shape, dtype=DT)  # odd batch size
    y = torch.randint(0, 3, (7,))
    assert_exact(model, x, y)


@pytest.mark.parametrize("bn,shape", [(nn.BatchNorm1d(4), (4,)), (nn.BatchNorm1d(4), (4, 5)), (nn.BatchNorm2d(4), (4, 3, 3))])
def test_batchnorm_in_eval_mode(bn, shape):
    torch.manual_seed(0)
    model = _warm_bn(Flat(bn, int(torch.tensor(shape).prod())).to(DT), lambda: torch.randn(16, *shape, dtype=DT))
    assert not torch.equal(model.body.running_mean, torch.zeros(4))
    x, y = torch.randn(7, *shape, dtype=DT), torch.randint(0, 3, (7,))
    assert_exact(model, x, y)


@pytest.mark.parametrize(
    "conv,hw,form",
    [
        (nn.Conv2d(16, 8, 3, padding=1), 16, "grouped"),  # many positions, spatial kernel, 8-64 channels per group
        (nn.Conv2d(16, 8, 3, padding=1, groups=2), 16, "grouped"),
        (nn.Conv1d(12, 8, 3, padding=1), 32, "grouped"),
        (nn.Conv2d(3, 8, 3, padding=1), 6, "instantiate"),  # few input channels: im2col is cheap
        (nn.Conv2d(16, 8, 1), 6, "instantiate"),  # 1x1: the unfolded input is the input
        (nn.Conv2d(72, 4, 3, padding=1), 8, "instantiate"),  # many channels per group
        (nn.Conv2d(4, 4, 3, padding=1, groups=4), 5, "instantiate"),  # depthwise
        (nn.Conv2d(16, 16, 3, padding=1), 4, "ghost_input"),  # few positions, stride 1: Gram of the input
        (nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=2), 4, "ghost_input"),
        (nn.Conv2d(32, 256, 3, stride=2, padding=1), 16, "ghost_unfold"),  # stride 2: Gram of the unfolded input
    ],
    ids=["grouped", "grouped-groups", "grouped-conv1d", "inst-rgb", "inst-1x1", "inst-wide", "inst-depthwise",
         "ghost-input", "ghost-input-dilated-grouped", "ghost-unfold-strided"],
)
def test_each_conv_form_is_picked_where_it_should_be_and_is_exact(conv, hw, form):
    """The automatic per-layer choice (by multiply-adds and input channels) picks each form on some shape; every
    form, picked or forced, equals the naive loop, also with the examples split into uneven chunks."""
    k = conv.kernel_size[0] * (conv.kernel_size[1] if len(conv.kernel_size) > 1 else 1)
    ci, p = conv.in_channels // conv.groups, conv.out_channels // conv.groups
    conv2d = isinstance(conv, nn.Conv2d)
    shape = (conv.in_channels, hw, hw) if conv2d else (conv.in_channels, hw)
    torch.manual_seed(0)
    model = Flat(conv, 1).to(DT)
    with torch.no_grad():
        out = conv.to(DT)(torch.zeros(1, *shape, dtype=DT))
    model.head = nn.Linear(out.numel(), 3).to(DT)
    t, positions = out[0, 0].numel(), hw * hw if conv2d else hw
    picked = conv_form(t, ci * k, p, ci, k, positions)
    if picked == "ghost":
        picked = ghost_form(t, ci * k, ci, positions)
    assert picked == form
    x, y = torch.randn(7, *shape, dtype=DT), torch.randint(0, 3, (7,))
    assert_exact(model, x, y)


class SummedOutputs(nn.Module):
    """Layer outputs summed right away: their output gradients arrive as zero-stride (expanded) tensors."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, stride=2, padding=1)
        self.fc, self.head = nn.Linear(8, 6), nn.Linear(6 + 8 + 4, 3)

    def forward(self, x):
        h = self.conv(x)
        s = self.bn(h).sum((2, 3))  # [B, 8]
        t = self.fc(h.flatten(2).transpose(1, 2)).sum(1)  # Linear over positions, summed
        return self.head(torch.cat([t, s, self.conv2(h).sum((2, 3))], 1))


def test_expanded_output_gradients():
    torch.manual_seed(0)
    model = _warm_bn(SummedOutputs().to(DT), lambda: torch.randn(16, 8, 6, 6, dtype=DT))
    assert_exact(model, torch.randn(7, 8, 6, 6, dtype=DT), torch.randint(0, 3, (7,)))


def test_workspace_chunks_cover_the_batch_unevenly():
    saved = _grand_layers._WORKSPACE_BYTES
    try:
        _grand_layers._WORKSPACE_BYTES = 30
        assert _grand_layers._chunks(7, 10) == [(0, 3), (3, 6), (6, 7)]
        assert _grand_layers._chunks(7, 100) == [(i, i + 1) for i in range(7)]
        assert _grand_layers._chunks(7, 0) == [(0, 7)]
    finally:
        _grand_layers._WORKSPACE_BYTES = saved


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="strategy must be one of"):
        grand_norms(TinyNet(), torch.randn(2, 2, 4, 4), torch.tensor([0, 1]), strategy="fast")


class InputChangedAfterUse(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc0, self.fc1, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        a = self.fc0(x) + 1
        h = self.fc1(a)
        a.mul_(2)  # fc1's input changes after fc1 used it
        return self.head(torch.tanh(h) + a)


def test_an_input_modified_in_place_after_the_layer_is_refused_not_miscounted():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"input of module 'fc1' \(Linear\) was modified in place"):
        grand(InputChangedAfterUse().to(DT), torch.randn(5, 4, dtype=DT), torch.randint(0, 3, (5,)), method="norms")


class UnusedBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.side, self.head = nn.Linear(4, 4), nn.Linear(4, 2), nn.Linear(4, 3)

    def forward(self, x):
        self.side(x)  # runs, but the logits do not depend on it: its gradient is zero
        return self.head(torch.tanh(self.fc(x)))


def test_a_layer_whose_output_is_unused_counts_zero():
    torch.manual_seed(0)
    assert_exact(UnusedBranch().to(DT), torch.randn(7, 4, dtype=DT), torch.randint(0, 3, (7,)))


class Tokens(nn.Module):
    def __init__(self, padding_idx=None, k=3):
        super().__init__()
        self.emb = nn.Embedding(11, 6, padding_idx=padding_idx)
        self.head = nn.Linear(6, k)

    def forward(self, ids):
        return self.head(torch.tanh(self.emb(ids)).mean(1) if ids.ndim == 2 else torch.tanh(self.emb(ids)))


@pytest.mark.parametrize("padding_idx", [None, 0, 3])
@pytest.mark.parametrize("length", [1, 5, 12])
def test_embedding_with_repeated_tokens_and_padding(padding_idx, length):
    torch.manual_seed(0)
    model = Tokens(padding_idx).to(DT)
    ids = torch.randint(0, 5, (7, length))  # 5 of 11 tokens: repeats within every example
    ids[:, 0] = 3
    ids[0] = 0
    assert length == 1 or all(len(set(r)) < len(r) for r in ids.tolist())  # repeats in every example
    assert_exact(model, ids, torch.randint(0, 3, (7,)))


def test_embedding_of_one_token_per_example():
    torch.manual_seed(0)
    assert_exact(Tokens(2).to(DT), torch.tensor([2, 1, 2, 5, 2, 7, 1]), torch.randint(0, 3, (7,)))


class Block(nn.Module):
    """A ResNet basic block with a projection shortcut; BatchNorm in eval mode."""

    def __init__(self, c_in=3, c=4, k=3):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.short = nn.Sequential(nn.Conv2d(c_in, c, 1, stride=2, bias=False), nn.BatchNorm2d(c))
        self.fc = nn.Linear(c, k)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)), inplace=True)
        h = F.relu(self.bn2(self.conv2(h)) + self.short(x), inplace=True)  # in-place ops on layer outputs
        return self.fc(h.mean((2, 3)))


def test_resnet_block_with_batchnorm_in_eval_mode():
    torch.manual_seed(0)
    model = _warm_bn(Block().to(DT), lambda: torch.randn(16, 3, 8, 8, dtype=DT))
    x, y = torch.randn(7, 3, 8, 8, dtype=DT), torch.randint(0, 3, (7,))
    assert_exact(model, x, y)


class Transformer(nn.Module):
    """Embedding + LayerNorm + Linear over a sequence; single-head attention by plain matmuls and softmax."""

    def __init__(self, vocab=13, d=8, k=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, d, padding_idx=0)
        self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2, self.ff1, self.ff2 = nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.head = nn.Linear(d, k)

    def forward(self, ids):
        h = self.emb(ids)  # [B, T, d]
        q, k, v = self.qkv(self.ln1(h)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        h = h + self.proj(att @ v)
        h = h + self.ff2(F.gelu(self.ff1(self.ln2(h))))
        return self.head(h.mean(1))


def test_small_transformer_block():
    torch.manual_seed(0)
    model = Transformer().to(DT)
    ids = torch.randint(0, 6, (7, 9))
    assert_exact(model, ids, torch.randint(0, 3, (7,)))


def test_frozen_parameters_are_excluded():
    torch.manual_seed(0)
    model = _warm_bn(Block().to(DT), lambda: torch.randn(16, 3, 8, 8, dtype=DT))
    x, y = torch.randn(5, 3, 8, 8, dtype=DT), torch.randint(0, 3, (5,))
    full = grand(model, x, y, method="norms")
    model.conv1.requires_grad_(False)
    model.bn2.weight.requires_grad_(False)  # bias stays trainable
    model.fc.bias.requires_grad_(False)
    part = assert_exact(model, x, y)
    assert (part < full).all()


def test_state_is_restored_exactly():
    torch.manual_seed(0)
    model = _warm_bn(Block().to(DT), lambda: torch.randn(16, 3, 8, 8, dtype=DT))
    model.train()
    model.bn2.eval()  # mixed flags come back as they were
    model.conv2.weight.grad = torch.ones_like(model.conv2.weight)
    state = copy.deepcopy(model.state_dict())
    flags = [m.training for m in model.modules()]
    grand(model, torch.randn(5, 3, 8, 8, dtype=DT), torch.randint(0, 3, (5,)), method="norms")
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(model.conv2.weight.grad, torch.ones_like(model.conv2.weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "conv2.weight")
    assert all(p.requires_grad for p in model.parameters())


def test_chunk_size_does_not_change_the_scores():
    torch.manual_seed(0)
    model = _warm_bn(Block().to(DT), lambda: torch.randn(16, 3, 8, 8, dtype=DT))
    x, y = torch.randn(7, 3, 8, 8, dtype=DT), torch.randint(0, 3, (7,))
    whole = grand(model, x, y, method="norms")
    for c in (1, 3):
        torch.testing.assert_close(grand(model, x, y, method="norms", chunk_size=c), whole, rtol=1e-12, atol=0)


def test_norms_and_vmap_agree_on_the_tiny_net_in_float32():
    torch.manual_seed(0)
    net = TinyNet(3)
    x, y = torch.randn(9, 2, 4, 4), torch.randint(0, 3, (9,))
    torch.testing.assert_close(grand(net, x, y, method="norms"), grand(net, x, y, method="vmap"), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- fallback


class WithAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, ids):
        h = self.emb(ids)
        return self.head(self.att(h, h, h, need_weights=False)[0].mean(1))


class FreeParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        return self.fc(x) * self.scale


class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.fc(torch.tanh(self.fc(x)))))


class WeightUsedOutside(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.fc(x)) + F.linear(x, self.fc.weight))


class WeightUsedWithoutTheModule(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(F.linear(x, self.fc.weight)))


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.out = nn.Embedding(6, 4), nn.Linear(4, 6, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(self.emb(ids).mean(1))


class Custom(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


class MixesExamples(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x - x.mean(0))


class NoBatchStats(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2, track_running_stats=False)
        self.fc = nn.Linear(18, 3)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).flatten(1))


def _ids():
    return torch.randint(0, 6, (7, 5))


FALLBACKS = [
    (WithAttention, _ids, r"'att' \(MultiheadAttention\) owns trainable parameters"),
    (FreeParameter, lambda: torch.randn(7, 4, dtype=DT), r"'<root>' \(FreeParameter\) owns trainable parameters \(scale\)"),
    (CalledTwice, lambda: torch.randn(7, 4, dtype=DT), r"'fc' \(Linear\) is called 2 times"),
    (WeightUsedOutside, lambda: torch.randn(7, 4, dtype=DT), r"fc.weight is used outside the forward of its module 'fc'"),
    (WeightUsedWithoutTheModule, lambda: torch.randn(7, 4, dtype=DT), r"fc.weight is used although its module 'fc'"),
    (Tied, _ids, r"'out' \(Linear\) shares a trainable parameter with module 'emb'"),
    (lambda: nn.Sequential(Custom(4, 3)), lambda: torch.randn(7, 4, dtype=DT), r"'0' \(Custom\) owns trainable parameters"),
    (MixesExamples, lambda: torch.randn(7, 4, dtype=DT), r"depends on the other examples"),
    (NoBatchStats, lambda: torch.randn(7, 2, 3, 3, dtype=DT), r"track_running_stats=False"),
]


@pytest.mark.parametrize("make,make_x,reason", FALLBACKS, ids=[f[0].__name__ if isinstance(f[0], type) else "Custom" for f in FALLBACKS])
def test_auto_falls_back_exactly_and_norms_refuses(make, make_x, reason):
    torch.manual_seed(0)
    model = make().to(DT)
    x, y = make_x(), torch.randint(0, 3, (7,))
    with pytest.raises(ValueError, match=r"grand\(method='norms'\).*" + reason + r".*method='vmap'"):
        grand(model, x, y, method="norms")
    with pytest.warns(UserWarning, match=reason):
        got = grand(model, x, y)  # auto
    torch.testing.assert_close(got, grand(model, x, y, method="vmap"), rtol=0, atol=0)
    if not isinstance(model, MixesExamples):  # the naive loop scores each example alone, like vmap
        assert _rel(got, naive(model, x, y)) <= 1e-6


def test_supported_models_do_not_warn():
    torch.manual_seed(0)
    assert norms_support(Transformer()) is None and norms_support(Block()) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grand(Transformer(), torch.randint(0, 6, (3, 4)), torch.tensor([0, 1, 2]))


def test_randomness_in_eval_mode_is_refused_by_the_engine():
    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x + torch.randn_like(x))

    with pytest.raises(RuntimeError, match="draws random numbers in eval mode"):
        grand(Noisy(), torch.randn(3, 4), torch.tensor([0, 1, 2]), method="norms")


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="method must be one of 'auto', 'norms', 'vmap'"):
        grand(TinyNet(), torch.randn(2, 2, 4, 4), torch.tensor([0, 1]), method="ghost")
    with pytest.raises(ValueError, match="method"):
        GraNdCallback(epochs=1, method="fast")


def test_engine_refuses_directly_with_its_own_error():
    with pytest.raises(NormsUnsupportedError, match="MultiheadAttention"):
        grand_norms(WithAttention(), _ids(), torch.zeros(7, dtype=torch.long))


def test_callback_with_norms_equals_the_function(tmp_path):
    from lightning.pytorch import Trainer

    from tiny import TinyDataModule, TinyModule

    torch.manual_seed(0)
    dm = TinyDataModule(n=24)
    cb = GraNdCallback(epochs=1, method="norms", save=False, chunk_size=5)
    assert cb.gradient_method == "norms" and cb.method == "grand"
    model = TinyModule()
    Trainer(max_epochs=1, callbacks=[cb], logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=tmp_path).fit(model, datamodule=dm)
    x, y = dm.dataset.tensors
    net = copy.deepcopy(model.net)
    torch.testing.assert_close(cb.scores, grand(net, x, y, method="norms"), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(cb.scores, grand(net, x, y, method="vmap"), rtol=1e-4, atol=1e-6)
