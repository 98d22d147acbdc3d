"""Shared pieces of the ``analysis_*`` examples: scikit-learn's digits, a small BatchNorm MLP, a plain training loop.

Everything runs on CPU in seconds. The digits (1797 8x8 images, 10 classes) ship with scikit-learn: no download.
The training loop is plain PyTorch so that the examples can train many small runs quickly; the analyses
themselves are the library's.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import Tensor, nn

FIGURES = Path(__file__).resolve().parents[1] / "docs" / "figures"


def digits(seed: int = 0, test_size: int = 360) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Standardized digits: ``(x_train [1437, 64], y_train, x_test [360, 64], y_test)``, a seeded random split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    x_train, y_train, x_test, y_test = x[test_size:], y[test_size:], x[:test_size], y[:test_size]
    mean, std = x_train.mean(0), x_train.std(0) + 1e-3
    return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test


def mlp(seed: int, hidden: int = 128) -> nn.Module:
    """64 -> hidden -> hidden -> 10 with BatchNorm."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epochs: int,
    seed: int,
    lr: float = 0.05,
    batch_size: int = 32,
    snapshot_epochs: tuple[int, ...] = (),
) -> dict[int, nn.Module]:
    """SGD with momentum and cosine decay over ``epochs``; data order from ``seed``.

    Returns copies of the model after each epoch in ``snapshot_epochs`` (0: before training).
    """
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = (len(y) + batch_size - 1) // batch_size
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    snapshots = {0: copy.deepcopy(model)} if 0 in snapshot_epochs else {}
    for epoch in range(1, epochs + 1):
        model.train()
        for idx in torch.randperm(len(y), generator=generator).split(batch_size):
            if len(idx) < 2:  # BatchNorm needs two examples
                continue
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if epoch in snapshot_epochs:
            snapshots[epoch] = copy.deepcopy(model)
    model.eval()
    return snapshots


@torch.no_grad()
def el2n(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """EL2N: ``|| softmax(f(x)) - onehot(y) ||_2`` per example, in eval mode: ``[N]``."""
    model.eval()
    probs = model(x).softmax(dim=1)
    return (probs - nn.functional.one_hot(y, probs.shape[1]).float()).norm(dim=1)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())
