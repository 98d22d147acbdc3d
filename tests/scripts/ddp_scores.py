"""Run under 2-process CPU DDP (gloo) by tests/test_callbacks_ddp.py; writes results for the parent to check.

usage: python ddp_scores.py OUT_DIR {models|scripted}
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning.pytorch import Callback, Trainer, seed_everything  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lightning_datadiet import EL2NCallback, ForgettingCallback, GraNdCallback  # noqa: E402

from tiny import ScriptedModule, TinyDataModule, TinyModule, scripted_data  # noqa: E402


class SaveWeights(Callback):
    def __init__(self, out):
        self.out = out

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero:
            torch.save(pl_module.net.state_dict(), self.out / "weights_0.pt")

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            torch.save(pl_module.net.state_dict(), self.out / f"weights_{trainer.current_epoch + 1}.pt")


def main(out: Path, kind: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(0)
    trainer_kwargs = dict(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out,
    )
    if kind == "models":
        e = EL2NCallback(epochs=[0, 2], dirpath=out / "scores")
        g = GraNdCallback(epochs=[1], dirpath=out / "scores", chunk_size=4)
        f = ForgettingCallback(dirpath=out / "scores")
        dm = TinyDataModule(n=37, batch_size=5, num_workers=2)  # 37 on 2 ranks: the sampler pads one repeat
        trainer = Trainer(max_epochs=2, callbacks=[SaveWeights(out), e, g, f], **trainer_kwargs)
        trainer.fit(TinyModule(), datamodule=dm)
        cbs = {"el2n": e, "grand": g, "forgetting": f}
    else:
        n, epochs = 23, 4
        script = torch.rand(epochs, n, generator=torch.Generator().manual_seed(11)) > 0.45
        script[:, 2] = False
        f = ForgettingCallback(dirpath=out / "scores")
        loader = DataLoader(scripted_data(n), batch_size=3, shuffle=True, num_workers=2)
        trainer = Trainer(max_epochs=epochs, callbacks=[f], **trainer_kwargs)
        trainer.fit(ScriptedModule(script), train_dataloaders=loader)
        cbs = {"forgetting": f}
        if trainer.is_global_zero:
            torch.save(script, out / "script.pt")
    rank = trainer.global_rank
    torch.save({k: {e: s.clone() for e, s in cb.scores_by_epoch.items()} for k, cb in cbs.items()},
               out / f"scores_rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
