"""Kernel velocity per EL2N group on digits, with clean labels and with 20% uniform label noise.

Examples are sorted by EL2N (mean of 4 runs at epoch 3) and cut into groups of 100 adjacent ranks; for each
group, the empirical NTK of run 0 at epoch t and t+1 is compared by kernel distance (velocity).

Run: ``.venv/bin/python examples/analysis_velocity.py`` (CPU, a few minutes). Writes
``docs/figures/analysis_velocity.png`` and prints the numbers quoted in ``docs/analysis_velocity.md``.
"""

from __future__ import annotations

import torch
from analysis_common import FIGURES, digits, el2n, mlp, train

from lightning_datadiet.analysis import label_noise, plot_velocity_by_group, velocity_report

RUNS, EPOCHS, GROUP, EPOCH_PAIRS = 4, 30, 100, (1, 2, 3, 4, 5)


def main() -> None:
    torch.set_num_threads(2)
    x, y, _, _ = digits()
    lines = {}
    for fraction in (0.0, 0.2):
        noise = label_noise(y, fraction, "uniform", seed=0, num_classes=10)
        targets = noise.targets
        runs = [train(mlp(r), x, targets, epochs=EPOCHS, seed=r, snapshot_epochs=EPOCH_PAIRS) for r in range(RUNS)]
        scores = torch.stack([el2n(run[3], x, targets) for run in runs]).mean(0)
        report = velocity_report([runs[0][e] for e in EPOCH_PAIRS], x, scores, GROUP, chunk_size=None)
        velocity = report["velocity"]  # [len(EPOCH_PAIRS) - 1, G]
        mean = velocity.mean(0)
        corrupted = noise.corrupted_mask[report["groups"]].float().mean(1)  # share of corrupted labels per group
        print(f"label noise {fraction:.0%}: {velocity.shape[1]} groups of {GROUP} (lowest {report['rank_start'][0]} left out)")
        for t, row in zip(EPOCH_PAIRS, velocity):
            print(f"  epoch {t} -> {t + 1}: " + " ".join(f"{v:.3f}" for v in row.tolist()))
        print("  mean over pairs:  " + " ".join(f"{v:.3f}" for v in mean.tolist()))
        print("  corrupted share:  " + " ".join(f"{v:.2f}" for v in corrupted.tolist()))
        lines[f"{fraction:.0%} noise"] = mean
    plot_velocity_by_group(
        lines,
        FIGURES / "analysis_velocity.png",
        title="digits: NTK velocity, mean over epochs 1->2 ... 4->5",
        xlabel=f"EL2N group ({GROUP} examples each, ascending)",
    )


if __name__ == "__main__":
    main()
