"""A scoring fit that tests/test_faults.py runs uninterrupted, kills mid-epoch, and resumes from its last checkpoint.

usage: python fault_train.py OUT_DIR {full|crash|resume}

``crash`` stops inside epoch 2 (the third; after batch 2): it writes ``OUT_DIR/in_epoch2`` and sleeps until the parent kills
it with SIGKILL. ``resume`` continues from ``OUT_DIR/ckpt/last.ckpt``. ``full`` and ``resume`` write the final
weights to ``OUT_DIR/weights.pt``; every run writes its score files under ``OUT_DIR/scores``.
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning.pytorch import Callback, Trainer, seed_everything  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402

from lightning_datadiet import EL2NCallback, ForgettingCallback, GraNdCallback  # noqa: E402

from tiny import TinyDataModule, TinyModule  # noqa: E402

MAX_EPOCHS = 3


class HangInEpoch2(Callback):
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 2 and batch_idx == 2:
            self.marker.write_text("killing time")
            time.sleep(600)


def main(out: Path, mode: str) -> None:
    torch.set_num_threads(1)
    seed_everything(0)
    scores = out / "scores"
    callbacks = [
        EL2NCallback(epochs=[1, 3], dirpath=scores, seed=0),
        GraNdCallback(epochs=[3], dirpath=scores, seed=0, chunk_size=8),
        ForgettingCallback(epochs=[2], dirpath=scores, seed=0),
        ModelCheckpoint(dirpath=out / "ckpt", save_last=True, every_n_epochs=1),
    ]
    if mode == "crash":
        callbacks.append(HangInEpoch2(out / "in_epoch2"))
    trainer = Trainer(
        default_root_dir=out,
        max_epochs=MAX_EPOCHS,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = TinyModule(lr=0.3)
    dm = TinyDataModule(n=24, batch_size=4, seeded_sampler=True)
    ckpt = out / "ckpt" / "last.ckpt" if mode == "resume" else None
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
    torch.save(model.state_dict(), out / "weights.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
