"""Tiny models and data shared by the callback tests (also used by the DDP scripts in tests/scripts/)."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset


class EpochSeededSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on (seed, epoch): data order survives a resume."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def make_data(n: int = 40, num_classes: int = 3, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 4, 4, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return TensorDataset(x, y)


class TinyDataModule(LightningDataModule):
    def __init__(self, n=40, batch_size=8, num_workers=0, persistent_workers=False, seeded_sampler=False,
                 drop_last=False, seed=0):
        super().__init__()
        self.n, self.batch_size, self.num_workers = n, batch_size, num_workers
        self.persistent_workers, self.seeded_sampler, self.drop_last = persistent_workers, seeded_sampler, drop_last
        self.dataset = make_data(n, seed=seed)

    def train_dataloader(self):
        kwargs = dict(batch_size=self.batch_size, num_workers=self.num_workers, drop_last=self.drop_last,
                      persistent_workers=self.persistent_workers and self.num_workers > 0)
        if self.seeded_sampler:
            return DataLoader(self.dataset, sampler=EpochSeededSampler(len(self.dataset)), **kwargs)
        return DataLoader(self.dataset, shuffle=True, **kwargs)


class TinyNet(nn.Module):
    """Conv2d + BatchNorm + Linear: the layers GraNd must cover."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class TinyModule(LightningModule):
    """An ordinary user module: training_step returns only the loss."""

    def __init__(self, lr: float = 0.1, num_classes: int = 3) -> None:
        super().__init__()
        self.net = TinyNet(num_classes)
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class ScriptedModule(LightningModule):
    """Predictions follow a script: ``script[epoch, i]`` says whether example ``i`` is classified correctly at its
    presentations during ``epoch``. The example id travels in the input (x[:, 0]); the label is ``i % K``."""

    def __init__(self, script: torch.Tensor, num_classes: int = 3) -> None:
        super().__init__()
        self.register_buffer("script", script.bool())
        self.k = num_classes
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        ids = x[:, 0].round().long()
        labels = ids % self.k
        epoch = min(self.trainer.current_epoch, self.script.shape[0] - 1)
        ok = self.script[epoch, ids]
        pred = torch.where(ok, labels, (labels + 1) % self.k)
        return nn.functional.one_hot(pred, self.k).float() * 5.0 + self.dummy * 0.0

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self(x).sum() * 0.0 + self.dummy * 0.0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def scripted_data(n: int, num_classes: int = 3) -> TensorDataset:
    ids = torch.arange(n, dtype=torch.float32)
    return TensorDataset(ids[:, None], torch.arange(n) % num_classes)


def expected_forgetting(script: torch.Tensor) -> torch.Tensor:
    """Independent reference: walk each example's correctness sequence over epochs."""
    epochs, n = script.shape
    out = torch.zeros(n)
    for i in range(n):
        seq = [bool(script[e, i]) for e in range(epochs)]
        if not any(seq):
            out[i] = float("inf")
            continue
        out[i] = sum(1 for a, b in zip(seq, seq[1:]) if a and not b)
    return out
