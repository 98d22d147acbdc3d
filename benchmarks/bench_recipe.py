"""The airbench recipe vs the current ``small_cnn`` recipe, for the same wall time, on the shared CIFAR-10.

Each recipe trains on the same (class-stratified) training subset for about ``--seconds`` of training compute:
its number of epochs is sized from a short throughput probe so that the whole learning-rate schedule fits the
budget. Time is measured as **CPU time of the process** (``time.process_time``, all threads) as well as wall time:
the project's 2-core machine is shared by several jobs, so wall time measures the neighbours as much as the recipe,
while CPU seconds divided by the thread count is the wall time the run would take on 2 idle cores. After every
epoch the test accuracy is measured (timed separately, not counted in the budget). Reported per recipe and epoch:
cumulative training CPU seconds, images per CPU second x threads ("images/s on idle cores"), test accuracy.

    PYTHONPATH=. python benchmarks/bench_recipe.py --data-dir ../shared/data/cifar10-jpeg.zip \
        --train-subset 20000 --seconds 300 --out runs/bench_recipe

Writes ``bench_recipe.json`` and ``bench_recipe.md`` under ``--out``. Needs the CIFAR-10 zip (not in unit tests).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer, seed_everything


class _EpochClock(Callback):
    """Training time per epoch (evaluation excluded) and the test accuracy after each epoch."""

    def __init__(self, test_loader: Any) -> None:
        self.test_loader = test_loader
        self.rows: list[dict[str, Any]] = []
        self.train_s = 0.0
        self.images = 0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        self._t0 = time.perf_counter()
        self._c0 = time.process_time()
        self._seen = 0

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._seen += int(batch[1].shape[0])

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        wall = time.perf_counter() - self._t0
        dt = (time.process_time() - self._c0) / torch.get_num_threads()  # idle-core seconds
        self.train_s += dt
        self.wall_s = getattr(self, "wall_s", 0.0) + wall
        self.images += self._seen
        t_eval = time.perf_counter()
        acc = evaluate(pl_module, self.test_loader)
        self.rows.append(
            {
                "epoch": trainer.current_epoch + 1,
                "train_s": round(self.train_s, 2),
                "wall_s": round(self.wall_s, 2),
                "images_per_s": round(self._seen / dt, 1),
                "test_acc": round(acc, 4),
                "eval_s": round(time.perf_counter() - t_eval, 2),
            }
        )
        print(f"  epoch {trainer.current_epoch + 1}: {self.rows[-1]}", flush=True)


@torch.no_grad()
def evaluate(module: Any, loader: Any) -> float:
    was = module.training
    module.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(module.device), y.to(module.device)
        logits = module._eval_logits(x) if hasattr(module, "_eval_logits") else module(x)
        correct += int((logits.argmax(1) == y).sum())
        total += int(y.numel())
    module.train(was)
    return correct / total


def _recipe(name: str, args: argparse.Namespace, num_classes: int = 10) -> tuple[Any, Any]:
    if name == "airbench":
        from lightning_datadiet.demo.airbench import AirbenchDataModule, AirbenchModule

        dm = AirbenchDataModule(args.data_dir, batch_size=args.air_batch, train_subset=args.train_subset)
        return dm, AirbenchModule(num_classes=num_classes, width=args.air_width, lr=args.air_lr)
    from lightning_datadiet.demo import CIFAR10DataModule, ClassifierModule, build_model

    # num_workers=0: its per-item crop/flip then runs in this process, so the CPU-time clock counts it
    dm = CIFAR10DataModule(args.data_dir, batch_size=128, num_workers=0, train_subset=args.train_subset)
    return dm, ClassifierModule(build_model("small_cnn", num_classes), num_classes=num_classes, lr=0.1)


def _probe(name: str, args: argparse.Namespace) -> float:
    """Training images/s over a few steps (after a warm-up step) for sizing the epochs."""
    seed_everything(0, verbose=False)
    dm, module = _recipe(name, args)
    trainer = Trainer(
        max_steps=12, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
    )
    clock: dict[str, float] = {}

    class _T(Callback):
        def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx == 1:
                clock["t0"] = time.process_time()
                clock["n"] = 0

        def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if batch_idx >= 1:
                clock["n"] += int(batch[1].shape[0])

    trainer.callbacks.append(_T())
    trainer.fit(module, datamodule=dm)
    return clock["n"] / ((time.process_time() - clock["t0"]) / torch.get_num_threads())


def run(name: str, args: argparse.Namespace) -> dict[str, Any]:
    ips = _probe(name, args)
    epochs = max(1, int(args.seconds * ips / args.train_subset))
    print(f"{name}: probe {ips:.0f} images/s -> {epochs} epochs for {args.seconds} s", flush=True)
    seed_everything(0, verbose=False)
    dm, module = _recipe(name, args)
    dm.setup("fit")
    test = dm.test_dataloader()
    if args.test_subset:  # every k-th test image (a class-balanced subset: the test split is sorted by class)
        from torch.utils.data import DataLoader, Subset

        step = max(1, len(test.dataset) // args.test_subset)
        test = DataLoader(Subset(test.dataset, range(0, len(test.dataset), step)), batch_size=500,
                          collate_fn=test.collate_fn)
    clock = _EpochClock(test)
    trainer = Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[clock],
    )
    trainer.fit(module, datamodule=dm)
    params = sum(p.numel() for p in module.parameters())
    return {
        "recipe": name, "epochs": epochs, "probe_images_per_s": round(ips, 1), "parameters": params,
        "train_s": round(clock.train_s, 1), "wall_s": round(clock.wall_s, 1),
        "images_per_s": round(clock.images / clock.train_s, 1),
        "final_test_acc": clock.rows[-1]["test_acc"], "per_epoch": clock.rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="../shared/data/cifar10-jpeg.zip")
    parser.add_argument("--train-subset", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=300.0, help="training wall time per recipe")
    parser.add_argument("--air-width", type=int, default=16)
    parser.add_argument("--air-batch", type=int, default=512)
    parser.add_argument("--air-lr", type=float, default=0.4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--test-subset", type=int, default=0, help="evaluate on every k-th test image (0 = all)")
    parser.add_argument("--out", default="runs/bench_recipe")
    args = parser.parse_args()
    if not Path(args.data_dir).exists():
        raise SystemExit(f"CIFAR-10 not found at {args.data_dir}: pass --data-dir (see shared/data/README.md).")
    torch.set_num_threads(args.threads)
    results = [run(name, args) for name in ("airbench", "small_cnn")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_recipe.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    lines = [
        f"train subset {args.train_subset}, test {args.test_subset or 10000}, ~{args.seconds:.0f} s of training each, "
        f"{torch.get_num_threads()} CPU threads",
        "",
        "| recipe | params | epochs | train s (idle-core) | wall s (shared) | images/s (idle-core) | "
        "test acc per epoch | final test acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        curve = " ".join(f"{row['test_acc']:.3f}" for row in r["per_epoch"])
        lines.append(
            f"| {r['recipe']} | {r['parameters']:,} | {r['epochs']} | {r['train_s']} | {r['wall_s']} | "
            f"{r['images_per_s']:.0f} | "
            f"{curve} | {r['final_test_acc']:.4f} |"
        )
    (out / "bench_recipe.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
