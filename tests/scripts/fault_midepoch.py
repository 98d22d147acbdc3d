"""A fit with mid-epoch checkpoints that tests/test_forgetting_fixes.py runs uninterrupted, kills with SIGKILL inside
an epoch, and resumes from ``last.ckpt`` (saved every 3 optimizer steps, so it lies inside an epoch).

usage: python fault_midepoch.py OUT_DIR {full|crash|resume}

24 examples in batches of 5: 5 batches per epoch. ``crash`` writes ``OUT_DIR/hanging`` at step 20 (the last batch of
epoch 3) and sleeps until killed; the last checkpoint is then the one of step 18 (3 of epoch 3's 5 batches done).
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning.pytorch import Callback, Trainer, seed_everything  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

import lightning_datadiet as dd  # noqa: E402

from tiny import TinyDataModule, TinyModule  # noqa: E402

MAX_EPOCHS = 5
HANG_AT_STEP = 20


class HangAtStep(Callback):
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == HANG_AT_STEP:
            self.marker.write_text("killing time")
            time.sleep(600)


def callbacks(out: Path) -> list:
    scores = out / "scores"
    cbs = [dd.ForgettingCallback(epochs=[3], dirpath=scores, seed=0)]
    if hasattr(dd, "TrainingDynamicsCallback"):
        cbs.append(dd.TrainingDynamicsCallback(dirpath=scores, seed=0, window=2))
    return cbs


def main(out: Path, mode: str) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    cbs = callbacks(out) + [ModelCheckpoint(dirpath=out / "ckpt", save_last=True, every_n_train_steps=3)]
    if mode == "crash":
        cbs.append(HangAtStep(out / "hanging"))
    trainer = Trainer(
        default_root_dir=out, max_epochs=MAX_EPOCHS, accelerator="cpu", devices=1, callbacks=cbs, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    model = TinyModule(lr=0.3)
    dm = TinyDataModule(n=24, batch_size=5, seeded_sampler=True)
    ckpt = out / "ckpt" / "last.ckpt" if mode == "resume" else None
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    torch.save(model.state_dict(), out / "weights.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
