"""Issue 9 items 3, 13-16 for ForgettingCallback (and item 16 for the pass callbacks): reuse for a second fit,
mid-epoch resume, resume with other arguments, `max_steps` inside an epoch, TensorBoard histogram of all N."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from lightning_datadiet import EL2NCallback, ForgettingCallback, load_scores

from tiny import (
    EpochSeededSampler,
    ScriptedModule,
    TinyDataModule,
    TinyModule,
    expected_forgetting,
    scripted_data,
)

SCRIPTS = Path(__file__).resolve().parent / "scripts"


def _trainer(root, callbacks, max_epochs, **kwargs):
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    return Trainer(default_root_dir=root, max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=callbacks,
                   enable_progress_bar=False, enable_model_summary=False, **kwargs)  # fmt: skip


def _script(epochs, n, seed):
    script = torch.rand(epochs, n, generator=torch.Generator().manual_seed(seed)) > 0.45
    script[:, 0] = False  # never learned
    return script


def _seeded_loader(n, batch_size, seed=0):
    return DataLoader(scripted_data(n), batch_size=batch_size, sampler=EpochSeededSampler(n, seed=seed))


# ------------------------------------------------------------------------------------------------ item 13


def test_reused_callback_starts_fresh_for_a_second_fit(tmp_path):
    n = 19
    s1, s2 = _script(3, n, 1), _script(4, n, 2)
    cb = ForgettingCallback(dirpath=tmp_path / "s", seed=0)
    _trainer(tmp_path, [cb], 3).fit(ScriptedModule(s1), train_dataloaders=_seeded_loader(n, 4))
    assert torch.equal(cb.scores, expected_forgetting(s1))
    first_file = load_scores(cb.score_paths[3]).scores
    _trainer(tmp_path, [cb], 4).fit(ScriptedModule(s2), train_dataloaders=_seeded_loader(n, 4))
    assert torch.equal(cb.scores, expected_forgetting(s2))  # counts of fit 1 are not carried over
    assert set(cb.scores_by_epoch) == {4} and set(cb.score_paths) == {4}
    assert torch.equal(load_scores(cb.score_paths[4]).scores, expected_forgetting(s2))
    assert torch.equal(first_file, expected_forgetting(s1))


def test_reused_callback_default_dirpath_follows_the_new_trainer(tmp_path):
    cb = ForgettingCallback(seed=0)
    _trainer(tmp_path / "a", [cb], 1).fit(TinyModule(), datamodule=TinyDataModule())
    assert cb.dirpath == tmp_path / "a" / "datadiet"
    _trainer(tmp_path / "b", [cb], 1).fit(TinyModule(), datamodule=TinyDataModule())
    assert cb.dirpath == tmp_path / "b" / "datadiet" and cb.score_paths[1].exists()


# ------------------------------------------------------------------------------------------------ item 15


def test_resume_with_other_epochs_argument_restores_the_counts(tmp_path):
    n, total = 21, 4
    script = _script(total, n, 3)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)
    first = ForgettingCallback(epochs=[1], dirpath=tmp_path / "s")
    _trainer(tmp_path, [first, ckpt], 2, enable_checkpointing=True).fit(
        ScriptedModule(script), train_dataloaders=_seeded_loader(n, 5)
    )
    resumed = ForgettingCallback(epochs=[3], dirpath=tmp_path / "s")  # other snapshot epochs than the first fit
    _trainer(tmp_path, [resumed], total).fit(
        ScriptedModule(script), train_dataloaders=_seeded_loader(n, 5), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert torch.equal(resumed.scores, expected_forgetting(script))
    assert torch.equal(resumed.scores_by_epoch[3], expected_forgetting(script[:3]))
    assert torch.equal(resumed.scores_by_epoch[1], expected_forgetting(script[:1]))  # from the checkpoint


def test_checkpoint_of_an_older_state_key_is_found(tmp_path):
    """Checkpoints written before the key change (key held `epochs`) still restore the counts."""
    n = 13
    script = _script(3, n, 4)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)
    cb = ForgettingCallback(dirpath=tmp_path / "s")
    _trainer(tmp_path, [cb, ckpt], 2, enable_checkpointing=True).fit(
        ScriptedModule(script), train_dataloaders=_seeded_loader(n, 4)
    )
    path = tmp_path / "ckpt" / "last.ckpt"
    data = torch.load(path, weights_only=True)
    (key,) = [k for k in data["callbacks"] if k.startswith("ForgettingCallback")]
    state = data["callbacks"].pop(key)
    state.pop("presentations")
    data["callbacks"]["ForgettingCallback{'method': 'forgetting', 'epochs': [2]}"] = state
    torch.save(data, path)
    resumed = ForgettingCallback(dirpath=tmp_path / "s")
    _trainer(tmp_path, [resumed], 3).fit(ScriptedModule(script), train_dataloaders=_seeded_loader(n, 4), ckpt_path=path)
    assert torch.equal(resumed.scores, expected_forgetting(script))


# ------------------------------------------------------------------------------------------------ item 16


def test_max_steps_inside_an_epoch_labels_only_completed_epochs(tmp_path):
    n = 40  # batches of 8: 5 per epoch; max_steps=7 stops after 2 batches of the second epoch
    script = _script(3, n, 5)
    cb = ForgettingCallback(epochs=[2], dirpath=tmp_path / "s", seed=0)
    with pytest.warns(UserWarning, match=r"stopped inside epoch 2 after 2 of its batches"):
        _trainer(tmp_path, [cb], 3, max_steps=7).fit(ScriptedModule(script), train_dataloaders=_seeded_loader(n, 8))
    assert set(cb.scores_by_epoch) == {1} and cb.completed_epochs == 1
    assert torch.equal(cb.scores, expected_forgetting(script[:1]))
    f = load_scores(cb.score_paths[1])
    assert f.epoch == 1 and torch.equal(f.scores, expected_forgetting(script[:1]))
    assert not (tmp_path / "s" / "forgetting_epoch002_seed0.scores").exists()


def test_max_steps_inside_an_epoch_pass_callbacks_do_not_score_it(tmp_path):
    cb = EL2NCallback(epochs=[1, 2], dirpath=tmp_path / "s", seed=0)
    with pytest.warns(UserWarning, match=r"scoring epoch\(s\) \[2\] never ran"):
        _trainer(tmp_path, [cb], 3, max_steps=7).fit(TinyModule(), datamodule=TinyDataModule(n=40, batch_size=8))
    assert set(cb.scores_by_epoch) == {1}
    assert not (tmp_path / "s" / "el2n_epoch002_seed0.scores").exists()


# ------------------------------------------------------------------------------------------------ item 14


class _CrashAtStep(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_mid_epoch_resume_is_exact_with_an_epoch_seeded_sampler(tmp_path):
    n, total = 23, 4  # batches of 4: 6 per epoch; checkpoint at step 15 = 3 batches into epoch 2, crash at 17
    script = _script(total, n, 6)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=3)
    crashed = ForgettingCallback(dirpath=tmp_path / "s")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer(tmp_path, [crashed, _CrashAtStep(17), ckpt], total, enable_checkpointing=True).fit(
            ScriptedModule(script), train_dataloaders=_seeded_loader(n, 4)
        )
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 15
    resumed = ForgettingCallback(dirpath=tmp_path / "s")
    seen = _Presented()
    _trainer(tmp_path, [resumed, seen], total).fit(
        ScriptedModule(script), train_dataloaders=_seeded_loader(n, 4), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert torch.equal(resumed.scores, expected_forgetting(script))
    # the resumed epoch trained exactly its 3 remaining batches, not the first ones again
    assert seen.batches[2] == 3 and seen.batches[3] == 6


class _Presented(Callback):
    def __init__(self):
        self.batches = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches[trainer.current_epoch] = self.batches.get(trainer.current_epoch, 0) + 1


def test_mid_epoch_resume_with_a_fresh_permutation_warns(tmp_path):
    n = 23
    script = _script(3, n, 7)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=3)

    def loader():
        return DataLoader(scripted_data(n), batch_size=4, shuffle=True)  # a new random order at every pass

    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer(tmp_path, [ForgettingCallback(save=False), _CrashAtStep(10), ckpt], 3,
                 enable_checkpointing=True).fit(ScriptedModule(script), train_dataloaders=loader())  # fmt: skip
    with pytest.warns(UserWarning, match="did not reproduce the interrupted epoch's order"):
        _trainer(tmp_path, [ForgettingCallback(save=False)], 3).fit(
            ScriptedModule(script), train_dataloaders=loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
        )


@pytest.mark.slow
def test_mid_epoch_kill_and_resume_equals_uninterrupted_fit(tmp_path):
    script = str(SCRIPTS / "fault_midepoch.py")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "ignore"}
    full, crash = tmp_path / "full", tmp_path / "crash"
    p_full = subprocess.Popen([sys.executable, script, str(full), "full"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    p_crash = subprocess.Popen([sys.executable, script, str(crash), "crash"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not (crash / "hanging").exists():
        assert p_crash.poll() is None, p_crash.stdout.read()
        assert time.monotonic() < deadline, "the crash run never reached step 20"
        time.sleep(0.05)
    p_crash.send_signal(signal.SIGKILL)
    p_crash.wait(timeout=30)
    assert torch.load(crash / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 18
    out, _ = p_full.communicate(timeout=300)
    assert p_full.returncode == 0, out
    resumed = subprocess.run([sys.executable, script, str(crash), "resume"], env=env, capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    expected = {p.name: load_scores(p).scores for p in sorted((full / "scores").glob("*.scores"))}
    got = {p.name: load_scores(p).scores for p in sorted((crash / "scores").glob("*.scores"))}
    assert sorted(got) == sorted(expected) and "forgetting_epoch005_seed0.scores" in got
    for name in expected:
        assert torch.equal(got[name], expected[name]) or torch.allclose(
            got[name], expected[name], rtol=0, atol=0, equal_nan=True
        ), name
    w_full = torch.load(full / "weights.pt", weights_only=True)
    w_res = torch.load(crash / "weights.pt", weights_only=True)
    for key in w_full:
        assert torch.equal(w_res[key], w_full[key]), key


# ------------------------------------------------------------------------------------------------ item 3


def test_forgetting_histogram_counts_all_examples(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    n = 30
    script = _script(3, n, 8)
    script[:, 1] = False  # two never learned (0 and 1) at least
    logger = TensorBoardLogger(tmp_path, name="tb")
    cb = ForgettingCallback(epochs=[1], save=False)
    _trainer(tmp_path, [cb], 3, logger=logger).fit(ScriptedModule(script), train_dataloaders=_seeded_loader(n, 4))
    acc = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0, "scalars": 0}).Reload()
    expected = expected_forgetting(script)
    never = int(torch.isinf(expected).sum())
    top = float(expected[torch.isfinite(expected)].max())
    hist = acc.Histograms("datadiet/forgetting")[-1]
    assert hist.step == 3 and hist.histogram_value.num == n  # every example, never-learned ones included
    assert hist.histogram_value.max == top + 1
    description = acc.SummaryMetadata("datadiet/forgetting").summary_description
    assert "Never-learned examples (score +inf) are drawn at one past the largest finite score" in description
    assert acc.Scalars("datadiet/forgetting_infinite_count")[-1].value == never
    assert acc.Scalars("datadiet/forgetting_infinite_plotted_at")[-1].value == top + 1
    assert math.isinf(float(cb.scores[0]))
