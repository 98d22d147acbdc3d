"""DynamicPruningCallback against scripted losses: which examples each epoch presents, the ratio, rescaling weights,
Lightning's epoch bookkeeping on shorter epochs, and resume."""

import math
from fractions import Fraction

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.nn import functional as F
from torch.utils.data import DataLoader

from lightning_datadiet import DynamicPruningCallback, loss_weights

from tiny import EpochSeededSampler, ScriptedLogitsModule, scripted_data, scripted_logits

N, K = 40, 3


def _trainer(root, callbacks, max_epochs, **kwargs):
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    return Trainer(default_root_dir=root, max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=callbacks,
                   enable_progress_bar=False, enable_model_summary=False, **kwargs)  # fmt: skip


class Presented(Callback):
    """Which dataset items each epoch's batches held (read from the inputs, independent of the library)."""

    def __init__(self):
        self.ids = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ids.setdefault(trainer.current_epoch, []).extend(batch[0][:, 0].round().long().tolist())


class Weighted(ScriptedLogitsModule):
    """Opts in to the rescaling and records the weights it got per example id."""

    def __init__(self, logits):
        super().__init__(logits)
        self.seen = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        w = loss_weights(self, batch)
        ids = x[:, 0].round().long()
        ws = w.tolist() if isinstance(w, torch.Tensor) else [w] * len(ids)
        for i, v in zip(ids.tolist(), ws):
            self.seen[(self.trainer.current_epoch, i)] = v
        return (F.cross_entropy(self(x), y, reduction="none") * w).mean() * 0.0 + self.dummy * 0.0


def _reference(logits, presented, epochs, ratio, anneal):
    """Replay the rule from the presentations: latest loss per example from the epochs it was presented in."""
    labels = torch.arange(N) % K
    latest = torch.full((N,), float("nan"))
    expect = {}
    last_full = epochs - math.ceil(anneal * epochs)
    for e in range(epochs):
        seen = ~torch.isnan(latest)
        if 0 < e < last_full and seen.any():
            cand = seen & (latest.double() < latest[seen].double().mean())
            expect[e] = (cand, math.floor(Fraction(str(ratio)) * int(cand.sum()) + Fraction(1, 2)))  # half up
        else:
            expect[e] = (torch.zeros(N, dtype=torch.bool), 0)
        ids = torch.tensor(sorted(set(presented[e])))
        latest[ids] = F.cross_entropy(logits[e, ids].float(), labels[ids], reduction="none")
    return expect


def _check_against_reference(cb, seen, logits, epochs, ratio, anneal, batch_size):
    expect = _reference(logits, seen.ids, epochs, ratio, anneal)
    for e in range(epochs):
        ids = seen.ids[e]
        assert len(ids) == len(set(ids)), f"epoch {e}: an example presented twice"
        presented = torch.zeros(N, dtype=torch.bool)
        presented[torch.tensor(ids)] = True
        cand, k = expect[e]
        skipped = ~presented
        assert torch.equal(cb.skipped_by_epoch[e], skipped), e
        assert int(skipped.sum()) == k and bool((skipped <= cand).all()), e  # only below-mean examples, at the ratio
        assert torch.equal(cb.candidates_by_epoch[e], cand), e
        assert cb.realised_fraction[e] == k / N
        assert cb.steps_saved[e] == math.ceil(N / batch_size) - math.ceil((N - k) / batch_size)
    return expect


@pytest.mark.parametrize("workers", [0, 2])
def test_epochs_present_exactly_the_kept_examples(tmp_path, workers):
    epochs, ratio, anneal = 8, 0.5, 0.25  # epoch 0 and the last 2 epochs use all data
    logits = scripted_logits(epochs, N, seed=1)
    cb = DynamicPruningCallback(prune_ratio=ratio, anneal=anneal, seed=4)
    seen = Presented()
    model = Weighted(logits)
    loader = DataLoader(scripted_data(N), batch_size=6, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)  # fmt: skip
    _trainer(tmp_path, [cb, seen], epochs).fit(model, train_dataloaders=loader)
    expect = _check_against_reference(cb, seen, logits, epochs, ratio, anneal, 6)
    for e in (0, 6, 7):
        assert sorted(seen.ids[e]) == list(range(N)) and cb.realised_fraction[e] == 0
    assert all(cb.realised_fraction[e] > 0 for e in range(1, 6))
    assert cb.total_steps_saved == sum(cb.steps_saved.values()) > 0
    # rescaling: kept candidates get 1/(1 - ratio), everything else 1
    for (e, i), w in model.seen.items():
        cand, _ = expect[e]
        kept_candidate = bool(cand[i]) and not bool(cb.skipped_by_epoch[e][i])
        assert w == (2.0 if kept_candidate and cb.realised_fraction[e] > 0 else 1.0), (e, i, w)


def test_without_opt_in_pruning_works_unrescaled_with_a_warning(tmp_path):
    logits = scripted_logits(4, N, seed=2)
    cb = DynamicPruningCallback(prune_ratio=0.3, anneal=0.0)
    with pytest.warns(UserWarning, match="did not call `lightning_datadiet.loss_weights"):
        _trainer(tmp_path, [cb], 4).fit(ScriptedLogitsModule(logits),
                                         train_dataloaders=DataLoader(scripted_data(N), batch_size=8, shuffle=True))  # fmt: skip
    assert cb.realised_fraction[3] > 0 and cb.realised_fraction[0] == 0


class CountEpochHooks(Callback):
    def __init__(self):
        self.val_epochs = 0

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.val_epochs += 1


class WithValAndScheduler(ScriptedLogitsModule):
    def validation_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)}


def test_shorter_epochs_still_validate_and_step_epoch_schedulers(tmp_path):
    epochs = 5
    logits = scripted_logits(epochs, N, seed=3)
    cb, hooks = DynamicPruningCallback(prune_ratio=0.6, anneal=0.0), CountEpochHooks()
    model = WithValAndScheduler(logits)
    train = DataLoader(scripted_data(N), batch_size=4, shuffle=True)
    val = DataLoader(scripted_data(8), batch_size=4)
    trainer = _trainer(tmp_path, [cb, hooks], epochs, num_sanity_val_steps=0)
    trainer.fit(model, train_dataloaders=train, val_dataloaders=val)
    assert hooks.val_epochs == epochs
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**epochs)
    assert trainer.global_step == epochs * 10 - cb.total_steps_saved and cb.total_steps_saved > 0


class _CrashAtStep(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_resume_mid_epoch_prunes_exactly_like_uninterrupted(tmp_path):
    epochs = 6
    logits = scripted_logits(epochs, N, seed=5)

    def loader():
        return DataLoader(scripted_data(N), batch_size=4, sampler=EpochSeededSampler(N, seed=2), num_workers=1)

    full, seen_full = DynamicPruningCallback(anneal=0.2, seed=1), Presented()
    _trainer(tmp_path / "full", [full, seen_full], epochs).fit(ScriptedLogitsModule(logits), train_dataloaders=loader())
    crash_step = 10 + (10 - full.steps_saved[1]) + 2  # inside epoch 2, a pruned epoch
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=crash_step - 1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer(tmp_path, [DynamicPruningCallback(anneal=0.2, seed=1), _CrashAtStep(crash_step), ckpt], epochs,
                 enable_checkpointing=True).fit(ScriptedLogitsModule(logits), train_dataloaders=loader())  # fmt: skip
    resumed, seen = DynamicPruningCallback(anneal=0.2, seed=1), Presented()
    _trainer(tmp_path, [resumed, seen], epochs).fit(
        ScriptedLogitsModule(logits), train_dataloaders=loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert seen.ids[2] == seen_full.ids[2][4:]  # the checkpoint holds 1 batch of 4 of epoch 2: the rest of epoch 2
    assert full.realised_fraction[2] > 0
    for e in range(3, epochs):
        assert seen.ids[e] == seen_full.ids[e]
    for e in range(epochs):
        assert torch.equal(resumed.skipped_by_epoch[e], full.skipped_by_epoch[e])
    assert resumed.steps_saved == full.steps_saved and resumed.realised_fraction == full.realised_fraction
    assert torch.equal(resumed.latest_loss, full.latest_loss)
    with pytest.raises(ValueError, match="prune_ratio"):
        _trainer(tmp_path, [DynamicPruningCallback(prune_ratio=0.3, anneal=0.2)], epochs).fit(
            ScriptedLogitsModule(logits), train_dataloaders=loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
        )


def test_bad_arguments_and_helper_without_callback(tmp_path):
    with pytest.raises(ValueError, match="prune_ratio"):
        DynamicPruningCallback(prune_ratio=1.0)
    with pytest.raises(ValueError, match="anneal"):
        DynamicPruningCallback(anneal=-0.1)
    with pytest.raises(ValueError, match="max_epochs"):
        _trainer(tmp_path, [DynamicPruningCallback()], -1, max_steps=3).fit(
            ScriptedLogitsModule(scripted_logits(1, N)), train_dataloaders=DataLoader(scripted_data(N), batch_size=8)
        )
    assert loss_weights(ScriptedLogitsModule(scripted_logits(1, N))) == 1.0
