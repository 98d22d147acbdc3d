"""Dynamic pruning (InfoBatch-style DynamicPruningCallback) vs full training vs random per-epoch subsampling at the
same number of optimizer steps, on CIFAR-10 with the small CNN, several seeds.

Usage (the numbers in docs/dynamic_pruning.md):
    PYTHONPATH=. nice .venv/bin/python benchmarks/bench_dynamic_pruning.py --data-dir ../shared/data/cifar10-jpeg.zip \
        --train-subset 5000 --epochs 10 --seeds 0 1 2 --out runs/bench_dynamic_pruning.json

Arms, per seed (same initial weights, same data order generator):
- ``full``: every training example in every epoch;
- ``dynamic``: ``DynamicPruningCallback(prune_ratio, anneal)`` with the ``loss_weights`` rescaling;
- ``random``: in each epoch a uniformly random subset of the size the ``dynamic`` run kept in that epoch (so the
  same number of optimizer steps per epoch), unrescaled.
The learning rate follows a cosine over epochs (set at each epoch start), so every arm ends its schedule at the same epoch.
Test accuracy on the full 10,000-image test set; wall time of the fit (training only) on this machine.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch.nn import functional as F
from torch.utils.data import DataLoader, Sampler

from lightning_datadiet import DynamicPruningCallback, loss_weights
from lightning_datadiet.demo import CIFAR10DataModule, SmallCNN


class Module(LightningModule):
    def __init__(self, lr: float, epochs: int, width: int) -> None:
        super().__init__()
        self.net = SmallCNN(10, width=width)
        self.lr, self.epochs = lr, epochs

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y, reduction="none")
        return (loss * loss_weights(self)).mean()

    def on_train_epoch_start(self):
        # cosine over epochs, set directly: the same schedule whatever the number of batches of an epoch
        lr = self.lr * 0.5 * (1 + math.cos(math.pi * self.current_epoch / self.epochs))
        for group in self.trainer.optimizers[0].param_groups:
            group["lr"] = lr

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)


class RandomSubsetSampler(Sampler[int]):
    """Each epoch, a random subset of ``sizes[epoch]`` items in random order (seeded by seed and epoch)."""

    def __init__(self, n: int, sizes: dict[int, int], seed: int) -> None:
        self.n, self.sizes, self.seed, self.epoch = n, sizes, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(torch.randperm(self.n, generator=g)[: self.sizes.get(self.epoch, self.n)].tolist())

    def __len__(self) -> int:
        return self.sizes.get(self.epoch, self.n)


class Steps(Callback):
    def __init__(self):
        self.per_epoch = {}

    def on_train_epoch_end(self, trainer, pl_module):
        self.per_epoch[trainer.current_epoch] = trainer.global_step


def accuracy(model: Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += y.numel()
    return correct / total


def run(arm: str, seed: int, dm: CIFAR10DataModule, args, sizes: dict[int, int] | None):
    seed_everything(seed)
    model = Module(args.lr, args.epochs, args.width)
    callbacks: list = [Steps()]
    pruning = None
    train = dm.train_dataset
    if arm == "dynamic":
        pruning = DynamicPruningCallback(prune_ratio=args.prune_ratio, anneal=args.anneal, seed=seed)
        callbacks.append(pruning)
    if arm == "random":
        sampler = RandomSubsetSampler(len(train), sizes or {}, seed)
        loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, num_workers=0)
    else:
        g = torch.Generator().manual_seed(seed)
        loader = DataLoader(train, batch_size=args.batch_size, shuffle=True, generator=g, num_workers=0)
    trainer = Trainer(max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                      default_root_dir=args.root)  # fmt: skip
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders=loader)
    wall = time.perf_counter() - start
    acc = accuracy(model, dm.test_dataloader())
    out = {"arm": arm, "seed": seed, "test_acc": acc, "wall_s": wall, "steps": int(trainer.global_step)}
    if pruning is not None:
        out["kept_per_epoch"] = {e: len(train) - int(m.sum()) for e, m in pruning.skipped_by_epoch.items()}
        out["realised_fraction"] = pruning.realised_fraction
        out["steps_saved"] = pruning.total_steps_saved
        out["mean_realised"] = sum(pruning.realised_fraction.values()) / args.epochs
    print(json.dumps({k: v for k, v in out.items() if k not in ("kept_per_epoch", "realised_fraction")}), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", default="../shared/data/cifar10-jpeg.zip")
    p.add_argument("--train-subset", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--prune-ratio", type=float, default=0.5)
    p.add_argument("--anneal", type=float, default=0.125)
    p.add_argument("--root", default="/tmp/bench_dynamic_pruning")
    p.add_argument("--out", default="runs/bench_dynamic_pruning.json")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    dm = CIFAR10DataModule(args.data_dir, batch_size=512, num_workers=0, train_subset=args.train_subset)
    dm.prepare_data()
    dm.setup("fit")
    results = []
    for seed in args.seeds:  # interleaved: the three arms of a seed run back to back
        full = run("full", seed, dm, args, None)
        dyn = run("dynamic", seed, dm, args, None)
        rnd = run("random", seed, dm, args, dyn["kept_per_epoch"])
        results += [full, dyn, rnd]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print("\n| arm | test accuracy (mean +- std) | optimizer steps | steps saved | realised skipped fraction | wall s |")
    print("|---|---|---|---|---|---|")
    for arm in ("full", "dynamic", "random"):
        rs = [r for r in results if r["arm"] == arm]
        accs = [100 * r["test_acc"] for r in rs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        steps = statistics.mean(r["steps"] for r in rs)
        saved = statistics.mean(rs[0]["steps"] - r["steps"] for r in rs) if arm == "full" else statistics.mean(
            next(f["steps"] for f in results if f["arm"] == "full" and f["seed"] == r["seed"]) - r["steps"] for r in rs)
        frac = statistics.mean(r.get("mean_realised", 0.0) for r in rs) if arm == "dynamic" else None
        wall = statistics.mean(r["wall_s"] for r in rs)
        print(f"| {arm} | {statistics.mean(accs):.2f} +- {sd:.2f} | {steps:.0f} | {saved:.0f} | "
              f"{'' if frac is None else f'{frac:.3f}'} | {wall:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
