"""One 2-process CPU DDP (gloo) harness for every score callback, run by tests/test_ddp.py.

A new score callback gets its DDP check by adding one entry to ``CASES``: how to build it, what to keep of its
results, and the single-process reference they must equal (computed by the test from what was trained).

usage: python ddp_harness.py OUT_DIR {part|resume}

All callbacks of ``CASES`` run in one fit of :class:`tiny.ScriptedNetModule`: its forward returns scripted logits
(the training-pass callbacks see a known sequence) while a real TinyNet with BatchNorm trains on the same batches (the
pass callbacks score it). 23 examples in batches of 3 on 2 ranks: the DistributedSampler pads one repeat per epoch,
and the pruning callback skips examples in epochs 1-2. ``part`` stops at max_steps=9, inside epoch 2, right after a
checkpoint; ``resume`` continues from it. Each rank saves every callback's results, the example ids of the batches
it trained per epoch (the references' multiplicities) and, on rank 0, the TinyNet weights after each epoch.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from lightning.pytorch import Callback, LightningDataModule, Trainer, seed_everything  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import lightning_datadiet as dd  # noqa: E402

from tiny import ScriptedNetModule, TinyNet, expected_dynamics, scripted_logits, tagged_data  # noqa: E402

N, EPOCHS, BATCH, K = 23, 4, 3, 3
STOP_STEP = 9  # `part` stops here: inside epoch 2, right after a checkpoint (every 3 steps)


@dataclass
class Run:
    """What the references need: the scripted logits, the data, how often each example was trained in each epoch
    (over both ranks and both parts of the fit) and the TinyNet of each completed epoch (rank 0's weights)."""

    logits: Tensor  # [E, N, K]
    x: Tensor  # [N, 2, 4, 4]
    y: Tensor  # [N]
    multiplicity: Tensor  # [E, N]
    out: Path

    def net(self, epoch: int) -> TinyNet:
        net = TinyNet(K)
        net.load_state_dict(torch.load(self.out / f"weights_{epoch}.pt"))
        return net.eval()


@dataclass(frozen=True)
class Case:
    make: Callable[[Path], Callback]
    results: Callable[[Any], dict[str, Tensor]]
    reference: Callable[[Run], dict[str, Tensor]]
    rtol: float = 1e-5
    atol: float = 2e-6


def _by_epoch(cb: Any) -> dict[str, Tensor]:
    return {f"epoch{e}": s.clone() for e, s in cb.scores_by_epoch.items()}


def _el2n(run: Run) -> dict[str, Tensor]:
    with torch.no_grad():
        return {f"epoch{e}": dd.el2n(run.net(e)(run.x), run.y) for e in (0, 3)}


def _grand(run: Run) -> dict[str, Tensor]:
    return {f"epoch{e}": dd.grand(run.net(e), run.x, run.y) for e in (1, 4)}


def _forgetting(run: Run) -> dict[str, Tensor]:
    """Walk each example's correctness over the epochs it was trained in (the scripted logits are the same at every
    presentation of an epoch, so a padded repeat changes nothing)."""
    correct = run.logits.argmax(2) == run.y
    out = torch.zeros(N)
    for i in range(N):
        seq = [bool(correct[e, i]) for e in range(EPOCHS) if run.multiplicity[e, i] > 0]
        out[i] = sum(a and not b for a, b in zip(seq, seq[1:])) if any(seq) else math.inf
    return {"forgetting": out}


def _pruning(run: Run) -> dict[str, Tensor]:
    """The skipped examples are those never trained in an epoch; the latest loss is that of the last epoch trained."""
    expected = {f"skipped_{e}": run.multiplicity[e] == 0 for e in range(EPOCHS)}
    latest = torch.full((N,), float("nan"))
    for e in range(EPOCHS):
        ids = (run.multiplicity[e] > 0).nonzero().flatten()
        latest[ids] = F.cross_entropy(run.logits[e, ids], run.y[ids], reduction="none")
    expected["losses"] = latest
    return expected


def _pruning_results(cb: Any) -> dict[str, Tensor]:
    skipped = {f"skipped_{e}": m.clone() for e, m in cb.skipped_by_epoch.items()}
    return {**skipped, "losses": cb.latest_loss.clone()}


CASES: dict[str, Case] = {
    "el2n": Case(
        lambda out: dd.EL2NCallback(epochs=[0, 3], logits_module="net", dirpath=out / "scores", seed=0),
        _by_epoch, _el2n, atol=1e-6,
    ),
    "grand": Case(
        lambda out: dd.GraNdCallback(epochs=[1, 4], logits_module="net", chunk_size=4, dirpath=out / "scores", seed=0),
        _by_epoch, _grand, rtol=1e-4, atol=1e-6,
    ),
    "forgetting": Case(
        lambda out: dd.ForgettingCallback(dirpath=out / "scores", seed=0),
        lambda cb: {"forgetting": cb.scores.clone()}, _forgetting,
    ),
    "dynamics": Case(
        lambda out: dd.TrainingDynamicsCallback(window=3, dirpath=out / "scores", seed=0),
        lambda cb: {k: v.clone() for k, v in cb.scores.items()},
        lambda run: expected_dynamics(run.logits, 3, run.multiplicity),
    ),
    "pruning": Case(lambda out: dd.DynamicPruningCallback(prune_ratio=0.5, anneal=0.25, seed=3), _pruning_results, _pruning),
}  # fmt: skip


class Record(Callback):
    """The example ids of the batches this rank trained, per epoch, and (rank 0) the TinyNet after each epoch."""

    def __init__(self, out: Path) -> None:
        self.out, self.epochs = out, {}

    def on_train_start(self, trainer, pl_module):
        if trainer.is_global_zero and trainer.global_step == 0:
            torch.save(pl_module.net.state_dict(), self.out / "weights_0.pt")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        ids = batch[0][:, 0, 0, 0].round().long().tolist()
        self.epochs.setdefault(trainer.current_epoch, []).extend(ids)

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            torch.save(pl_module.net.state_dict(), self.out / f"weights_{trainer.current_epoch + 1}.pt")


class TaggedData(LightningDataModule):
    def train_dataloader(self):
        return DataLoader(tagged_data(N), batch_size=BATCH, shuffle=True, num_workers=1)


def main(out: Path, mode: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(0)
    cbs = {name: case.make(out) for name, case in CASES.items()}
    record = Record(out)
    ckpt = ModelCheckpoint(dirpath=out / "ckpt", save_last=True, every_n_train_steps=3)
    trainer = Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=out, max_epochs=EPOCHS, callbacks=[record, *cbs.values(), ckpt],
        max_steps=STOP_STEP if mode == "part" else -1,
    )  # fmt: skip
    ckpt_path = out / "ckpt" / "last.ckpt" if mode == "resume" else None
    model = ScriptedNetModule(scripted_logits(EPOCHS, N, seed=11))
    trainer.fit(model, datamodule=TaggedData(), ckpt_path=ckpt_path)
    saved = {name: CASES[name].results(cb) for name, cb in cbs.items()}
    torch.save({"results": saved, "presented": record.epochs}, out / f"{mode}_rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
