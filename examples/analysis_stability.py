"""Score stability on digits: EL2N early vs late, and a single run vs the mean of several runs.

Run: ``.venv/bin/python examples/analysis_stability.py`` (CPU, about 10 s). Writes
``docs/figures/analysis_stability.png`` and prints the numbers quoted in ``docs/analysis_stability.md``.
"""

from __future__ import annotations

import torch
from analysis_common import FIGURES, digits, el2n, mlp, train

from lightning_datadiet.analysis import plot_heatmap, single_vs_mean, stability_report

RUNS, EPOCHS, SNAPSHOTS = 8, 30, (1, 3, 10, 30)


def main() -> None:
    x, y, _, _ = digits()
    scores: dict[int, list[torch.Tensor]] = {e: [] for e in SNAPSHOTS}
    for run in range(RUNS):
        for epoch, model in train(mlp(run), x, y, epochs=EPOCHS, seed=run, snapshot_epochs=SNAPSHOTS).items():
            scores[epoch].append(el2n(model, x, y))

    named = {f"run0 @{e}": scores[e][0] for e in SNAPSHOTS}
    named.update({f"mean{RUNS} @{e}": torch.stack(scores[e]).mean(0) for e in (3, 30)})
    table = stability_report(named)
    print(table.to_markdown())
    plot_heatmap(table, FIGURES / "analysis_stability.png", title="EL2N on digits: Spearman")

    for epoch in (3, 30):
        others = single_vs_mean(scores[epoch])  # run i vs the mean of the other RUNS - 1 runs
        with_self = single_vs_mean(scores[epoch], include_self=True)  # run i vs the mean of all RUNS runs
        print(
            f"EL2N@{epoch}: single run vs mean of the {others['k']} others: {others['mean']:.3f} +- {others['std']:.3f}; "
            f"vs the {with_self['k']}-run mean including itself: {with_self['mean']:.3f} +- {with_self['std']:.3f}"
        )


if __name__ == "__main__":
    main()
