"""Spearman correlations between the scores of a cifar10_reproduction.py run, and with the input norm.

Usage: .venv/bin/python benchmarks/cifar10_correlations.py runs/cifar10_repro [--data-dir ../shared/data/cifar10-jpeg.zip]
Kirsch (2023) found GraNd at init correlates 0.96 with the plain input norm; this checks it on our scores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lightning_datadiet import load_scores
from lightning_datadiet.analysis import rank_correlation
from lightning_datadiet.demo import CIFAR10DataModule


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--data-dir", default="../shared/data/cifar10-jpeg.zip")
    p.add_argument("--train-subset", type=int, default=8000)
    args = p.parse_args()
    scores_dir = Path(args.out) / "scores"
    mean = {m: load_scores(scores_dir / f"{m}_mean.scores").scores for m in ("el2n", "grand", "forgetting")}
    dm = CIFAR10DataModule(args.data_dir, train_subset=args.train_subset, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    ds = dm.score_dataset()
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    mean["input_norm"] = x.flatten(1).norm(dim=1)
    names = list(mean)
    print("| | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for a in names:
        print(f"| {a} | " + " | ".join(f"{rank_correlation(mean[a], mean[b]):.3f}" for b in names) + " |")
    runs = sorted(scores_dir.glob("el2n_epoch*_seed*.scores"))
    singles = [load_scores(r).scores for r in runs]
    for i, s in enumerate(singles):
        others = torch.stack([t for j, t in enumerate(singles) if j != i]).mean(0)
        print(f"EL2N single run {runs[i].name} vs mean of the other {len(singles) - 1}: {rank_correlation(s, others):.3f}")


if __name__ == "__main__":
    main()
