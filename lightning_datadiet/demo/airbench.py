"""A fast CIFAR-10 recipe written from the published ideas of airbench (Keller Jordan, arXiv 2404.00498) and
hlb-CIFAR10 (Tysam&co): the ``--model airbench`` preset of the ``datadiet`` study.

What it takes from them (facts from the papers/READMEs, not their code):

- a first 2x2 convolution initialised by **patch whitening**: the eigenvectors of the covariance of all 2x2
  patches of the training images, scaled by ``1/sqrt(eigenvalue + eps)``, and their negatives (so the following
  GELU sees both signs); its weights stay frozen, its bias trains;
- three conv groups of widths ``w / 4w / 4w`` (64/256/256 at ``w=64``), each ``conv3x3 - maxpool2 - BN - GELU -
  conv3x3 - BN - GELU``, global max-pooling and a linear head;
- label smoothing 0.2, Nesterov SGD with a linear warm-up and a linear decay to 0 (per optimizer step), no weight
  decay on BatchNorm parameters and biases, large batches (512-1024);
- random horizontal flips and 2-pixel (reflect-padded) translations done on the **batched** tensor on the device;
- optional test-time flip augmentation (mean of the logits of the image and its mirror image).

Data path: the images are decoded once and held as one ``uint8 [N, C, H, W]`` tensor (on the GPU when training
there). :class:`ImageTensorDataset` is map-style (so the library's callbacks and :class:`PrunedDataModule` work
as for any dataset: ``ForgettingCallback`` tracks torch's ``BatchSampler``, EL2N/GraNd read ``score_dataset()``
in index order) and implements ``__getitems__``, so a whole batch is one tensor index instead of ``B`` item reads
and a stack. The network takes uint8 and scales to [0, 1] itself, so the scoring passes (which move batches to
the device without the LightningModule's batch hooks) see exactly the inputs training sees, minus augmentation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

from lightning_datadiet.data.targets import batch_inputs_targets
from lightning_datadiet.demo.data import CIFAR10DataModule

__all__ = [
    "ImageTensorDataset",
    "batch_collate",
    "AirbenchDataModule",
    "AirbenchNet",
    "AirbenchModule",
    "patch_whitening",
    "apply_flip_translate",
    "flip_translate",
]


# --------------------------------------------------------------------------------------------------- data


class _Batch(tuple):
    """A batch already assembled by :meth:`ImageTensorDataset.__getitems__` (``(images, targets)``)."""


def batch_collate(items: Any) -> Any:
    """Collate for :class:`ImageTensorDataset`: a batch it assembled passes through as ``(images, targets)``;
    anything else (a list of items) goes to torch's ``default_collate``."""
    if isinstance(items, _Batch):
        return tuple(items)
    return default_collate(items)


class ImageTensorDataset(Dataset):
    """Images held as one uint8 tensor (CPU or GPU) and labels as a CPU ``LongTensor`` (``.targets``).

    Item ``i`` is ``(images[i], targets[i])``; ``__getitems__(indices)`` returns the whole batch with one tensor
    index (use :func:`batch_collate` as the DataLoader's ``collate_fn``).

    Args:
        images: ``uint8 [N, C, H, W]``.
        targets: class ids ``[N]``.
    """

    def __init__(self, images: Tensor, targets: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"`images` must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}.")
        if len(images) != len(targets):
            raise ValueError(f"images ({len(images)}) and targets ({len(targets)}) differ in length.")
        self.images = images
        self.targets = torch.as_tensor(targets, dtype=torch.long).cpu()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.targets[index]

    def __getitems__(self, indices: Sequence[int]) -> _Batch:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        return _Batch((self.images[idx.to(self.images.device)], self.targets[idx]))

    def to(self, device: torch.device | str) -> ImageTensorDataset:
        """Move the images to ``device`` in place (labels stay on the CPU); returns ``self``."""
        self.images = self.images.to(device)
        return self


class AirbenchDataModule(CIFAR10DataModule):
    """:class:`~lightning_datadiet.demo.CIFAR10DataModule` (same sources: the CIFAR-10 JPEG zip, any
    ImageFolder-layout folder with ``train/`` and ``test/``, torchvision's CIFAR10 root; same splits, subsets and
    label noise) with the fast data path: every split is an :class:`ImageTensorDataset` of raw uint8 images,
    loaders index batches with one tensor op (no workers needed), and when the Trainer runs on CUDA the images
    are moved to the GPU once. No augmentation here: :class:`AirbenchModule` augments the batch on the device.

    Args:
        data_dir: as for ``CIFAR10DataModule``.
        batch_size: mini-batch size of every loader.
        device: ``"auto"`` (the Trainer's device when it is CUDA, else CPU), ``"cpu"`` or a device string.
        **kwargs: ``val_size``, ``train_subset``, ``split_seed``, ``label_noise``, ``noise_mode``, ``noise_seed``,
            ``cache_dir`` as for ``CIFAR10DataModule``.
    """

    def __init__(
        self, data_dir: str | Path, batch_size: int = 512, device: str = "auto", **kwargs: Any
    ) -> None:
        kwargs.pop("num_workers", None)
        kwargs.pop("augment", None)
        super().__init__(data_dir, batch_size=batch_size, num_workers=0, augment=False, **kwargs)
        self.device = device

    @override
    def setup(self, stage: str | None = None) -> None:
        """Load (decoded once, cached), split and corrupt; then wrap every split as an ImageTensorDataset."""
        if isinstance(self.train_dataset, ImageTensorDataset):
            return
        super().setup(stage)
        self.train_dataset = ImageTensorDataset(self._train_x, self.train_dataset.targets)
        if self.val_dataset is not None:
            self.val_dataset = ImageTensorDataset(self.val_dataset.inputs, self.val_dataset.targets)
        self.test_dataset = ImageTensorDataset(self.test_dataset.inputs, self.test_dataset.targets)

    def whitening_images(self) -> Tensor:
        """The training images (uint8 ``[N, C, H, W]``) from which the first conv's whitening is computed."""
        self.setup()
        return self.train_dataset.images

    @override
    def score_dataset(self) -> Dataset:
        """The training set itself (it carries no augmentation): same items, labels and order."""
        self.setup()
        return self._placed(self.train_dataset)

    def _target_device(self) -> torch.device:
        if self.device != "auto":
            return torch.device(self.device)
        trainer = self.trainer
        root = getattr(getattr(trainer, "strategy", None), "root_device", None) if trainer is not None else None
        return root if root is not None and root.type == "cuda" else torch.device("cpu")

    def _placed(self, dataset: ImageTensorDataset) -> ImageTensorDataset:
        device = self._target_device()
        if dataset.images.device != device:
            dataset.to(device)
        return dataset

    @override
    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            self._placed(dataset), batch_size=self.batch_size, shuffle=shuffle, collate_fn=batch_collate
        )


# --------------------------------------------------------------------------------------------------- augmentation


def apply_flip_translate(x: Tensor, flips: Tensor, shifts: Tensor, pad: int) -> Tensor:
    """Flip and translate each image of a batch by given amounts (the deterministic half of :func:`flip_translate`).

    Args:
        x: ``[B, C, H, W]`` batch (any dtype).
        flips: ``bool [B]``: mirror image ``b`` left-right.
        shifts: ``long [B, 2]``: ``(dy, dx)`` in ``[-pad, pad]``; the output pixel ``(i, j)`` is the (flipped)
            input pixel ``(i + dy, j + dx)`` of the reflect-padded image.
        pad: the largest shift.
    """
    if flips.any():
        x = torch.where(flips.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
    if pad == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x.float() if not x.is_floating_point() else x, (pad, pad, pad, pad), mode="reflect").to(x.dtype)
    out = torch.empty_like(x)
    shifts = shifts.to(x.device)
    for dy in range(-pad, pad + 1):
        for dx in range(-pad, pad + 1):
            sel = ((shifts[:, 0] == dy) & (shifts[:, 1] == dx)).nonzero().flatten()
            if sel.numel():
                out[sel] = padded[sel, :, pad + dy : pad + dy + h, pad + dx : pad + dx + w]
    return out


def flip_translate(
    x: Tensor, translate: int = 2, flip: bool = True, generator: torch.Generator | None = None
) -> Tensor:
    """Random horizontal flips (p=0.5) and random translations by up to ``translate`` pixels (reflect padding),
    drawn per image and applied to the whole batch on its device.

    Args:
        x: ``[B, C, H, W]`` batch.
        translate: largest shift in pixels (0 = none).
        flip: draw random flips.
        generator: a CPU generator for the draws (default: torch's global RNG, seeded by ``seed_everything``).
    """
    b = x.shape[0]
    flips = torch.rand(b, generator=generator) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    shifts = torch.randint(-translate, translate + 1, (b, 2), generator=generator)
    return apply_flip_translate(x, flips, shifts, translate)


# --------------------------------------------------------------------------------------------------- network


@torch.no_grad()
def patch_whitening(
    images: Tensor, kernel_size: int = 2, eps: float = 5e-4, chunk: int = 2048
) -> tuple[Tensor, Tensor]:
    """Weights and bias of a ``kernel_size`` conv that whitens the images' patches (ZCA-free PCA whitening).

    The covariance ``S`` of all ``kernel_size x kernel_size`` patches (every position, no padding) of ``images``
    (uint8 scaled to [0, 1], or float as given) is accumulated in float64 over chunks; with ``S = V diag(l) V^T``
    filter ``i`` is ``v_i / sqrt(l_i + eps)`` and the bias removes the patch mean, so the outputs have covariance
    ``diag(l / (l + eps))`` (about the identity) and mean 0 on these images. The filters are returned together
    with their negatives: ``2 * C * k * k`` output channels. Deterministic for given images.

    Returns:
        ``(weight [2D, C, k, k], bias [2D])`` in float32, ``D = C * k * k``.
    """
    n, c = images.shape[:2]
    d = c * kernel_size * kernel_size
    total = torch.zeros(d, dtype=torch.float64)
    outer = torch.zeros(d, d, dtype=torch.float64)
    count = 0
    for start in range(0, n, chunk):
        x = images[start : start + chunk].cpu()
        x = x.double() / 255.0 if x.dtype == torch.uint8 else x.double()
        p = F.unfold(x, kernel_size).transpose(1, 2).reshape(-1, d)  # [B * positions, D]
        total += p.sum(0)
        outer += p.T @ p
        count += p.shape[0]
    mean = total / count
    cov = outer / count - torch.outer(mean, mean)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    filters = (eigenvectors / torch.sqrt(eigenvalues.clamp_min(0) + eps)).T  # [D, D], row i = filter i
    bias = -(filters @ mean)
    weight = torch.cat([filters, -filters]).reshape(2 * d, c, kernel_size, kernel_size)
    return weight.float(), torch.cat([bias, -bias]).float()


class _ConvGroup(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, bn_momentum: float) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(c_out, momentum=bn_momentum),
            nn.GELU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out, momentum=bn_momentum),
            nn.GELU(),
        )


class AirbenchNet(nn.Module):
    """The airbench-style network: a frozen patch-whitening 2x2 conv, three conv groups of widths
    ``width / 4*width / 4*width`` (64/256/256 at the default ``width=64``), global max-pooling, a linear head.

    Takes uint8 images (scaled to [0, 1] here) or float images already in [0, 1]. Until
    :meth:`init_whitening` is called the first conv keeps PyTorch's default init.

    Args:
        num_classes: outputs.
        width: channels of the first group (the width multiplier: 16 gives 16/64/64).
        in_channels: image channels.
        whiten_kernel: side of the whitening conv.
        bn_momentum: BatchNorm momentum (high, as few steps are taken per epoch).
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: int = 64,
        in_channels: int = 3,
        whiten_kernel: int = 2,
        bn_momentum: float = 0.4,
    ) -> None:
        super().__init__()
        whiten_out = 2 * in_channels * whiten_kernel * whiten_kernel
        self.whiten = nn.Conv2d(in_channels, whiten_out, whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # frozen: its value is the whitening transform
        self.register_buffer("whitened", torch.zeros((), dtype=torch.bool))
        widths = (width, 4 * width, 4 * width)
        self.groups = nn.Sequential(
            _ConvGroup(whiten_out, widths[0], bn_momentum),
            _ConvGroup(widths[0], widths[1], bn_momentum),
            _ConvGroup(widths[1], widths[2], bn_momentum),
        )
        self.head = nn.Linear(widths[2], num_classes, bias=False)

    def init_whitening(self, images: Tensor, eps: float = 5e-4) -> None:
        """Set the first conv to the patch whitening of ``images`` (uint8 ``[N, C, H, W]``); see
        :func:`patch_whitening`."""
        weight, bias = patch_whitening(images, self.whiten.kernel_size[0], eps)
        with torch.no_grad():
            self.whiten.weight.copy_(weight)
            self.whiten.bias.copy_(bias)
            self.whitened.fill_(True)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, K]
        if x.dtype == torch.uint8:
            x = x.to(self.whiten.weight.dtype) / 255.0
        x = F.gelu(self.whiten(x))
        x = self.groups(x)
        return self.head(torch.amax(x, dim=(2, 3)))


# --------------------------------------------------------------------------------------------------- module


class AirbenchModule(LightningModule):
    """Training of :class:`AirbenchNet` (or any network taking uint8 images): flip/translate augmentation of the
    batch on its device, label-smoothed cross-entropy, Nesterov SGD with a linear warm-up then linear decay to 0
    over ``trainer.estimated_stepping_batches`` (per step), weight decay on conv/linear weights only, optional
    test-time flip. At ``fit`` the first conv is whitened from ``trainer.datamodule.whitening_images()`` (the
    whole training split, also when a ``PrunedDataModule`` wraps the data; it uses no labels), once.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``;
    ``training_step`` returns the loss and calls ``self(x)``, so a forward hook on the module sees the logits.

    Args:
        net: the network; default ``AirbenchNet(num_classes, width)``.
        num_classes: K.
        width: width of the default network.
        lr: peak learning rate.
        momentum: Nesterov momentum.
        weight_decay: L2 on conv and linear weights.
        label_smoothing: of the training loss (validation/test losses are plain cross-entropy).
        warmup_fraction: share of the steps spent warming up linearly from 0.
        translate: largest random translation in pixels (0 = none).
        flip: random horizontal flips in training.
        tta: test-time flip: average the logits of each image and its mirror image in validation and test.
        channels_last: keep weights and batches in the channels-last memory format (2-2.5x faster on this
            2-core CPU for the width-16 net, measured; the usual choice on CUDA).
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        num_classes: int = 10,
        width: int = 64,
        lr: float = 0.2,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        label_smoothing: float = 0.2,
        warmup_fraction: float = 0.2,
        translate: int = 2,
        flip: bool = True,
        tta: bool = True,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"`lr` must be positive, got {lr}.")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"`warmup_fraction` must be in [0, 1), got {warmup_fraction}.")
        self.save_hyperparameters(ignore=["net"])
        self.net = net if net is not None else AirbenchNet(num_classes, width=width)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    @override
    def setup(self, stage: str) -> None:
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if stage != "fit" or not isinstance(self.net, AirbenchNet) or bool(self.net.whitened):
            return
        dm = getattr(self.trainer, "datamodule", None)
        source = getattr(dm, "whitening_images", None) if dm is not None else None
        if not callable(source):
            rank_zero_warn(
                "AirbenchModule: the datamodule has no whitening_images(), so the first conv keeps its random "
                "init. Use AirbenchDataModule, or call module.net.init_whitening(train_images) before fit."
            )
            return
        self.net.init_whitening(source())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _format(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last and x.ndim == 4 else x

    def eval_logits(self, x: Tensor) -> Tensor:
        """Logits for validation and test: with ``tta``, the mean of the image's and its mirror image's logits
        (the ``datadiet`` study measures accuracy with this; the score callbacks use the plain forward pass)."""
        x = self._format(x)
        logits = self(x)
        if self.hparams.tta:
            logits = 0.5 * (logits + self(x.flip(-1)))
        return logits

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch_inputs_targets(batch)
        x = self._format(flip_translate(x, self.hparams.translate, self.hparams.flip))
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        self.train_acc(logits.detach(), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def _eval_step(self, batch: Any, stage: str, metric: MulticlassAccuracy) -> None:
        x, y = batch_inputs_targets(batch)
        logits = self.eval_logits(x)
        metric(logits, y)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), on_epoch=True, prog_bar=True)
        self.log(f"{stage}/acc", metric, on_epoch=True, prog_bar=True)

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_acc)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_acc)

    @override
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        decay, no_decay = [], []
        for p in self.net.parameters():
            if p.requires_grad:
                (decay if p.ndim > 1 else no_decay).append(p)
        opt = torch.optim.SGD(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr,
            momentum=hp.momentum,
            nesterov=hp.momentum > 0,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, int(math.ceil(hp.warmup_fraction * total))) if hp.warmup_fraction > 0 else 0

        def factor(step: int) -> float:  # linear warm-up from ~0, then linear decay to 0 at the last step
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(1, total - warmup))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
