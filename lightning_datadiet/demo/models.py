"""Small networks for CPU runs, ResNet18 with a CIFAR stem, and a plain classification LightningModule.

``ClassifierModule`` is deliberately ordinary: ``training_step`` returns the loss only, as most users' modules
do, so the scoring callbacks are exercised the way they are used in practice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_datadiet.data.targets import batch_inputs_targets

__all__ = ["MLP", "SmallCNN", "DigitsCNN", "resnet18_cifar", "ClassifierModule", "build_model", "MODEL_NAMES"]

MODEL_NAMES = ("digits_cnn", "mlp", "small_cnn", "resnet18")


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class MLP(nn.Module):
    """Flatten, then ``Linear-BatchNorm-ReLU`` hidden layers, then a linear classifier.

    Args:
        num_classes: number of outputs.
        in_features: flattened input size (64 for 8x8 digits, 3072 for CIFAR).
        hidden: widths of the hidden layers.
    """

    def __init__(
        self, num_classes: int = 10, in_features: int = 64, hidden: Sequence[int] = (128, 128)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h, bias=False), nn.BatchNorm1d(h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:  # [B, ...] -> [B, K]
        return self.layers(x)


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages (``width``, ``2*width``, ``4*width`` channels) with 2x2 max-pooling between
    them, global average pooling and a linear classifier. About 36k parameters at ``width=16``; fast on CPU.

    Args:
        num_classes: number of outputs.
        width: channels of the first stage.
        in_channels: input channels (3 for RGB).
    """

    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, w),
            _conv_bn_relu(w, w),
            nn.MaxPool2d(2),
            _conv_bn_relu(w, 2 * w),
            _conv_bn_relu(2 * w, 2 * w),
            nn.MaxPool2d(2),
            _conv_bn_relu(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, K]
        return self.classifier(self.features(x))


class DigitsCNN(nn.Module):
    """A tiny conv net for 1x8x8 digits: two conv-BN-ReLU at 8x8, max-pool to 4x4, a hidden linear layer.

    Args:
        num_classes: number of outputs.
        width: channels of the first conv (the second has ``2*width``).
        in_channels: input channels.
    """

    def __init__(self, num_classes: int = 10, width: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, width), _conv_bn_relu(width, 2 * width), nn.MaxPool2d(2), nn.Flatten()
        )
        self.classifier = nn.Sequential(
            nn.Linear(2 * width * 16, 64, bias=False),
            nn.BatchNorm1d(64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:  # [B, 1, 8, 8] -> [B, K]
        return self.classifier(self.features(x))


def resnet18_cifar(num_classes: int = 10, in_channels: int = 3, width: int = 64) -> nn.Module:
    """torchvision's ResNet18 with the usual CIFAR stem: a 3x3 stride-1 first conv and no max-pool.

    Args:
        num_classes: number of outputs.
        in_channels: input channels.
        width: channels of the first stage (stages have ``width, 2w, 4w, 8w``); 64 is the standard ResNet-18.
    """
    from torchvision.models import resnet18
    from torchvision.models.resnet import BasicBlock

    net = resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    if width != 64:  # rebuild the stages at this width, with torchvision's initialisation
        net.bn1 = nn.BatchNorm2d(width)
        net.inplanes = width
        for i, stride in enumerate((1, 2, 2, 2)):
            setattr(net, f"layer{i + 1}", net._make_layer(BasicBlock, width * 2**i, 2, stride=stride))
        net.fc = nn.Linear(8 * width, num_classes)
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
    return net


def build_model(
    name: str, num_classes: int = 10, *, in_channels: int = 3, width: int | None = None, input_size: int = 32
) -> nn.Module:
    """A network by name: ``"digits_cnn"``, ``"mlp"``, ``"small_cnn"`` or ``"resnet18"``.

    Args:
        name: one of ``MODEL_NAMES``.
        num_classes: number of outputs.
        in_channels: input channels (1 for digits, 3 for CIFAR).
        width: base width of ``digits_cnn`` / ``small_cnn`` / ``resnet18`` / hidden width of ``mlp`` (model
            default if None).
        input_size: image side, used by ``mlp`` to size its first layer.

    Raises:
        ValueError: unknown ``name``.
    """
    if name == "digits_cnn":
        return DigitsCNN(num_classes, width=width or 16, in_channels=in_channels)
    if name == "mlp":
        h = width or 128
        return MLP(num_classes, in_features=in_channels * input_size * input_size, hidden=(h, h))
    if name == "small_cnn":
        return SmallCNN(num_classes, width=width or 16, in_channels=in_channels)
    if name == "resnet18":
        return resnet18_cifar(num_classes, in_channels=in_channels, width=width or 64)
    raise ValueError(f"Unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}.")


class ClassifierModule(LightningModule):
    """Cross-entropy classification around any network, SGD (momentum 0.9, Nesterov) and a per-step schedule.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``.
    ``training_step`` returns the loss only.

    The learning-rate schedule runs per optimizer step over ``trainer.estimated_stepping_batches``, so it
    spans the whole fit whatever the number of epochs or the size of the (pruned) training set:
    ``"cosine"`` (linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to 0),
    ``"onecycle"`` (``torch.optim.lr_scheduler.OneCycleLR``) or ``"constant"``.
    ``lr=0.1`` is the usual value for CIFAR ResNets at batch size 128.

    Args:
        net: the network (``[B, ...] -> [B, K]`` logits), or the name of a built-in one (``"digits_cnn"``,
            ``"mlp"``, ``"small_cnn"``, ``"resnet18"``; built by :func:`build_model` with ``num_classes``,
            ``width``, ``in_channels`` and ``input_size``, which is how the presets name it). Stored as
            ``self.net``; a module is not saved in the hyperparameters, a name is.
        num_classes: K, for the accuracy metrics (and the outputs of a named network).
        lr: peak learning rate.
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        weight_decay: L2 weight decay on all parameters.
        schedule: ``"cosine"``, ``"onecycle"`` or ``"constant"``.
        warmup_fraction: warm-up share of the steps for ``"cosine"``.
        width: base width of a named network (its default when ``None``).
        in_channels: input channels of a named network (1 for digits, 3 for CIFAR).
        input_size: image side of a named network (used by ``mlp`` to size its first layer).

    Example:
        >>> module = ClassifierModule(DigitsCNN(), num_classes=10, lr=0.05)
        >>> module(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        net: nn.Module | str = "small_cnn",
        num_classes: int = 10,
        lr: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 5e-4,
        schedule: str = "cosine",
        warmup_fraction: float = 0.0,
        width: int | None = None,
        in_channels: int = 3,
        input_size: int = 32,
    ) -> None:
        super().__init__()
        if schedule not in ("cosine", "onecycle", "constant"):
            raise ValueError(f"`schedule` must be 'cosine', 'onecycle' or 'constant', got {schedule!r}.")
        if lr <= 0:
            raise ValueError(f"`lr` must be positive, got {lr}.")
        named = isinstance(net, str)
        self.save_hyperparameters(ignore=[] if named else ["net"])
        if named:
            net = build_model(net, num_classes, in_channels=in_channels, width=width, input_size=input_size)
        self.net = net
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: Any, stage: str, metric: MulticlassAccuracy) -> Tensor:
        x, y = batch_inputs_targets(batch)
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        metric(logits.detach(), y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=stage != "train")
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        opt = torch.optim.SGD(
            self.parameters(),
            lr=hp.lr,
            momentum=hp.momentum,
            nesterov=hp.nesterov and hp.momentum > 0,
            weight_decay=hp.weight_decay,
        )
        if hp.schedule == "constant":
            return opt
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if hp.schedule == "onecycle":
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=total)
        else:
            warmup = int(hp.warmup_fraction * total)

            def factor(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                progress = min(1.0, (step - warmup) / max(1, total - warmup))
                return 0.5 * (1.0 + math.cos(math.pi * progress))

            sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
