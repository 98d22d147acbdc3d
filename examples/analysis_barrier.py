"""The spawning experiment on digits: error barrier between two children spawned at epoch t*.

The training labels carry 20% uniform label noise (``NoisyLabelDataModule``); without it, digits is so easy that
every child fits every subset and all barriers are 0. A parent run (Lightning ``Trainer`` with
``BarrierSpawnCallback``) saves checkpoints at t* = 0, 1, 2, 4, 8;
from each, two children with independent data orders train to epoch 20. The barrier (alphas 0, 1/4, 1/2, 3/4,
1; BatchNorm statistics recomputed on the whole training set at every point) is measured on the 200 training
examples of lowest EL2N, the 200 of highest EL2N, and 200 random ones (EL2N: mean of 4 runs at epoch 3).

Run: ``.venv/bin/python examples/analysis_barrier.py`` (CPU, a few minutes). Writes
``docs/figures/analysis_barrier.png`` and prints the numbers quoted in ``docs/analysis_barrier.md``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings

import torch
from analysis_common import FIGURES, digits, el2n, mlp, train
from lightning.pytorch import LightningDataModule, LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_datadiet.analysis import (
    BarrierSpawnCallback,
    NoisyLabelDataModule,
    barrier_subsets,
    label_noise,
    plot_spawning_barriers,
    spawning_experiment,
)

EPOCHS, SPAWN_EPOCHS, SUBSET, NOISE = 20, (0, 1, 2, 4, 8), 200, 0.2
TRAINER = dict(
    max_epochs=EPOCHS,
    accelerator="cpu",
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)


class DigitsData(LightningDataModule):
    def setup(self, stage: str) -> None:
        x, y, _, _ = digits()
        self.train = TensorDataset(x, y)

    def train_dataloader(self) -> DataLoader:
        # Shuffled from the global RNG: every child gets its own order from its seed.
        return DataLoader(self.train, batch_size=32, shuffle=True, drop_last=True)


class Classifier(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        steps = self.trainer.estimated_stepping_batches
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def noisy_digits() -> LightningDataModule:
    return NoisyLabelDataModule(DigitsData(), NOISE, mode="uniform", seed=0, num_classes=10)


def main() -> None:
    global NOISE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noise", type=float, default=NOISE, help="label-noise fraction (default 0.2)")
    parser.add_argument("--figure", default="analysis_barrier.png", help="file name under docs/figures")
    args = parser.parse_args()
    NOISE = args.noise
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    x, clean, _, _ = digits()
    noise = label_noise(clean, NOISE, "uniform", seed=0, num_classes=10)  # the labels NoisyLabelDataModule uses
    y = noise.targets
    scores = torch.stack([el2n(train(mlp(r), x, y, epochs=3, seed=r, snapshot_epochs=(3,))[3], x, y) for r in range(4)])
    indices = barrier_subsets(scores.mean(0), SUBSET, seed=0)
    subsets = {name: (x[idx], y[idx]) for name, idx in indices.items()}
    for name, idx in indices.items():
        print(f"{name:>8} subset: {noise.corrupted_mask[idx].float().mean():.0%} corrupted labels")

    with tempfile.TemporaryDirectory() as tmp:
        seed_everything(0, verbose=False)
        spawn = BarrierSpawnCallback(tmp, epochs=SPAWN_EPOCHS)
        parent_data = noisy_digits()
        Trainer(callbacks=[spawn], **TRAINER).fit(Classifier(), datamodule=parent_data)
        assert torch.equal(parent_data.targets, y)
        result = spawning_experiment(
            spawn.checkpoints,
            Classifier,
            noisy_digits,
            subsets,
            seeds=(1, 2),
            trainer_kwargs=TRAINER,
            alphas=(0.0, 0.25, 0.5, 0.75, 1.0),
            bn_data=(x, y),
        )
    for name in subsets:
        rows = result["details"][name]
        print(
            f"{name:>8}: barrier (train labels) "
            + " ".join(f"t*={t}: {b:.3f}" for t, b in zip(result["t"], result["barrier"][name]))
            + " | child errors "
            + " ".join(f"{d['error_a']:.3f}/{d['error_b']:.3f}" for d in rows)
        )
    plot_spawning_barriers(
        result, FIGURES / args.figure, title=f"digits, {NOISE:.0%} label noise: barrier on {SUBSET} examples"
    )


if __name__ == "__main__":
    main()
