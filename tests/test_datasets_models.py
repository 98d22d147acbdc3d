"""DigitsDataModule, CIFAR10DataModule (on a tiny fake zip), the networks and ClassifierModule."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from lightning_datadiet.demo import (
    MODEL_NAMES,
    CIFAR10DataModule,
    ClassifierModule,
    DigitsDataModule,
    build_model,
    load_cifar10_arrays,
    random_crop_flip,
    resnet18_cifar,
)


def test_digits_split_sizes_and_determinism():
    a, b = DigitsDataModule(split_seed=3), DigitsDataModule(split_seed=3)
    a.setup()
    b.setup()
    assert (len(a.train_dataset), len(a.val_dataset), len(a.test_dataset)) == (1000, 300, 497)
    assert torch.equal(a.train_dataset.inputs, b.train_dataset.inputs)
    assert torch.equal(a.train_dataset.targets, b.train_dataset.targets)
    x, y = a.train_dataset[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert a.train_dataset.targets.dtype == torch.long
    # stratified: every class present in every split
    for ds in (a.train_dataset, a.val_dataset, a.test_dataset):
        assert len(ds.targets.unique()) == 10
    # disjoint splits covering the data
    c = DigitsDataModule(split_seed=4)
    c.setup()
    assert not torch.equal(a.train_indices, c.train_indices)
    assert a.score_dataset() is a.train_dataset
    assert len(a.train_dataloader()) == 16


def test_digits_label_noise_train_only():
    clean = DigitsDataModule()
    clean.setup()
    assert not clean.train_corrupted_mask.any()
    dm = DigitsDataModule(label_noise=0.2, noise_seed=1)
    dm.setup()
    assert int(dm.train_noise_drawn.sum()) == 200
    changed = dm.train_dataset.targets != dm.train_clean_targets
    assert torch.equal(changed, dm.train_corrupted_mask)
    assert 150 <= int(changed.sum()) <= 200  # uniform noise keeps ~1/10 of the drawn labels by chance
    assert torch.equal(dm.train_clean_targets, clean.train_dataset.targets)
    assert torch.equal(dm.test_dataset.targets, clean.test_dataset.targets)
    assert torch.equal(dm.val_dataset.targets, clean.val_dataset.targets)
    perm = DigitsDataModule(label_noise=0.2, noise_mode="permute")
    perm.setup()
    assert torch.equal(perm.train_dataset.targets.sort().values, clean.train_dataset.targets.sort().values)
    with pytest.raises(ValueError, match="label_noise"):
        DigitsDataModule(label_noise=1.5)
    with pytest.raises(ValueError, match="noise_mode"):
        DigitsDataModule(label_noise=0.1, noise_mode="bogus")


def _fake_cifar_zip(path: Path) -> list[tuple[str, int, int]]:
    """2 classes x 3 images per split; each image a constant colour encoding (split, class, file)."""
    written = []
    with zipfile.ZipFile(path, "w") as zf:
        for split in ("train", "test"):
            for label, cls in enumerate(("zebra", "apple")):  # not in sorted order on purpose
                for k in (2, 0, 1):
                    value = 40 * label + 10 * k + (100 if split == "test" else 0)
                    img = Image.new("RGB", (32, 32), (value, value, value))
                    buf = io.BytesIO()
                    img.save(buf, format="JPEG", quality=100)
                    zf.writestr(f"{split}/{cls}/{k:04d}.jpg", buf.getvalue())
                    written.append((split, label, value))
    return written


def test_cifar_zip_order_labels_and_cache(tmp_path):
    zip_path = tmp_path / "cifar10-jpeg.zip"
    _fake_cifar_zip(zip_path)
    cache = tmp_path / "cache"
    x, y, classes = load_cifar10_arrays(zip_path, "train", cache_dir=cache)
    assert classes == ["apple", "zebra"]
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.uint8
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    # sorted by class then file name: apple (values 40..60), then zebra (0..20)
    means = x.float().mean(dim=(1, 2, 3)).round().tolist()
    assert means == pytest.approx([40, 50, 60, 0, 10, 20], abs=2)
    assert len(list(cache.glob("*.npy"))) == 2
    t = time.perf_counter()
    x2, y2, _ = load_cifar10_arrays(zip_path, "train", cache_dir=cache)
    assert time.perf_counter() - t < 1.0
    assert torch.equal(x, x2) and torch.equal(y, y2)
    xt, _, _ = load_cifar10_arrays(zip_path, "test", cache_dir=cache)
    assert xt.float().mean() > 100

    # an extracted folder gives the same arrays
    folder = tmp_path / "extracted"
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(folder)
    xf, yf, _ = load_cifar10_arrays(folder, "train", cache_dir=tmp_path / "cache2")
    assert torch.equal(xf, x) and torch.equal(yf, y)


def test_cifar_datamodule(tmp_path):
    zip_path = tmp_path / "c.zip"
    _fake_cifar_zip(zip_path)
    dm = CIFAR10DataModule(
        zip_path, batch_size=4, num_workers=0, cache_dir=tmp_path / "cache", label_noise=0.5
    )
    dm.prepare_data()
    dm.setup()
    assert dm.num_classes == 2 and len(dm.train_dataset) == 6 and len(dm.test_dataset) == 6
    assert dm.val_dataset is None
    assert int(dm.train_noise_drawn.sum()) == 3
    xa, ya = dm.train_dataset[0]
    xs, ys = dm.score_dataset()[0]
    assert xa.shape == xs.shape == (3, 32, 32) and xs.dtype == torch.float32
    assert ya == ys
    assert torch.equal(dm.score_dataset().targets, dm.train_dataset.targets)
    # score dataset: normalised, no augmentation (constant image stays constant per channel)
    assert torch.allclose(xs, xs[:, :1, :1].expand_as(xs), atol=1e-5)
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].shape == (4, 3, 32, 32)
    with_val = CIFAR10DataModule(zip_path, num_workers=0, cache_dir=tmp_path / "cache", val_size=2)
    with_val.setup()
    assert len(with_val.train_dataset) == 4 and len(with_val.val_dataset) == 2


def test_cifar_missing_dir_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data-dir"):
        CIFAR10DataModule(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="cifar10-jpeg.zip"):
        CIFAR10DataModule(tmp_path / "empty")


def test_random_crop_flip():
    x = torch.arange(3 * 32 * 32, dtype=torch.uint8).reshape(3, 32, 32)
    out = random_crop_flip(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_shapes(name):
    in_ch, size = (1, 8) if name == "digits_cnn" else (3, 32)
    net = build_model(name, num_classes=7, in_channels=in_ch, input_size=size)
    assert net(torch.randn(2, in_ch, size, size)).shape == (2, 7)
    with pytest.raises(ValueError, match="Unknown model"):
        build_model("vgg", 10)


def test_resnet18_cifar_stem():
    net = resnet18_cifar(10)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)


def test_classifier_trains_one_epoch_on_digits():
    torch.manual_seed(0)
    dm = DigitsDataModule(batch_size=64)
    module = ClassifierModule(build_model("digits_cnn", 10, in_channels=1), num_classes=10, lr=0.05)
    assert "net" not in module.hparams
    trainer = Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(module, datamodule=dm)
    assert np.isfinite(float(trainer.callback_metrics["train/loss_epoch"]))
    assert 0 <= float(trainer.callback_metrics["val/acc"]) <= 1
    (result,) = trainer.test(module, datamodule=dm, verbose=False)
    assert result["test/acc"] > 0.5


def test_training_step_returns_the_loss_only():
    module = ClassifierModule(build_model("digits_cnn", 10, in_channels=1), num_classes=10)
    dm = DigitsDataModule()
    out = module.training_step(next(iter(dm.train_dataloader())), 0)  # logging without a trainer only warns
    assert isinstance(out, torch.Tensor) and out.ndim == 0
