"""TrainingDynamicsCallback against scripted logits (shuffle, workers, resume), orientation, NaN refusal, data maps."""

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from lightning_datadiet import PrunedDataModule, TrainingDynamicsCallback, load_scores, selection
from lightning_datadiet.analysis.datamap import plot_data_map
from lightning_datadiet.scores.dynamics import (
    DYNAMICS_METRICS,
    DynamicsState,
    dynamics_scores,
    dynamics_update,
)

from tiny import (
    EpochSeededSampler,
    ScriptedLogitsModule,
    TinyDataModule,
    expected_dynamics,
    scripted_data,
    scripted_logits,
)


def _trainer(root, callbacks, max_epochs, **kwargs):
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    return Trainer(default_root_dir=root, max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=callbacks,
                   enable_progress_bar=False, enable_model_summary=False, **kwargs)  # fmt: skip


def _close(got, expected):
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=2e-6, equal_nan=True)


def test_every_metric_equals_the_scripted_reference_with_shuffle_and_workers(tmp_path):
    n, epochs, window = 29, 5, 3
    logits = scripted_logits(epochs, n, seed=1)
    logits[:, 4] = torch.tensor([9.0, -9.0, -9.0])  # example 4 (label 1) always wrong with a large margin
    cb = TrainingDynamicsCallback(window=window, epochs=[2], dirpath=tmp_path / "s", seed=0)
    loader = DataLoader(scripted_data(n), batch_size=4, shuffle=True, num_workers=2, persistent_workers=True)
    _trainer(tmp_path, [cb], epochs).fit(ScriptedLogitsModule(logits), train_dataloaders=loader)
    expected = expected_dynamics(logits, window)
    assert set(cb.scores) == set(DYNAMICS_METRICS)
    for name in DYNAMICS_METRICS:
        assert cb.scores[name].dtype == torch.float32 and cb.scores[name].shape == (n,)
        _close(cb.scores[name], expected[name])
    assert cb.scores["correctness"][4] == 0 and cb.scores["aum"][4] < -17
    # snapshot after 2 epochs: a window of 3 is not full yet, so dynamic_uncertainty is NaN there (no file)
    early = expected_dynamics(logits[:2], window)
    for name in ("aum", "confidence", "variability", "correctness"):
        _close(cb.scores_by_epoch[2][name], early[name])
    assert torch.isnan(cb.scores_by_epoch[2]["dynamic_uncertainty"]).all()
    assert "dynamic_uncertainty" not in cb.score_paths[2] and set(cb.score_paths[5]) == set(DYNAMICS_METRICS)
    # files: method=<name>, oriented so that higher = harder
    for name in DYNAMICS_METRICS:
        f = load_scores(cb.score_paths[5][name])
        assert f.method == name and f.epoch == 5 and f.seed == 0 and f.num_samples == n
        sign = -1.0 if name in ("aum", "confidence", "correctness") else 1.0
        assert torch.equal(f.scores, sign * cb.scores[name])
        assert f.extra["stored"] == ("negated" if sign < 0 else "as defined")
        assert torch.equal(cb.hardness[name], f.scores)


def test_highest_rule_on_the_files_keeps_the_hard_end(tmp_path):
    n = 30
    logits = scripted_logits(3, n, seed=2)
    cb = TrainingDynamicsCallback(metrics=["aum", "variability"], dirpath=tmp_path / "s")
    loader = DataLoader(scripted_data(n), batch_size=5, shuffle=True)
    _trainer(tmp_path, [cb], 3).fit(ScriptedLogitsModule(logits), train_dataloaders=loader)
    assert set(cb.scores) == {"aum", "variability"}
    kept = selection.select(load_scores(cb.score_paths[3]["aum"]).scores, 10, "highest")
    assert set(kept.tolist()) == set(torch.argsort(cb.scores["aum"])[:10].tolist())  # the 10 lowest AUM
    kept = selection.select(load_scores(cb.score_paths[3]["variability"]).scores, 10, "highest")
    assert set(kept.tolist()) == set(torch.argsort(cb.scores["variability"])[-10:].tolist())


def test_never_presented_items_are_nan_and_pruned_datamodule_refuses_them(tmp_path):
    n = 20
    logits = scripted_logits(2, n, seed=3)
    cb = TrainingDynamicsCallback(window=2, save=False)
    loader = DataLoader(scripted_data(n), batch_size=4, shuffle=False)
    with pytest.warns(UserWarning, match="never presented"):
        _trainer(tmp_path, [cb], 2, limit_train_batches=3).fit(ScriptedLogitsModule(logits), train_dataloaders=loader)
    for name in DYNAMICS_METRICS:
        assert torch.isnan(cb.scores[name][12:]).all() and not torch.isnan(cb.scores[name][:12]).any()
    with pytest.raises(ValueError, match="NaN"):
        PrunedDataModule(TinyDataModule(n=n), cb.scores["aum"], keep_fraction=0.5).setup("fit")


class _CrashAtStep(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def test_mid_epoch_resume_equals_uninterrupted(tmp_path):
    n, epochs, window = 23, 4, 2  # 6 batches of 4 per epoch; checkpoint at step 15 (inside epoch 2), crash at 17
    logits = scripted_logits(epochs, n, seed=4)

    def loader():
        return DataLoader(scripted_data(n), batch_size=4, sampler=EpochSeededSampler(n, seed=1))

    full = TrainingDynamicsCallback(window=window, save=False)
    _trainer(tmp_path / "full", [full], epochs).fit(ScriptedLogitsModule(logits), train_dataloaders=loader())
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer(tmp_path, [TrainingDynamicsCallback(window=window, save=False), _CrashAtStep(17), ckpt], epochs,
                 enable_checkpointing=True).fit(ScriptedLogitsModule(logits), train_dataloaders=loader())  # fmt: skip
    resumed = TrainingDynamicsCallback(window=window, save=False)
    _trainer(tmp_path, [resumed], epochs).fit(
        ScriptedLogitsModule(logits), train_dataloaders=loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    expected = expected_dynamics(logits, window)
    for name in DYNAMICS_METRICS:
        assert torch.equal(resumed.scores[name], full.scores[name]), name
        _close(resumed.scores[name], expected[name])
    with pytest.raises(ValueError, match="same `metrics` and `window`"):
        _trainer(tmp_path, [TrainingDynamicsCallback(window=3, save=False)], epochs).fit(
            ScriptedLogitsModule(logits), train_dataloaders=loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
        )


def test_reuse_for_a_second_fit_starts_fresh(tmp_path):
    n = 17
    a, b = scripted_logits(3, n, seed=5), scripted_logits(3, n, seed=6)
    cb = TrainingDynamicsCallback(window=2, save=False)
    _trainer(tmp_path, [cb], 3).fit(ScriptedLogitsModule(a), train_dataloaders=DataLoader(scripted_data(n), batch_size=4))
    _trainer(tmp_path, [cb], 3).fit(ScriptedLogitsModule(b), train_dataloaders=DataLoader(scripted_data(n), batch_size=4))
    expected = expected_dynamics(b, 2)
    for name in DYNAMICS_METRICS:
        _close(cb.scores[name], expected[name])


def test_max_steps_inside_an_epoch_counts_completed_epochs(tmp_path):
    n = 20
    logits = scripted_logits(3, n, seed=7)
    cb = TrainingDynamicsCallback(window=2, dirpath=tmp_path / "s", seed=0)
    with pytest.warns(UserWarning, match="stopped inside epoch 3"):
        _trainer(tmp_path, [cb], 3, max_steps=11).fit(
            ScriptedLogitsModule(logits), train_dataloaders=DataLoader(scripted_data(n), batch_size=4, shuffle=True)
        )
    assert set(cb.scores_by_epoch) == {2}
    expected = expected_dynamics(logits[:2], 2)
    for name in DYNAMICS_METRICS:
        _close(cb.scores[name], expected[name])
        assert load_scores(cb.score_paths[2][name]).epoch == 2


def test_tensorboard_histograms_and_data_map(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    n = 24
    logits = scripted_logits(3, n, seed=8)
    logger = TensorBoardLogger(tmp_path, name="tb")
    cb = TrainingDynamicsCallback(window=2, save=False)
    _trainer(tmp_path, [cb], 3, logger=logger).fit(
        ScriptedLogitsModule(logits), train_dataloaders=DataLoader(scripted_data(n), batch_size=6, shuffle=True)
    )
    acc = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0, "images": 0, "scalars": 0}).Reload()
    for name in DYNAMICS_METRICS:
        assert acc.Histograms(f"datadiet/{name}")[-1].histogram_value.num == n
        assert acc.Scalars(f"datadiet/{name}_nan_count")[-1].value == 0
    assert "datadiet/data_map" in acc.Tags()["images"]


def test_plot_data_map_writes_a_png(tmp_path):
    g = torch.Generator().manual_seed(0)
    conf, var, corr = torch.rand(200, generator=g), torch.rand(200, generator=g) * 0.4, torch.rand(200, generator=g)
    conf[3] = float("nan")
    path = plot_data_map(conf, var, corr, corrupted=[1, 2, 5], path=tmp_path / "m" / "map.png", max_points=50)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="variability"):
        plot_data_map(conf, var[:10], path=tmp_path / "x.png")


def test_dynamics_update_applies_repeats_in_order():
    state = DynamicsState(3, window=2)
    idx = torch.tensor([0, 1, 0, 0])
    prob = torch.tensor([0.2, 0.5, 0.6, 0.1])
    dynamics_update(state, idx, torch.tensor([1.0, 2.0, 3.0, -1.0]), prob, torch.tensor([True, False, True, False]))
    s = dynamics_scores(state)
    torch.testing.assert_close(s["aum"][0], torch.tensor(1.0))
    torch.testing.assert_close(s["dynamic_uncertainty"][0], torch.tensor((0.2 + 0.25) / 2))  # windows (.2,.6),(.6,.1)
    assert torch.isnan(s["dynamic_uncertainty"][1]) and torch.isnan(s["confidence"][2])


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown"):
        TrainingDynamicsCallback(metrics=["aum", "loss"])
    with pytest.raises(ValueError, match="window"):
        TrainingDynamicsCallback(window=1)
    with pytest.raises(ValueError, match="epoch 0"):
        TrainingDynamicsCallback(epochs=[0])


def test_data_map_from_score_files_undoes_the_orientation(tmp_path):
    from lightning_datadiet.analysis.datamap import data_map_from_files

    n = 30
    cb = TrainingDynamicsCallback(metrics=["confidence", "variability", "correctness"], dirpath=tmp_path / "s")
    _trainer(tmp_path, [cb], 3).fit(ScriptedLogitsModule(scripted_logits(3, n, seed=9)),
                                     train_dataloaders=DataLoader(scripted_data(n), batch_size=5))  # fmt: skip
    files = list(cb.score_paths[3].values())
    import lightning_datadiet.analysis.datamap as dm_mod

    seen = {}
    original = dm_mod.plot_data_map

    def spy(conf, var, corr, corrupted, **kw):
        seen.update(conf=conf, var=var, corr=corr)
        return original(conf, var, corr, corrupted, **kw)

    dm_mod.plot_data_map = spy
    try:
        path = data_map_from_files(files, tmp_path / "map.png", corrupted=[0, 1])
    finally:
        dm_mod.plot_data_map = original
    assert path.exists() and path.read_bytes()[:4] == b"\x89PNG"
    assert torch.equal(seen["conf"], cb.scores["confidence"]) and torch.equal(seen["corr"], cb.scores["correctness"])
    assert data_map_from_files(files[2:], tmp_path / "none.png") is None  # no confidence: nothing to draw


@pytest.mark.slow
def test_demo_outputs_hold_a_data_map_png(tmp_path):
    from lightning_datadiet.cli import main

    out = tmp_path / "out"
    rc = main(["demo", "--output_dir", str(out), "--label_noise", "[0.2]", "--epochs", "2", "--model", "mlp",
               "--width", "16", "--methods", "[el2n]", "--el2n_epoch", "1", "--num_runs", "1", "--keep_fractions",
               "[0.5]", "--rules", "[highest]", "--seeds", "[0]", "--select_on_val", "false", "--tensorboard", "false",
               "--progress_bar", "false"])  # fmt: skip
    assert rc in (0, None)
    maps = list(out.glob("data_map_*.png"))
    assert len(maps) == 1 and maps[0].read_bytes()[:4] == b"\x89PNG"
