"""2-process CPU DDP (gloo) harness for the callbacks that learn from the training passes, run by
tests/test_training_pass_ddp.py. A new callback gets its DDP check by adding a line to ``CALLBACKS`` (and its
reference to the test's ``REFERENCES``).

usage: python ddp_training_pass.py OUT_DIR NAME {full|part|resume}

Scripted logits (tests/tiny.py) on 23 examples in batches of 3 (the DistributedSampler pads one repeat per epoch).
``part`` stops at max_steps=10, inside epoch 2, right after a checkpoint; ``resume`` continues from it. Each rank
saves its callback results and the index lists its sampler produced per epoch (the reference's multiplicities).
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
    return {"skipped": {e: m.clone() for e, m in cb.skipped_by_epoch.items()}, "losses": cb.latest_loss.clone()}


class RecordSampler(Callback):
    def __init__(self):
        self.epochs = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x, _ = batch
        self.epochs.setdefault(trainer.current_epoch, []).extend(x[:, 0].round().long().tolist())


def main(out: Path, name: str, mode: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(0)
    cb = CALLBACKS[name](out)
    rec = RecordSampler()
    ckpt = ModelCheckpoint(dirpath=out / "ckpt", save_last=True, every_n_train_steps=5)
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=out, max_epochs=EPOCHS, callbacks=[cb, rec, ckpt],
        max_steps=10 if mode == "part" else -1,
    )  # fmt: skip
    loader = DataLoader(scripted_data(N), batch_size=BATCH, shuffle=True, num_workers=1)
    ckpt_path = out / "ckpt" / "last.ckpt" if mode == "resume" else None
    trainer.fit(ScriptedLogitsModule(scripted_logits(EPOCHS, N, seed=11)), train_dataloaders=loader, ckpt_path=ckpt_path)
    torch.save({"results": results(cb), "presented": rec.epochs}, out / f"{mode}_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
