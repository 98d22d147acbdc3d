"""The callbacks end to end on tiny CPU models, against the functional scores and scripted predictions."""

import copy
import math

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from lightning_datadiet import EL2NCallback, ForgettingCallback, GraNdCallback, el2n, grand, load_scores
from lightning_datadiet.store import label_fingerprint

from tiny import ScriptedModule, TinyDataModule, TinyModule, expected_forgetting, scripted_data


def _trainer(tmp_path, callbacks, max_epochs, **kwargs):
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    return Trainer(
        default_root_dir=tmp_path,
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


class SnapshotEachEpoch(Callback):
    """Keep a copy of the weights at init and after every epoch (the reference model for each scoring)."""

    def __init__(self):
        self.states = {}

    def on_train_start(self, trainer, pl_module):
        self.states.setdefault(0, copy.deepcopy(pl_module.net.state_dict()))

    def on_train_epoch_end(self, trainer, pl_module):
        self.states[trainer.current_epoch + 1] = copy.deepcopy(pl_module.net.state_dict())


def _model_at(state):
    m = TinyModule()
    m.net.load_state_dict(state)
    return m.net.eval()


@pytest.mark.parametrize("num_workers,persistent", [(0, False), (2, True)])
def test_el2n_and_grand_callbacks_equal_functional_scores(tmp_path, num_workers, persistent):
    seed_everything(0)
    dm = TinyDataModule(n=37, batch_size=5, num_workers=num_workers, persistent_workers=persistent)
    snap = SnapshotEachEpoch()
    e = EL2NCallback(epochs=[0, 2], dirpath=tmp_path / "s")
    g = GraNdCallback(epochs=[0, 1], dirpath=tmp_path / "s", chunk_size=4)
    _trainer(tmp_path, [snap, e, g], max_epochs=2).fit(TinyModule(), datamodule=dm)
    x, y = dm.dataset.tensors
    for epoch in (0, 2):
        net = _model_at(snap.states[epoch])
        with torch.no_grad():
            ref = el2n(net(x), y)
        torch.testing.assert_close(e.scores_by_epoch[epoch], ref, rtol=1e-5, atol=1e-6)
    for epoch in (0, 1):
        ref = grand(_model_at(snap.states[epoch]), x, y)
        torch.testing.assert_close(g.scores_by_epoch[epoch], ref, rtol=1e-4, atol=1e-6)
    assert e.scores.dtype == torch.float32 and e.scores.shape == (37,)
    assert torch.equal(e.scores, e.scores_by_epoch[2])
    # the scores differ between epochs (training happened) and files hold exactly the callback's scores
    assert not torch.allclose(e.scores_by_epoch[0], e.scores_by_epoch[2])
    for cb in (e, g):
        for epoch, path in cb.score_paths.items():
            f = load_scores(path)
            assert torch.equal(f.scores, cb.scores_by_epoch[epoch])
            assert f.method == cb.method and f.epoch == epoch and f.seed == 0 and f.num_samples == 37
            assert f.label_fingerprint == label_fingerprint(y)


def test_forgetting_equals_scripted_sequence_with_shuffle_and_workers(tmp_path):
    seed_everything(1)
    n, epochs = 41, 5
    script = torch.rand(epochs, n, generator=torch.Generator().manual_seed(7)) > 0.45
    script[:, 3] = False  # never learned
    script[:, 4] = True  # never forgotten
    script[:, 5] = torch.tensor([True, False, True, False, True])  # forgotten twice
    cb = ForgettingCallback(dirpath=tmp_path / "s", epochs=[2])
    loader = DataLoader(scripted_data(n), batch_size=4, shuffle=True, num_workers=2, persistent_workers=True)
    _trainer(tmp_path, [cb], max_epochs=epochs).fit(ScriptedModule(script), train_dataloaders=loader)
    expected = expected_forgetting(script)
    assert torch.equal(cb.scores, expected)
    assert cb.scores[3] == math.inf and cb.scores[4] == 0 and cb.scores[5] == 2
    assert torch.equal(cb.scores_by_epoch[2], expected_forgetting(script[:2]))
    assert set(cb.score_paths) == {2, epochs}
    assert torch.equal(load_scores(cb.score_paths[epochs]).scores, expected)


def test_forgetting_counts_a_real_model_without_changing_it(tmp_path):
    """On a real module (training_step returns only the loss) the callback finds the logits itself, and training
    is bit-identical with and without the callback."""
    def run(callbacks):
        seed_everything(3)
        model = TinyModule(lr=0.5)
        dm = TinyDataModule(n=30, batch_size=6, seeded_sampler=True)
        _trainer(tmp_path, callbacks, max_epochs=4).fit(model, datamodule=dm)
        return model

    cb = ForgettingCallback(save=False)
    with_cb, without = run([cb]), run([])
    for a, b in zip(with_cb.parameters(), without.parameters()):
        assert torch.equal(a, b)
    assert cb.scores.shape == (30,)
    assert torch.isfinite(cb.scores).any()


def test_forgetting_needs_logits_clear_error(tmp_path):
    class Direct(TinyModule):
        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)  # never calls self(x)

    with pytest.raises(RuntimeError, match="logits_module='net'"):
        _trainer(tmp_path, [ForgettingCallback(save=False)], 1).fit(Direct(), datamodule=TinyDataModule())
    cb = ForgettingCallback(save=False, logits_module="net")
    _trainer(tmp_path, [cb], 1).fit(Direct(), datamodule=TinyDataModule())
    assert cb.scores.shape == (40,)


def test_tensorboard_histograms_are_written(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    cbs = [EL2NCallback(epochs=[1, 2]), ForgettingCallback()]
    _trainer(tmp_path, cbs, max_epochs=2, logger=logger).fit(TinyModule(), datamodule=TinyDataModule())
    acc = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0}).Reload()
    tags = acc.Tags()["histograms"]
    assert "datadiet/el2n" in tags and "datadiet/forgetting" in tags
    steps = [ev.step for ev in acc.Histograms("datadiet/el2n")]
    assert steps == [1, 2]
    hist = acc.Histograms("datadiet/el2n")[-1].histogram_value
    assert hist.num == 40
    assert hist.min >= 0 and hist.max <= math.sqrt(2)
    # default dirpath is inside the logger's run folder
    assert all(p.parent == cbs[0].dirpath for p in cbs[0].score_paths.values())
    assert str(cbs[0].dirpath).startswith(logger.log_dir)


def test_resume_gives_the_same_scores_as_an_uninterrupted_fit(tmp_path):
    def callbacks(root):
        return [
            EL2NCallback(epochs=[1, 3], dirpath=root / "s"),
            GraNdCallback(epochs=[2, 3], dirpath=root / "s"),
            ForgettingCallback(dirpath=root / "s", epochs=[2]),
        ]

    def dm():
        return TinyDataModule(n=33, batch_size=4, seeded_sampler=True)

    seed_everything(5)
    full_cbs = callbacks(tmp_path / "full")
    _trainer(tmp_path / "full", full_cbs, max_epochs=3).fit(TinyModule(lr=0.3), datamodule=dm())

    seed_everything(5)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=-1, every_n_epochs=1)
    part_cbs = callbacks(tmp_path / "part")
    _trainer(tmp_path / "part", part_cbs + [ckpt], max_epochs=2, enable_checkpointing=True).fit(
        TinyModule(lr=0.3), datamodule=dm()
    )
    resumed = callbacks(tmp_path / "part")
    _trainer(tmp_path / "part", resumed, max_epochs=3).fit(
        TinyModule(lr=0.3), datamodule=dm(), ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    for a, b in zip(full_cbs, resumed):
        assert sorted(a.scores_by_epoch) == sorted(b.scores_by_epoch), type(a).__name__
        for epoch in a.scores_by_epoch:
            torch.testing.assert_close(b.scores_by_epoch[epoch], a.scores_by_epoch[epoch], rtol=1e-6, atol=1e-7)
    # epochs scored before the interruption come back from the checkpoint, not from a second scoring
    assert set(resumed[0].scores_by_epoch) == {1, 3}


def test_score_dataset_hook_and_augmentation_warning(tmp_path):
    from torch.utils.data import Dataset

    class Augmented(Dataset):
        def __init__(self, base):
            self.base = base
            import torchvision.transforms.v2 as T

            self.transform = T.Compose([T.RandomHorizontalFlip()])

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            x, y = self.base[i]
            return self.transform(x), y

    class AugDM(TinyDataModule):
        def train_dataloader(self):
            return DataLoader(Augmented(self.dataset), batch_size=8, shuffle=True)

    with pytest.warns(UserWarning, match="random augmentation"):
        _trainer(tmp_path, [EL2NCallback(epochs=1, save=False)], 1).fit(TinyModule(), datamodule=AugDM())

    class CleanDM(AugDM):
        def score_dataset(self):
            return self.dataset

    snap = SnapshotEachEpoch()
    cb = EL2NCallback(epochs=1, save=False)
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*random augmentation.*")
        dm = CleanDM()
        _trainer(tmp_path, [snap, cb], 1).fit(TinyModule(), datamodule=dm)
    x, y = dm.dataset.tensors
    with torch.no_grad():
        torch.testing.assert_close(cb.scores, el2n(_model_at(snap.states[1])(x), y), rtol=1e-5, atol=1e-6)


def test_dict_batches_and_logits_module(tmp_path):
    from torch.utils.data import Dataset

    class DictData(Dataset):
        def __init__(self, base):
            self.base = base

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            x, y = self.base[i]
            return {"image": x, "label": y, "meta": i}

    class DictModule(TinyModule):
        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self.net(batch["image"]), batch["label"])

    class DictDM(TinyDataModule):
        def train_dataloader(self):
            return DataLoader(DictData(self.dataset), batch_size=8, shuffle=True, num_workers=2)

    dm = DictDM()
    snap = SnapshotEachEpoch()
    e = EL2NCallback(epochs=2, save=False, logits_module="net")
    f = ForgettingCallback(save=False, logits_module="net")
    _trainer(tmp_path, [snap, e, f], 2).fit(DictModule(), datamodule=dm)
    x, y = dm.dataset.tensors
    with torch.no_grad():
        torch.testing.assert_close(e.scores, el2n(_model_at(snap.states[2])(x), y), rtol=1e-5, atol=1e-6)
    assert f.scores.shape == (40,)


def test_bad_arguments_fail_at_construction_or_setup(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        EL2NCallback(epochs=-1)
    with pytest.raises(ValueError, match="epochs"):
        GraNdCallback(epochs=[])
    with pytest.raises(ValueError, match="chunk_size"):
        GraNdCallback(epochs=1, chunk_size=0)
    with pytest.raises(ValueError, match="epoch 0"):
        ForgettingCallback(epochs=[0])
    with pytest.raises(ValueError, match="not a submodule"):
        _trainer(tmp_path, [EL2NCallback(epochs=1, logits_module="nope")], 1).fit(
            TinyModule(), datamodule=TinyDataModule()
        )
    with pytest.warns(UserWarning, match="max_epochs"):
        _trainer(tmp_path, [EL2NCallback(epochs=5, save=False)], 1).fit(TinyModule(), datamodule=TinyDataModule())
