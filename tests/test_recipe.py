"""The airbench recipe: patch whitening, batched augmentation, the fast data path and the scoring callbacks on it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer, seed_everything
from torch.utils.data import DataLoader, Subset

from lightning_datadiet import EL2NCallback, ForgettingCallback, GraNdCallback
from lightning_datadiet.demo.airbench import (
    AirbenchDataModule,
    AirbenchModule,
    AirbenchNet,
    ImageTensorDataset,
    apply_flip_translate,
    batch_collate,
    flip_translate,
    patch_whitening,
)

sys.path.insert(0, str(Path(__file__).parent))
from imagefolder import make_image_folder  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("imgs"), classes=3, train=24, test=6, size=16)


@pytest.fixture()
def datamodule(folder: Path, tmp_path: Path) -> AirbenchDataModule:
    dm = AirbenchDataModule(folder, batch_size=16, cache_dir=tmp_path / "cache")
    dm.setup("fit")
    return dm


def _trainer(epochs: int, callbacks: list) -> Trainer:
    return Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=callbacks,
    )


# ------------------------------------------------------------------------------------------ whitening


def test_patch_whitening_whitens_its_data() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 3, 12, 12, generator=g)
    images = F.avg_pool2d(F.pad(base, (1, 1, 1, 1), mode="replicate"), 3, stride=1) + 0.3  # correlated patches
    images[:, 1] += 0.5 * images[:, 0]
    weight, bias = patch_whitening(images, kernel_size=2, eps=1e-9)
    assert weight.shape == (24, 3, 2, 2) and bias.shape == (24,)
    out = F.conv2d(images.double(), weight.double(), bias.double())  # [N, 24, 11, 11]
    first = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    cov = torch.cov(first.T, correction=0)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=1e-4)
    assert first.mean(0).abs().max() < 1e-6  # the bias removes the patch mean
    assert torch.allclose(out[:, 12:], -out[:, :12])  # the negated filters
    raw = F.unfold(images.double(), 2).transpose(1, 2).reshape(-1, 12)
    assert torch.cov(raw.T).sub(torch.eye(12, dtype=torch.float64)).abs().max() > 0.1  # it was not white before


def test_net_init_whitening_is_deterministic_and_frozen() -> None:
    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    a, b = AirbenchNet(3, width=4), AirbenchNet(3, width=4)
    assert not bool(a.whitened)
    a.init_whitening(images)
    b.init_whitening(images)
    assert bool(a.whitened) and torch.equal(a.whiten.weight, b.whiten.weight)
    w, bias = patch_whitening(images)
    assert torch.equal(a.whiten.weight, w) and torch.equal(a.whiten.bias, bias)
    assert not a.whiten.weight.requires_grad and a.whiten.bias.requires_grad
    assert torch.equal(a(images), a(images.float() / 255.0))  # uint8 input == [0, 1] float input


# ------------------------------------------------------------------------------------------ augmentation


def _reference_shift(img: np.ndarray, flip: bool, dy: int, dx: int, pad: int) -> np.ndarray:
    if flip:
        img = img[..., ::-1]
    padded = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="reflect")
    h, w = img.shape[-2:]
    return padded[:, pad + dy : pad + dy + h, pad + dx : pad + dx + w]


def test_apply_flip_translate_matches_reference() -> None:
    x = torch.arange(3 * 2 * 5 * 6, dtype=torch.uint8).reshape(3, 2, 5, 6)
    flips = torch.tensor([True, False, True])
    shifts = torch.tensor([[1, -1], [0, 2], [-2, 0]])
    out = apply_flip_translate(x, flips, shifts, pad=2)
    assert out.dtype == torch.uint8
    for b in range(3):
        ref = _reference_shift(x[b].numpy(), bool(flips[b]), int(shifts[b, 0]), int(shifts[b, 1]), 2)
        assert np.array_equal(out[b].numpy(), ref), b
    # hand-checked values: image 1 (no flip) shifted by dx=+2 starts two columns in
    assert out[1, 0, 0].tolist() == x[1, 0, 0, 2:].tolist() + [x[1, 0, 0, 4].item(), x[1, 0, 0, 3].item()]
    assert torch.equal(apply_flip_translate(x, torch.zeros(3, dtype=torch.bool), torch.zeros(3, 2, dtype=torch.long), 2), x)
    assert torch.equal(apply_flip_translate(x, torch.ones(3, dtype=torch.bool), torch.zeros(3, 2, dtype=torch.long), 0), x.flip(-1))


def test_flip_translate_draws_per_image() -> None:
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    out = flip_translate(x, 2, True, generator=g1)
    flips = torch.rand(64, generator=g2) < 0.5
    shifts = torch.randint(-2, 3, (64, 2), generator=g2)
    assert torch.equal(out, apply_flip_translate(x, flips, shifts, 2))
    assert 0 < int(flips.sum()) < 64 and len({tuple(s) for s in shifts.tolist()}) > 5
    assert torch.equal(flip_translate(x, 0, False), x)


# ------------------------------------------------------------------------------------------ data path


def test_image_tensor_dataset_batches_equal_items() -> None:
    x = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    y = torch.arange(10) % 3
    ds = ImageTensorDataset(x, y)
    for data in (ds, Subset(ds, [7, 2, 5, 0])):
        loader = DataLoader(data, batch_size=3, shuffle=False, collate_fn=batch_collate)
        xs, ys = zip(*loader)
        ref_items = [data[i] for i in range(len(data))]
        assert torch.equal(torch.cat(xs), torch.stack([a for a, _ in ref_items]))
        assert torch.equal(torch.cat(ys), torch.stack([b for _, b in ref_items]))
        assert len(xs) == 4 if data is ds else len(xs) == 2
    with pytest.raises(ValueError, match="uint8"):
        ImageTensorDataset(x.float(), y)


def test_datamodule_reads_image_folder(datamodule: AirbenchDataModule) -> None:
    dm = datamodule
    assert len(dm.train_dataset) == 72 and len(dm.test_dataset) == 18 and dm.num_classes == 3
    assert dm.train_dataset.images.dtype == torch.uint8 and dm.score_dataset() is dm.train_dataset
    assert dm.train_dataset.targets.tolist() == [0] * 24 + [1] * 24 + [2] * 24  # class, then file order
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 16, 16) and x.dtype == torch.uint8 and y.shape == (16,)


class _Recording(ImageTensorDataset):
    """Records the indices of every batch read (the loader has no workers, so reads happen in batch order)."""

    log: list[list[int]]

    def __getitems__(self, indices):  # type: ignore[override]
        self.log.append(list(indices))
        return super().__getitems__(indices)


class _LogitsLog(Callback):
    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module) -> None:
        pl_module.register_forward_hook(lambda m, a, out: self.logits.append(out.detach().clone()) if m.training else None)


def test_forgetting_on_the_fast_path_matches_reference(datamodule: AirbenchDataModule) -> None:
    dm = datamodule
    rec = _Recording(dm.train_dataset.images, dm.train_dataset.targets)
    rec.log = []
    dm.train_dataset = rec
    seed_everything(0, verbose=False)
    module = AirbenchModule(num_classes=3, width=4, lr=0.2)
    forgetting, logits = ForgettingCallback(epochs=None, save=False), _LogitsLog()
    _trainer(4, [forgetting, logits]).fit(module, datamodule=dm)
    assert len(rec.log) == len(logits.logits) == 4 * 5  # 72 items, batch 16: 5 batches per epoch
    history: dict[int, list[bool]] = {i: [] for i in range(72)}
    for idx, out in zip(rec.log, logits.logits):
        for i, c in zip(idx, (out.argmax(1) == rec.targets[idx]).tolist()):
            history[i].append(c)
    assert len({tuple(b) for b in rec.log[:5]}) == 5 and sorted(sum(rec.log[:5], [])) == list(range(72))
    expected = []
    for i in range(72):
        seq = history[i]
        if not any(seq):
            expected.append(float("inf"))
        else:
            expected.append(float(sum(a and not b for a, b in zip(seq, seq[1:]))))
    assert forgetting.scores.tolist() == expected


class _GraNdReference(Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        assert bool(pl_module.net.whitened)  # the first conv is whitened before GraNd at init scores
        dm = trainer.datamodule
        params = [p for p in pl_module.parameters() if p.requires_grad]
        pl_module.eval()
        norms = []
        for i in range(len(dm.train_dataset)):
            x, y = dm.train_dataset[i]
            loss = F.cross_entropy(pl_module(x[None]), y[None])
            grads = torch.autograd.grad(loss, params)
            norms.append(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item())
        pl_module.train()
        self.reference = torch.tensor(norms)


def test_el2n_and_grand_on_the_fast_path_match_reference(datamodule: AirbenchDataModule) -> None:
    dm = datamodule
    seed_everything(1, verbose=False)
    module = AirbenchModule(num_classes=3, width=4, lr=0.2)
    el2n, grand, ref = EL2NCallback(2, save=False), GraNdCallback(0, save=False), _GraNdReference()
    _trainer(2, [grand, ref, el2n]).fit(module, datamodule=dm)
    assert torch.allclose(grand.scores_by_epoch[0].double(), ref.reference.double(), rtol=1e-4, atol=1e-6)
    module.eval()
    with torch.no_grad():
        probs = torch.softmax(module(dm.train_dataset.images).double(), 1)
    onehot = F.one_hot(dm.train_dataset.targets, 3).double()
    expected = (probs - onehot).norm(dim=1)  # the written formula, on un-augmented inputs
    assert torch.allclose(el2n.scores_by_epoch[2].double(), expected, atol=1e-5)
    test = _trainer(1, []).test(module, datamodule=dm, verbose=False)[0]
    assert 0.0 <= test["test/acc"] <= 1.0


def test_module_schedule_warms_up_then_decays_to_zero(datamodule: AirbenchDataModule) -> None:
    seed_everything(0, verbose=False)
    module = AirbenchModule(num_classes=3, width=4, lr=0.3, warmup_fraction=0.2)
    lrs: list[float] = []

    class _LR(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    _trainer(4, [_LR()]).fit(module, datamodule=datamodule)
    peak = int(np.argmax(lrs))
    assert len(lrs) == 20 and lrs[peak] == pytest.approx(0.3) and peak == 3
    assert all(a < b for a, b in zip(lrs[:peak], lrs[1 : peak + 1]))
    assert lrs[peak + 1] == pytest.approx(0.3)  # the decay starts from the peak after the warm-up
    assert all(a > b for a, b in zip(lrs[peak + 1 :], lrs[peak + 2 :])) and lrs[-1] < 0.3 / 10
    groups = module.trainer.optimizers[0].param_groups
    assert groups[0]["weight_decay"] > 0 and groups[1]["weight_decay"] == 0  # no decay on BN / biases
    assert groups[0]["nesterov"]
