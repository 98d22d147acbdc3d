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


class ScriptedLogitsModule(LightningModule):
    """Logits follow a script: ``logits[epoch, i]`` (``[E, N, K]``) is the output for example ``i`` (its id travels in
    x[:, 0]) at every presentation during ``epoch``; the label is ``i % K`` (see :func:`scripted_data`)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("script", logits.float())
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        ids = x[:, 0].round().long()
        epoch = min(self.trainer.current_epoch, self.script.shape[0] - 1)
        return self.script[epoch, ids] + self.dummy * 0.0

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self(x).sum() * 0.0 + self.dummy * 0.0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def scripted_logits(epochs: int, n: int, num_classes: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(epochs, n, num_classes, generator=torch.Generator().manual_seed(seed)) * 2.0


def expected_dynamics(logits: torch.Tensor, window: int, multiplicity: torch.Tensor | None = None) -> dict:
    """Independent reference: walk each example's presentations (epoch by epoch; ``multiplicity[e, i]`` copies in
    epoch ``e``, default 1) and apply the written definitions in float64 Python arithmetic."""
    import math

    epochs, n, k = logits.shape
    mult = torch.ones(epochs, n, dtype=torch.long) if multiplicity is None else multiplicity
    out = {m: torch.full((n,), float("nan")) for m in
           ("aum", "confidence", "variability", "correctness", "dynamic_uncertainty")}  # fmt: skip
    for i in range(n):
        y = i % k
        margins, probs, correct = [], [], []
        for e in range(epochs):
            z = [float(v) for v in logits[e, i]]
            p = torch.softmax(logits[e, i].float(), 0)[y].item()  # float32 p[y], as the training pass computes it
            for _ in range(int(mult[e, i])):
                margins.append(z[y] - max(z[j] for j in range(k) if j != y))
                probs.append(p)
                correct.append(max(range(k), key=lambda j: z[j]) == y)
        c = len(probs)
        if c == 0:
            continue
        mean = sum(probs) / c
        out["aum"][i] = sum(margins) / c
        out["confidence"][i] = mean
        out["variability"][i] = math.sqrt(sum((q - mean) ** 2 for q in probs) / c)
        out["correctness"][i] = sum(correct) / c
        stds = []
        for j in range(c - window + 1):
            w = probs[j : j + window]
            m = sum(w) / window
            stds.append(math.sqrt(sum((q - m) ** 2 for q in w) / window))
        if stds:
            out["dynamic_uncertainty"][i] = sum(stds) / len(stds)
    return out


def tagged_data(n: int, num_classes: int = 3, seed: int = 0) -> TensorDataset:
    """Images ``[n, 2, 4, 4]`` whose first pixel holds the example id (``x[:, 0, 0, 0]``); the label is ``id % K``."""
    x = torch.randn(n, 2, 4, 4, generator=torch.Generator().manual_seed(seed))
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.float32)
    return TensorDataset(x, torch.arange(n) % num_classes)


class ScriptedNetModule(LightningModule):
    """Both kinds of score on one fit: the LightningModule's forward returns scripted logits (``logits[epoch, id]``,
    ids from :func:`tagged_data`), so the training-pass callbacks see a known sequence, while a real ``TinyNet``
    (``self.net``, BatchNorm included) trains on the same batches and the pass callbacks score it
    (``logits_module="net"``)."""

    def __init__(self, logits: torch.Tensor, lr: float = 0.1) -> None:
        super().__init__()
        self.register_buffer("script", logits.float())
        self.net = TinyNet(logits.shape[2])
        self.lr = lr

    def forward(self, x):
        epoch = min(self.trainer.current_epoch, self.script.shape[0] - 1)
        return self.script[epoch, x[:, 0, 0, 0].round().long()]

    def training_step(self, batch, batch_idx):
        x, y = batch
        self(x)  # the training forward pass the training-pass callbacks read
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=self.lr)
