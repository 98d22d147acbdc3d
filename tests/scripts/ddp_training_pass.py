"""2-process CPU DDP (gloo) harness for the callbacks that learn from the training passes, run by
tests/test_training_pass_ddp.py. A new callback gets its DDP check by adding a line to ``CALLBACKS`` (and its
reference to the test's ``REFERENCES``).

usage: python ddp_training_pass.py OUT_DIR {full|part|resume}

All callbacks of ``CALLBACKS`` in one fit. Scripted logits (tests/tiny.py) on 23 examples in batches of 3 (the
DistributedSampler pads one repeat per epoch; the pruning callback skips examples in epochs 1-2). ``part`` stops at
max_steps=9, inside epoch 2, right after a checkpoint; ``resume`` continues from it. Each rank saves every callback's
results and the example ids of the batches it trained per epoch (the references' multiplicities).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning.pytorch import Callback, Trainer, seed_everything  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import lightning_datadiet as dd  # noqa: E402

from tiny import ScriptedLogitsModule, scripted_data, scripted_logits  # noqa: E402

N, EPOCHS, BATCH = 23, 4, 3

CALLBACKS = {
    "forgetting": lambda out: dd.ForgettingCallback(dirpath=out / "scores", seed=0),
    "dynamics": lambda out: dd.TrainingDynamicsCallback(window=3, dirpath=out / "scores", seed=0),
}
if hasattr(dd, "DynamicPruningCallback"):
    CALLBACKS["pruning"] = lambda out: dd.DynamicPruningCallback(prune_ratio=0.5, anneal=0.25, seed=3)


def results(cb) -> dict:
    if isinstance(cb, dd.TrainingDynamicsCallback):
        return {k: v.clone() for k, v in cb.scores.items()}
    if isinstance(cb, dd.ForgettingCallback):
        return {"forgetting": cb.scores.clone()}
    skipped = {f"skipped_{e}": m.clone() for e, m in cb.skipped_by_epoch.items()}
    return {**skipped, "losses": cb.latest_loss.clone()}


class RecordSampler(Callback):
    def __init__(self):
        self.epochs = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, _ = batch
        self.epochs.setdefault(trainer.current_epoch, []).extend(x[:, 0].round().long().tolist())


def main(out: Path, mode: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(0)
    cbs = {name: make(out) for name, make in CALLBACKS.items()}
    rec = RecordSampler()
    ckpt = ModelCheckpoint(dirpath=out / "ckpt", save_last=True, every_n_train_steps=3)
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=out, max_epochs=EPOCHS, callbacks=[*cbs.values(), rec, ckpt],
        max_steps=9 if mode == "part" else -1,
    )  # fmt: skip
    loader = DataLoader(scripted_data(N), batch_size=BATCH, shuffle=True, num_workers=1)
    ckpt_path = out / "ckpt" / "last.ckpt" if mode == "resume" else None
    trainer.fit(ScriptedLogitsModule(scripted_logits(EPOCHS, N, seed=11)), train_dataloaders=loader, ckpt_path=ckpt_path)
    saved = {name: results(cb) for name, cb in cbs.items()}
    torch.save({"results": saved, "presented": rec.epochs}, out / f"{mode}_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
