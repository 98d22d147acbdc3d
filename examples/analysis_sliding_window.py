"""Sliding-window sweep on digits: train on a window of 50% of the EL2N ranks as it slides from low to high.

For each label-noise level (0% and 20% uniform), EL2N is the mean of 4 runs at epoch 3 on the (noisy) training
labels; each window of 719 examples (round half up of 1437 / 2) is trained from scratch for the same number of optimizer steps as 30
epochs on the full set would take (60 epochs on half the data), and the clean test accuracy is averaged over 2
seeds.

Run: ``.venv/bin/python examples/analysis_sliding_window.py`` (CPU, a few minutes). Writes
``docs/figures/analysis_sliding_window.png`` and prints the numbers quoted in ``docs/analysis_sliding_window.md``.
"""

from __future__ import annotations

import torch
from analysis_common import FIGURES, accuracy, digits, el2n, mlp, train

from lightning_datadiet.analysis import label_noise, plot_sliding_window, sliding_window_sweep

RUNS, SEEDS, EPOCHS, KEEP, NUM_OFFSETS = 4, (0, 1), 30, 0.5, 8


def main() -> None:
    torch.set_num_threads(2)
    x, y, x_test, y_test = digits()
    labels, scores = {}, {}
    for fraction in (0.0, 0.2):
        labels[fraction] = label_noise(y, fraction, "uniform", seed=0, num_classes=10).targets
        runs = [train(mlp(r), x, labels[fraction], epochs=3, seed=r, snapshot_epochs=(3,))[3] for r in range(RUNS)]
        scores[fraction] = torch.stack([el2n(m, x, labels[fraction]) for m in runs]).mean(0)

    def train_and_evaluate(kept: torch.Tensor, fraction: float) -> float:
        epochs = round(EPOCHS * len(y) / len(kept))  # same number of optimizer steps as full-data training
        accs = []
        for seed in SEEDS:
            model = mlp(100 + seed)
            train(model, x[kept], labels[fraction][kept], epochs=epochs, seed=seed)
            accs.append(accuracy(model, x_test, y_test))
        return sum(accs) / len(accs)

    result = sliding_window_sweep(scores, KEEP, train_and_evaluate, num_offsets=NUM_OFFSETS)
    n = len(y)
    for fraction, accs in result["accuracy"].items():
        full = train_and_evaluate(torch.arange(n), fraction)
        print(
            f"noise {fraction:.0%}: window {result['window_size']} of {n}; offsets "
            + " ".join(f"{o}:{a:.3f}" for o, a in zip(result["offsets"], accs))
            + f"; best offset {result['best_offset'][fraction]} ({result['best_accuracy'][fraction]:.3f});"
            f" full data {full:.3f}"
        )
    plot_sliding_window(result, FIGURES / "analysis_sliding_window.png", num_examples=n, title="digits: 50% window")


if __name__ == "__main__":
    main()
