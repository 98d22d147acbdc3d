"""CIFAR-10 pruning reproduction at CPU scale, built only on the library's public API.

Stage 1 (scoring): ``--score-runs`` short runs of the small CNN; each run records EL2N after ``--score-epoch``
epochs, GraNd at initialisation (epoch 0) and forgetting events over the run. Scores are averaged over runs.
Stage 2 (retraining): from scratch on the full data, and at each keep fraction on subsets chosen by random,
highest EL2N, highest forgetting, highest GraNd@init and coverage (CCS on EL2N), for ``--seeds`` seeds each, with the
same number of epochs as full-data training (same-epochs budget). Every finished run is written at once to
``OUT/runs/<key>.json`` (atomic), so an interrupted run resumes where it stopped.

Usage (the documented run; ~1.5-2 h on 2 CPU cores):
    .venv/bin/python benchmarks/cifar10_reproduction.py --data-dir ../shared/data/cifar10-jpeg.zip \
        --out runs/cifar10_repro
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from lightning_datadiet import (
    EL2NCallback,
    ForgettingCallback,
    GraNdCallback,
    PrunedDataModule,
    average_scores,
)
from lightning_datadiet.demo import CIFAR10DataModule, ClassifierModule, SmallCNN

METHODS = {  # name -> (score method, selection rule)
    "random": (None, "random"),
    "el2n": ("el2n", "highest"),
    "forgetting": ("forgetting", "highest"),
    "grand_init": ("grand", "highest"),
    "coverage_el2n": ("el2n", "coverage"),
}


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def trainer(out: Path, epochs: int, callbacks=(), **kw) -> Trainer:
    return Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, callbacks=list(callbacks), logger=False,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
        default_root_dir=out, **kw,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data/cifar10-jpeg.zip")
    p.add_argument("--out", default="runs/cifar10_repro")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--score-runs", type=int, default=3)
    p.add_argument("--score-epoch", type=int, default=3)
    p.add_argument("--score-lr", type=float, default=0.05)
    p.add_argument("--epochs", type=int, default=12, help="retraining epochs (same for every subset)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--train-subset", type=int, default=None, help="smaller training set for a quick check")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=1)
    args = p.parse_args()
    out = Path(args.out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))

    def dm(seed: int = 0) -> CIFAR10DataModule:
        return CIFAR10DataModule(args.data_dir, batch_size=args.batch_size, num_workers=args.num_workers,
                                 train_subset=args.train_subset)

    def module() -> ClassifierModule:
        return ClassifierModule(SmallCNN(10, width=args.width), num_classes=10, lr=args.lr)

    # ---------------- stage 1: scoring runs
    score_dir = out / "scores"
    per_method: dict[str, list[Path]] = {"el2n": [], "grand": [], "forgetting": []}
    for run in range(args.score_runs):
        done = out / "runs" / f"score_run{run}.json"
        if done.exists():
            rec = json.loads(done.read_text())
        else:
            seed_everything(100 + run)
            cbs = [
                EL2NCallback(epochs=args.score_epoch, dirpath=score_dir, seed=100 + run),
                GraNdCallback(epochs=0, dirpath=score_dir, seed=100 + run, chunk_size=64),
                ForgettingCallback(dirpath=score_dir, seed=100 + run),
            ]
            t0 = time.time()
            net = ClassifierModule(SmallCNN(10, width=args.width), num_classes=10, lr=args.score_lr, schedule="constant")
            trainer(out, args.score_epoch, cbs).fit(net, datamodule=dm())
            rec = {"kind": "score", "run": run, "wall_s": time.time() - t0,
                   "paths": {cb.method: str(cb.score_paths[max(cb.score_paths)]) for cb in cbs}}
            write_json(done, rec)
            print(f"[score] run {run} done in {rec['wall_s']:.0f}s", flush=True)
        for method, path in rec["paths"].items():
            per_method[method].append(Path(path))
    averaged = {}
    for method, paths in per_method.items():
        avg = average_scores(paths)
        from lightning_datadiet.store import save_scores

        averaged[method] = save_scores(score_dir / f"{method}_mean.scores", avg.scores, method=method, epoch=avg.epoch,
                                       label_fingerprint=avg.label_fingerprint, extra=avg.extra)

    # ---------------- stage 2: retraining
    # seed-major order: a complete table for the first seed comes first
    jobs = [(m, f, s) for s in args.seeds for m, f in [("full", 1.0)] + [(m, f) for f in args.fractions for m in args.methods]]
    for method, frac, seed in jobs:
        key = f"{method}_keep{frac}_seed{seed}"
        done = out / "runs" / f"{key}.json"
        if done.exists():
            continue
        seed_everything(seed)
        data = dm()
        if method != "full":
            score_method, rule = METHODS[method]
            data = PrunedDataModule(data, averaged[score_method] if score_method else None, frac, rule, seed=seed)
        t0 = time.time()
        net = module()
        tr = trainer(out, args.epochs)
        tr.fit(net, datamodule=data)
        test = tr.test(net, datamodule=data, verbose=False)[0]
        rec = {"kind": "train", "method": method, "keep_fraction": frac, "seed": seed,
               "test_acc": float(test["test/acc"]), "epochs": args.epochs, "wall_s": time.time() - t0,
               "kept": int(data.keep_count) if method != "full" else None}
        write_json(done, rec)
        print(f"[train] {key}: test acc {rec['test_acc']:.4f} ({rec['wall_s']:.0f}s)", flush=True)
    summarize(out)


def summarize(out: Path) -> None:
    rows = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    rows = [r for r in rows if r["kind"] == "train"]
    table: dict[tuple, list[float]] = {}
    for r in rows:
        table.setdefault((r["method"], r["keep_fraction"]), []).append(r["test_acc"])
    lines = ["| method | kept | seeds | test acc mean | per seed |", "|---|---|---|---|---|"]
    for (m, f), accs in sorted(table.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
        lines.append(f"| {m} | {f:.0%} | {len(accs)} | {100 * sum(accs) / len(accs):.2f} | "
                     + ", ".join(f"{100 * a:.2f}" for a in accs) + " |")
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    print(text)
    plot(table, out / "accuracy_vs_pruned.png")


def plot(table: dict[tuple, list[float]], path: Path) -> None:
    """Test accuracy vs fraction pruned, one line per method (mean over seeds; markers show each seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    full = table.get(("full", 1.0))
    if full:
        ax.axhline(100 * sum(full) / len(full), color="k", ls="--", lw=1, label="full data")
    for method in METHODS:
        pts = sorted((1 - f, accs) for (m, f), accs in table.items() if m == method)
        if not pts:
            continue
        xs = [x for x, _ in pts]
        line = ax.plot(xs, [100 * sum(a) / len(a) for _, a in pts], marker="o", label=method)[0]
        for x, accs in pts:
            ax.scatter([x] * len(accs), [100 * a for a in accs], color=line.get_color(), s=10, alpha=0.5)
    ax.set_xlabel("fraction of training set pruned")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("CIFAR-10 (8k-image subset), SmallCNN, 2-core CPU")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--summarize"]:
        summarize(Path(sys.argv[2]))
    else:
        main()
