"""Quickstart: the README's three steps (score with callbacks, prune with PrunedDataModule, retrain) on digits.

Runs in about 15 s on a laptop CPU, with no download (scikit-learn's bundled handwritten digits)::

    python examples/quickstart.py [--output-dir DIR] [--epochs 8] [--score-runs 2]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_datadiet import EL2NCallback, ForgettingCallback, GraNdCallback, PrunedDataModule
from lightning_datadiet.demo import ClassifierModule, DigitsCNN, DigitsDataModule


def make_trainer(epochs: int, callbacks: list | None = None) -> Trainer:
    return Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def new_model(seed: int) -> ClassifierModule:
    seed_everything(seed, verbose=False)
    return ClassifierModule(DigitsCNN(num_classes=10), num_classes=10, lr=0.05)


def main(
    output_dir: str | None = None, epochs: int = 8, score_runs: int = 2, keep_fraction: float = 0.5
) -> dict:
    """Score, prune and retrain; returns the test accuracies of the full, EL2N-pruned and random-pruned runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small runs fastest on one CPU thread
    try:
        return _run(output_dir, epochs, score_runs, keep_fraction)
    finally:
        torch.set_num_threads(threads)


def _run(output_dir: str | None, epochs: int, score_runs: int, keep_fraction: float) -> dict:
    out = Path(output_dir or tempfile.mkdtemp(prefix="datadiet-quickstart-"))
    dm = DigitsDataModule(
        batch_size=64
    )  # 1000 train / 300 val / 497 test; score_dataset() = un-augmented train

    # 1. score: callbacks on an ordinary Trainer, several seeds (the paper averages EL2N over runs)
    el2n_files = []
    for run in range(score_runs):
        el2n = EL2NCallback(epochs=2, dirpath=out / "scores", seed=run)  # EL2N after 2 of `epochs` epochs
        grand = GraNdCallback(epochs=0, dirpath=out / "scores", seed=run)  # GraNd at initialisation
        forget = ForgettingCallback(dirpath=out / "scores", seed=run)  # forgetting events over the whole fit
        make_trainer(epochs, [el2n, grand, forget]).fit(new_model(1000 + run), datamodule=dm)
        el2n_files.append(el2n.score_paths[2])
        never = int(torch.isinf(forget.scores).sum())
        print(f"scoring run {run}: {el2n.score_paths[2].name}, forgetting: {never} never-learned examples")

    # 2. prune: keep the highest-EL2N fraction (scores averaged over the runs' files), and a random subset
    pruned = PrunedDataModule(dm, scores=el2n_files, keep_fraction=keep_fraction, selection="highest")
    random_subset = PrunedDataModule(dm, scores=None, keep_fraction=keep_fraction, selection="random", seed=0)

    # 3. retrain from scratch on the kept examples (same number of epochs here: a fixed-epochs budget)
    results = {}
    for name, data in (("full", dm), ("el2n", pruned), ("random", random_subset)):
        model = new_model(0)
        trainer = make_trainer(epochs)
        trainer.fit(model, datamodule=data)
        results[name] = trainer.test(model, datamodule=data, verbose=False)[0]["test/acc"]
    print(f"kept {pruned.keep_count} of {len(dm.train_dataset)} examples")
    for name, acc in results.items():
        print(f"{name:>7}: test accuracy {acc:.3f}")
    return results


if __name__ == "__main__":
    warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec).*")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output-dir", default=None, help="where score files go (default: a temporary folder)"
    )
    parser.add_argument("--epochs", type=int, default=8, help="training epochs of every run")
    parser.add_argument("--score-runs", type=int, default=2, help="scoring runs (seeds) averaged")
    parser.add_argument("--keep-fraction", type=float, default=0.5, help="fraction of the training set kept")
    args = parser.parse_args()
    main(args.output_dir, args.epochs, args.score_runs, args.keep_fraction)
