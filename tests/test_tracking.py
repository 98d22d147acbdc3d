"""The sample-index tracking seam (lightning_datadiet/data/tracking.py): the one private attribute of Lightning it
relies on, the tracked loader Lightning re-instantiates under DDP, and nothing the user owns changes."""

import inspect
import pathlib

import lightning
import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.loops.fit_loop import _FitLoop
from lightning.pytorch.trainer.connectors.data_connector import _get_distributed_sampler, _request_dataloader
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

import lightning_datadiet
from lightning_datadiet import DynamicPruningCallback, ForgettingCallback, TrainingDynamicsCallback
from lightning_datadiet.data import tracking as tracking_module
from lightning_datadiet.data.tracking import (
    SampleIndexTracker,
    TrackedTrainSource,
    TrackingBatchSampler,
    tracked_loader,
)

from tiny import EpochSeededSampler, TinyDataModule, TinyModule, make_data


def _trainer(tmp_path, callbacks, max_epochs=2, **kwargs):
    return Trainer(default_root_dir=tmp_path, max_epochs=max_epochs, accelerator="cpu", devices=1, callbacks=callbacks,
                   logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   **kwargs)  # fmt: skip


class RecordBatches(Callback):
    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch[0].clone())


# ------------------------------------------------------------------------------------- the private attribute


def test_lightning_still_has_the_training_data_source_the_tracking_replaces(tmp_path):
    """If this fails, a Lightning release changed `trainer.fit_loop._data_source` (the package's one private access,
    in `lightning_datadiet.data.tracking._train_source`): adapt the seam before anything else."""
    trainer = _trainer(tmp_path, [])
    source = getattr(trainer.fit_loop, "_data_source", None)
    assert source is not None, (
        f"lightning {lightning.__version__}: Trainer.fit_loop has no `_data_source`; the sample-index tracking "
        "(ForgettingCallback, TrainingDynamicsCallback, DynamicPruningCallback) cannot work. See docs/design.md."
    )
    for name in ("dataloader", "is_defined", "is_module"):
        assert callable(getattr(source, name, None)), f"lightning {lightning.__version__}: the source lost {name}()"
    for name in ("instance", "name"):
        assert hasattr(source, name), f"lightning {lightning.__version__}: the source lost `{name}`"
    assert source.name == "train_dataloader"
    # FitLoop.setup_data reads the attribute each time it requests the loader, through _request_dataloader (whose
    # context records the constructor arguments that DDP re-instantiation replays)
    setup_data = inspect.getsource(_FitLoop.setup_data)
    assert "self._data_source" in setup_data and "_request_dataloader(" in setup_data, (
        f"lightning {lightning.__version__}: FitLoop.setup_data no longer requests the loader from `_data_source`"
    )
    assert "_replace_dunder_methods" in inspect.getsource(_request_dataloader)


@pytest.mark.parametrize("how", ["datamodule", "module_hook", "loader"])
def test_a_tracked_fit_changes_nothing_the_user_owns(tmp_path, how):
    """Same training with and without the callbacks; afterwards the module, the datamodule and a loader passed to
    fit are as they were, and the Trainer has its own data source back."""

    class HookModule(TinyModule):
        def train_dataloader(self):
            return DataLoader(make_data(30), batch_size=4, shuffle=True, num_workers=1)

    def run(callbacks):
        seed_everything(1)
        model = HookModule() if how == "module_hook" else TinyModule()
        dm = TinyDataModule(n=30, batch_size=4)
        loader = DataLoader(make_data(30), batch_size=4, shuffle=True, num_workers=1, persistent_workers=True)
        before = {"model": dict(vars(model)), "dm": dict(vars(dm)), "loader": dict(vars(loader))}
        trainer = _trainer(tmp_path, callbacks)
        source = trainer.fit_loop._data_source
        kwargs = {"datamodule": dm} if how == "datamodule" else {"train_dataloaders": loader} if how == "loader" else {}
        trainer.fit(model, **kwargs)
        assert trainer.fit_loop._data_source is source  # restored at teardown
        changes = {}
        for name, obj in (("model", model), ("dm", dm), ("loader", loader)):
            now = vars(obj)
            changes[name] = sorted(set(now) ^ set(before[name])), sorted(
                k for k in before[name] if k in now and now[k] is not before[name][k] and k not in ("_trainer", "trainer")
            )
        assert "train_dataloader" not in vars(model) and "train_dataloader" not in vars(dm)
        assert type(loader.batch_sampler) is BatchSampler and loader.batch_sampler is before["loader"]["batch_sampler"]
        return model, trainer, changes

    record = RecordBatches()
    cbs = [ForgettingCallback(save=False), TrainingDynamicsCallback(save=False), record]
    tracked, trainer, tracked_changes = run(cbs)
    assert isinstance(trainer.train_dataloader.batch_sampler, TrackingBatchSampler)
    plain_record = RecordBatches()
    plain, _, plain_changes = run([plain_record])
    assert tracked_changes == plain_changes  # Lightning's own bookkeeping (e.g. `_hparams`), nothing more
    assert not plain_changes["loader"][1] and not tracked_changes["dm"][1]
    for a, b in zip(tracked.parameters(), plain.parameters()):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(record.batches, plain_record.batches))
    assert cbs[0].scores.shape == (30,) and cbs[1].scores["aum"].shape == (30,)


def test_a_failed_fit_gives_the_trainer_its_data_source_back(tmp_path):
    class Fails(TinyModule):
        def training_step(self, batch, batch_idx):
            raise RuntimeError("boom")

    trainer = _trainer(tmp_path, [ForgettingCallback(save=False), DynamicPruningCallback()])
    source = trainer.fit_loop._data_source
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(Fails(), datamodule=TinyDataModule())
    assert trainer.fit_loop._data_source is source


def test_overfit_batches_samples_in_order_as_lightning_does(tmp_path):
    def batches(callbacks):
        record = RecordBatches()
        seed_everything(2)
        _trainer(tmp_path, [*callbacks, record], max_epochs=1, overfit_batches=3).fit(
            TinyModule(), datamodule=TinyDataModule(n=24, batch_size=4)
        )
        return record.batches

    with pytest.warns(UserWarning, match="overfit"):
        tracked = batches([ForgettingCallback(save=False)])
    plain = batches([])
    assert len(tracked) == len(plain) == 3 and all(torch.equal(a, b) for a, b in zip(tracked, plain))
    assert torch.equal(tracked[0], make_data(24).tensors[0][:4])  # the first items, in order


# ---------------------------------------------------------------- DDP re-instantiation (Lightning's own code)


class _Source:
    def __init__(self, make):
        self.make = make

    def dataloader(self):
        return self.make()


def _samplers():
    n = 21
    return {
        "shuffle": lambda: {"shuffle": True},
        "sequential": lambda: {"shuffle": False},
        "custom": lambda: {"sampler": EpochSeededSampler(n, seed=4)},
        "user_distributed": lambda: {"sampler": DistributedSampler(make_data(n), num_replicas=2, rank=1, seed=9)},
    }


@pytest.mark.parametrize("kind", list(_samplers()))
def test_ddp_reinstantiation_keeps_the_trackers_and_gives_the_sampler_lightning_would(kind):
    """Lightning requests the loader inside `_replace_dunder_methods` and, under DDP, re-instantiates it with a
    distributed sampler chosen from `loader.sampler`. The tracked loader yields exactly the batches Lightning's
    processing of the user's loader yields, on each rank, and reports them to its trackers."""
    dataset = make_data(21)

    def user_loader():
        return DataLoader(dataset, batch_size=4, drop_last=False, **_samplers()[kind]())

    trackers = [SampleIndexTracker("A"), SampleIndexTracker("B")]
    for rank in (0, 1):
        user = _request_dataloader(_Source(user_loader))
        tracked = _request_dataloader(_Source(lambda: tracked_loader(user_loader(), trackers)))

        def process(loader, rank=rank):  # what `_prepare_dataloader` does for a training loader under 2-process DDP
            if isinstance(loader.sampler, DistributedSampler):
                return loader
            sampler = _get_distributed_sampler(loader, shuffle=True, overfit_batches=0, num_replicas=2, rank=rank)
            return _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)

        expected, got = process(user), process(tracked)
        assert isinstance(got.batch_sampler, TrackingBatchSampler) and got.batch_sampler.trackers is trackers
        for epoch in (0, 1):
            for loader in (expected, got):
                for s in {id(loader.sampler): loader.sampler, id(loader.batch_sampler.sampler): loader.batch_sampler.sampler}.values():
                    if hasattr(s, "set_epoch"):
                        s.set_epoch(epoch)
            want = list(expected.batch_sampler)
            assert list(got.batch_sampler) == want, (kind, rank, epoch)
            assert [t.pop().tolist() for _ in want for t in trackers][::2] == want
            assert all(len(t) == 0 for t in trackers)


# ------------------------------------------------------------------------------------ DataLoader subclasses


def test_a_loader_subclass_is_rebuilt_with_its_own_settings_or_refused_clearly():
    dataset = make_data(10)

    class Snapshotting(DataLoader):  # like torchdata's StatefulDataLoader: an extra keyword, kept as an attribute
        def __init__(self, *args, snapshot_every_n_steps=1, **kwargs):
            super().__init__(*args, **kwargs)
            self.snapshot_every_n_steps = snapshot_every_n_steps

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    tracker = SampleIndexTracker("ForgettingCallback")
    rebuilt = tracked_loader(Snapshotting(dataset, batch_size=3, snapshot_every_n_steps=7), [tracker])
    assert type(rebuilt) is Snapshotting and rebuilt.snapshot_every_n_steps == 7
    assert tracker.loader_stateful  # Lightning restores such a loader's position itself
    assert [len(x) for x, _ in rebuilt] == [3, 3, 3, 1] and len(tracker) == 4

    class FixedBatch(DataLoader):
        def __init__(self, dataset):
            super().__init__(dataset, batch_size=4)

    with pytest.raises(TypeError, match=r"ForgettingCallback tracks the training batches.*FixedBatch.*Return a torch"):
        tracked_loader(FixedBatch(dataset), [SampleIndexTracker("ForgettingCallback")])

    class Swallows(DataLoader):
        def __init__(self, dataset, **kwargs):
            super().__init__(dataset, batch_size=2)

    with pytest.raises(TypeError, match="did not pass `dataset` and `batch_sampler` on"):
        tracked_loader(Swallows(dataset, batch_size=2), [SampleIndexTracker("ForgettingCallback")])


def test_the_tracked_source_delegates_to_lightnings_source(tmp_path):
    trainer = _trainer(tmp_path, [])
    original = trainer.fit_loop._data_source
    dm = TinyDataModule()
    original.instance = dm
    source = TrackedTrainSource(original, trainer)
    assert source.name == "train_dataloader" and source.instance is dm and source.is_module() and source.is_defined()
    source.instance = None  # Trainer.fit attaches the data on the source it finds
    assert original.instance is None


def test_no_guard_bypass_or_class_built_at_run_time_in_the_package():
    root = pathlib.Path(lightning_datadiet.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "object.__setattr__" not in text, path
        assert "torch.distributed" not in text and "import torch.distributed" not in text, path
    tracking = (root / "data" / "tracking.py").read_text()
    assert 'type("' not in tracking and "setattr(" not in tracking
    # the one private access is in `_train_source`: no other function or class of the module reaches the fit loop
    for name, obj in vars(tracking_module).items():
        if inspect.isfunction(obj) or inspect.isclass(obj):
            if obj.__module__ == tracking_module.__name__ and name != "_train_source":
                assert "fit_loop" not in inspect.getsource(obj), name
    assert "fit_loop._data_source" in inspect.getsource(tracking_module._train_source).replace("loop = trainer.fit_loop\n    source = getattr(loop, \"_data_source\"", "fit_loop._data_source")
    assert "trackers" in inspect.signature(TrackingBatchSampler).parameters


def test_the_scoring_pass_uses_the_training_batch_size_of_a_tracked_loader(tmp_path):
    """The tracked loader is built with `batch_sampler=` (its `batch_size` attribute is None): the EL2N pass still
    scores in batches of the training loader's size."""
    from lightning_datadiet import EL2NCallback

    class Recording(EL2NCallback):
        sizes: list = []

        def score_batch(self, module, inputs, targets):
            self.sizes.append(int(inputs.shape[0]))
            return super().score_batch(module, inputs, targets)

    el2n = Recording(epochs=[1], save=False)
    _trainer(tmp_path, [ForgettingCallback(save=False), el2n], max_epochs=1).fit(
        TinyModule(), datamodule=TinyDataModule(n=22, batch_size=5)
    )
    assert Recording.sizes == [5, 5, 5, 5, 2]
