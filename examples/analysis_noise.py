"""Label noise on digits: corrupt 20% of the training labels and ask whether early EL2N finds them.

Run: ``.venv/bin/python examples/analysis_noise.py`` (CPU, about 10 s). Writes
``docs/figures/analysis_noise_pr.png`` and prints the numbers quoted in ``docs/analysis_noise.md``.
"""

from __future__ import annotations

import torch
from analysis_common import FIGURES, digits, el2n, mlp, train
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lightning_datadiet.analysis import label_noise, noise_detection, precision_recall_curve

FRACTION, RUNS, EPOCHS = 0.2, 5, 30


def main() -> None:
    x, y, _, _ = digits()
    curves = {}
    for mode in ("uniform", "permute"):
        noise = label_noise(y, FRACTION, mode, seed=0, num_classes=10)
        print(f"{mode}: drew {noise.num_drawn} of {len(y)}, {noise.num_corrupted} labels actually changed")
        per_epoch = {}
        for run in range(RUNS):
            snaps = train(mlp(run), x, noise.targets, epochs=EPOCHS, seed=run, snapshot_epochs=(1, 3, 10, EPOCHS))
            for epoch, model in snaps.items():
                per_epoch.setdefault(epoch, []).append(el2n(model, x, noise.targets))
        for epoch, runs in sorted(per_epoch.items()):
            scores = torch.stack(runs).mean(0)
            r = noise_detection(scores, noise.corrupted_mask, top=noise.num_corrupted)
            print(
                f"  EL2N@{epoch} ({RUNS}-run mean): top-{r['k']} precision {r['precision']:.3f} "
                f"recall {r['recall']:.3f} (random: {r['base_rate']:.3f})"
            )
            if mode == "uniform":
                curves[epoch] = precision_recall_curve(scores, noise.corrupted_mask)

    fig = Figure(figsize=(5.0, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for epoch, (precision, recall, _) in curves.items():
        ax.plot(recall.numpy(), precision.numpy(), label=f"EL2N@{epoch}")
    ax.axhline(float(label_noise(y, FRACTION, "uniform", 0, num_classes=10).corrupted_mask.float().mean()),
               color="gray", ls="--", label="random")
    ax.set_xlabel("recall of corrupted labels")
    ax.set_ylabel("precision")
    ax.set_title(f"digits, {int(FRACTION * 100)}% uniform label noise")
    ax.legend(fontsize=7)
    fig.tight_layout()
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURES / "analysis_noise_pr.png", dpi=90)


if __name__ == "__main__":
    main()
