"""PrunedDataModule: the real loaders yield exactly the kept examples; everything else passes through."""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from lightning_datadiet import selection
from lightning_datadiet.data.pruned import PrunedDataModule, subset_dataloader
from lightning_datadiet.store import ScoreFileError, save_scores

N, NUM_CLASSES = 40, 3


def tagged_collate(items):
    x, y, i = (torch.stack(t) for t in zip(*items))
    return {"x": x, "y": y, "index": i, "collated_by": "tagged_collate"}


class TinyDataModule(LightningDataModule):
    """40 training examples (x, y, index); 12 validation and 8 test examples."""

    def __init__(
        self, n: int = N, batch_size: int = 4, num_workers: int = 0, shuffle: bool = True, seed: int = 0, persistent: bool = False
    ):
        super().__init__()
        self.save_hyperparameters()
        self.num_classes = NUM_CLASSES
        self.calls: list[str] = []

    def prepare_data(self):
        self.calls.append("prepare_data")

    def setup(self, stage: str):
        self.calls.append(f"setup:{stage}")
        g = torch.Generator().manual_seed(self.hparams.seed)
        n = self.hparams.n
        self.train_set = TensorDataset(torch.randn(n, 2, generator=g), torch.arange(n) % NUM_CLASSES, torch.arange(n))
        self.val_set = TensorDataset(torch.randn(12, 2, generator=g), torch.arange(12) % NUM_CLASSES, torch.arange(12))
        self.test_set = TensorDataset(torch.randn(8, 2, generator=g), torch.arange(8) % NUM_CLASSES, torch.arange(8))

    def train_dataloader(self):
        workers = self.hparams.num_workers
        return DataLoader(
            self.train_set,
            batch_size=self.hparams.batch_size,
            shuffle=self.hparams.shuffle,
            num_workers=workers,
            collate_fn=tagged_collate,
            persistent_workers=self.hparams.persistent,
        )

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=5, collate_fn=tagged_collate)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=3, collate_fn=tagged_collate)

    def state_dict(self):
        return {"tiny": 1}

    def load_state_dict(self, state_dict):
        self.loaded_state = state_dict


class RecordingModel(LightningModule):
    """Records the dataset indices of its training and validation batches."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, NUM_CLASSES)
        self.train_seen: list[list[int]] = [[]]
        self.val_seen: list[int] = []

    def on_train_epoch_start(self):
        if self.train_seen[-1]:
            self.train_seen.append([])

    def training_step(self, batch, batch_idx):
        assert batch["collated_by"] == "tagged_collate"
        self.train_seen[-1] += batch["index"].tolist()
        return torch.nn.functional.cross_entropy(self.layer(batch["x"]), batch["y"])

    def validation_step(self, batch, batch_idx):
        self.val_seen += batch["index"].tolist()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def scores_vector(seed: int = 1, n: int = N) -> torch.Tensor:
    s = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    s[::7] = 0.5  # some ties
    return s


def fitted(dm: LightningDataModule) -> LightningDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


def trainer(tmp_path, **kwargs):
    opts = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    opts.update(kwargs)
    return Trainer(**opts)


# ---------------------------------------------------------------------------------------------- the selection


def test_kept_indices_are_the_rule_applied_to_the_scores():
    s = scores_vector()
    pdm = PrunedDataModule(fitted(TinyDataModule()), s, keep_fraction=0.5)
    assert pdm.kept_indices.tolist() == selection.highest(s, 20).tolist()
    assert pdm.keep_count == 20 and pdm.num_samples == N
    assert pdm.kept_indices.dtype == torch.long
    assert pdm.kept_indices.tolist() == sorted(pdm.kept_indices.tolist())
    for rule, kwargs in [("lowest", {}), ("window", {"offset": 0.25}), ("random", {"seed": 3}), ("coverage", {"beta": 0.1})]:
        p = PrunedDataModule(fitted(TinyDataModule()), s, 0.3, rule, **kwargs)
        assert p.kept_indices.tolist() == selection.select(s, 12, rule, **kwargs).tolist(), rule


def test_class_balanced_quotas():
    pdm = PrunedDataModule(fitted(TinyDataModule()), scores_vector(), 0.35, class_balanced=True)
    labels = torch.arange(N) % NUM_CLASSES
    assert pdm.keep_count == 14
    assert torch.bincount(labels[pdm.kept_indices]).tolist() == selection.class_quotas(labels, 14).tolist() == [5, 5, 4]


def test_random_needs_no_scores():
    pdm = PrunedDataModule(fitted(TinyDataModule()), None, 0.25, "random", seed=5)
    assert pdm.kept_indices.tolist() == selection.random(N, 10, seed=5).tolist()


def test_score_files_single_and_averaged(tmp_path):
    labels = torch.arange(N) % NUM_CLASSES
    a, b = scores_vector(1), scores_vector(2)
    fa = save_scores(tmp_path / "a.pt", a, method="el2n", epoch=20, seed=0, labels=labels)
    fb = save_scores(tmp_path / "b.pt", b, method="el2n", epoch=20, seed=1, labels=labels)
    pdm = PrunedDataModule(fitted(TinyDataModule()), str(fa), 0.5)
    assert pdm.kept_indices.tolist() == selection.highest(a, 20).tolist()
    mean = PrunedDataModule(fitted(TinyDataModule()), [str(fa), str(fb)], 0.5)
    assert mean.kept_indices.tolist() == selection.highest((a + b) / 2, 20).tolist()


# ------------------------------------------------------------------------------------------- the real loaders


def test_shuffled_two_worker_loader_yields_exactly_the_kept_items_once_per_epoch():
    dm = fitted(TinyDataModule(batch_size=3, num_workers=2, shuffle=True))
    pdm = PrunedDataModule(dm, scores_vector(), keep_fraction=0.45)
    loader = pdm.train_dataloader()
    original = dm.train_dataloader()
    for attr in ("batch_size", "num_workers", "collate_fn", "pin_memory", "drop_last", "persistent_workers", "prefetch_factor"):
        assert getattr(loader, attr) == getattr(original, attr), attr
    kept = pdm.kept_indices.tolist()
    assert len(kept) == 18
    orders = []
    for _ in range(2):
        seen = [i for batch in loader for i in batch["index"].tolist()]
        assert sorted(seen) == kept  # exactly the kept items, each once
        orders.append(seen)
    assert orders[0] != kept or orders[1] != kept  # shuffled
    x_seen = torch.cat([batch["x"] for batch in loader])
    assert x_seen.shape == (18, 2)
    persistent = PrunedDataModule(fitted(TinyDataModule(num_workers=2, persistent=True)), scores_vector(), 0.45)
    assert persistent.train_dataloader().persistent_workers  # (not iterated: see the report on worker shutdown)


def test_sequential_loader_keeps_index_order_and_drop_last():
    dm = fitted(TinyDataModule(batch_size=4, shuffle=False))
    pdm = PrunedDataModule(dm, scores_vector(), keep_fraction=0.5, selection="lowest")
    seen = [i for batch in pdm.train_dataloader() for i in batch["index"].tolist()]
    assert seen == pdm.kept_indices.tolist()

    class DropLast(TinyDataModule):
        def train_dataloader(self):
            return DataLoader(self.train_set, batch_size=6, drop_last=True)

    pruned = PrunedDataModule(fitted(DropLast()), scores_vector(), keep_fraction=0.5)
    assert [len(b[0]) for b in pruned.train_dataloader()] == [6, 6, 6]  # 20 kept: the last 2 dropped


def test_custom_sampler_is_a_clear_error():
    class Weighted(TinyDataModule):
        def train_dataloader(self):
            return DataLoader(self.train_set, sampler=WeightedRandomSampler(torch.ones(N), N))

    pdm = PrunedDataModule(fitted(Weighted()), scores_vector(), 0.5)
    with pytest.raises(TypeError, match="custom sampler.*shuffle=True/False"):
        pdm.train_dataloader()

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(range(3))

    with pytest.raises(TypeError, match="map-style"):
        subset_dataloader(DataLoader(Stream()), [0])


def test_everything_else_passes_through():
    dm = TinyDataModule()
    pdm = PrunedDataModule(dm, scores_vector(), 0.5)
    pdm.prepare_data()
    pdm.setup("fit")
    assert dm.calls == ["prepare_data", "setup:fit"]
    assert pdm.val_dataloader().dataset is dm.val_set
    assert pdm.test_dataloader().dataset is dm.test_set
    assert pdm.hparams == dm.hparams
    # what Lightning logs: the wrapped module's hyperparameters plus the pruning settings (issue 9 item 9)
    assert pdm.hparams_initial == {**dm.hparams_initial, "datadiet_pruning": pdm.pruning_settings()}
    assert pdm.num_classes == NUM_CLASSES  # any other attribute is the wrapped module's
    assert pdm.train_set is dm.train_set
    # Lightning sees exactly the hooks the wrapped module overrides
    assert is_overridden("val_dataloader", pdm) and is_overridden("setup", pdm)
    assert not is_overridden("predict_dataloader", pdm)
    assert not is_overridden("transfer_batch_to_device", pdm)
    with pytest.raises(AttributeError, match="no_such_thing"):
        pdm.no_such_thing  # noqa: B018

    class Moves(TinyDataModule):
        def on_before_batch_transfer(self, batch, dataloader_idx):
            return {**batch, "moved_by": "wrapped"}

    moves = Moves()
    pruned = PrunedDataModule(moves, scores_vector(), 0.5)
    assert is_overridden("on_before_batch_transfer", pruned)
    assert pruned.on_before_batch_transfer({"x": 1}, 0) == {"x": 1, "moved_by": "wrapped"}


def test_fit_trains_on_the_subset_and_validates_on_the_wrapped_data(tmp_path):
    pdm = PrunedDataModule(TinyDataModule(batch_size=4), scores_vector(), keep_fraction=0.5)
    model = RecordingModel()
    trainer(tmp_path, max_epochs=2).fit(model, datamodule=pdm)
    assert len(model.train_seen) == 2
    for epoch in model.train_seen:
        assert sorted(epoch) == pdm.kept_indices.tolist()
    assert sorted(set(model.val_seen)) == list(range(12))  # the full validation set
    assert pdm.datamodule.trainer is pdm.trainer is not None


# ------------------------------------------------------------------------------------------ state and resume


def test_state_dict_round_trip_with_weights_only(tmp_path):
    pdm = PrunedDataModule(fitted(TinyDataModule()), scores_vector(), 0.5)
    kept = pdm.kept_indices
    torch.save(pdm.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["datamodule"] == {"tiny": 1} and state["num_samples"] == N

    other = PrunedDataModule(fitted(TinyDataModule()), scores_vector(seed=9), 0.5)
    other.load_state_dict(state)
    assert other.datamodule.loaded_state == {"tiny": 1}
    with pytest.warns(UserWarning, match="different subset"):
        assert other.kept_indices.tolist() == kept.tolist()


def test_resume_keeps_the_subset_even_if_the_scores_changed(tmp_path):
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first = PrunedDataModule(TinyDataModule(), scores_vector(seed=1), keep_fraction=0.5)
    trainer(tmp_path, max_epochs=1, enable_checkpointing=True, callbacks=[ckpt]).fit(RecordingModel(), datamodule=first)
    kept = first.kept_indices.tolist()

    resumed = PrunedDataModule(TinyDataModule(), scores_vector(seed=2), keep_fraction=0.5)  # the scores changed
    assert resumed.datamodule is not first.datamodule
    model = RecordingModel()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(tmp_path, max_epochs=2).fit(model, datamodule=resumed, ckpt_path=str(tmp_path / "last.ckpt"))
    assert any("different subset" in str(w.message) for w in caught)
    assert len(model.train_seen) == 1 and sorted(model.train_seen[0]) == kept  # epoch 2 on the same subset
    assert resumed.kept_indices.tolist() == kept


# -------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.01, 2])
def test_keep_fraction_outside_unit_interval(bad):
    with pytest.raises(ValueError, match=r"`keep_fraction` must lie in \(0, 1\]"):
        PrunedDataModule(TinyDataModule(), scores_vector(), bad)


def test_bad_arguments_are_clear_errors(tmp_path):
    dm = TinyDataModule()
    with pytest.raises(ValueError, match="Unknown selection 'top'.*'highest'"):
        PrunedDataModule(dm, scores_vector(), 0.5, "top")
    with pytest.raises(ValueError, match="NaN.*nan_to_num"):
        PrunedDataModule(dm, torch.tensor([0.1, float("nan")] * 20), 0.5)
    with pytest.raises(ValueError, match="allow_infinite=True"):
        PrunedDataModule(dm, torch.tensor([0.1, float("inf")] * 20), 0.5, allow_infinite=False)
    with pytest.raises(ValueError, match="needs `offset`"):
        PrunedDataModule(dm, scores_vector(), 0.5, "window")
    with pytest.raises(ValueError, match="only applies to selection='window'"):
        PrunedDataModule(dm, scores_vector(), 0.5, offset=3)
    with pytest.raises(ValueError, match="`scores` is required"):
        PrunedDataModule(dm, None, 0.5)
    with pytest.raises(TypeError, match="LightningDataModule"):
        PrunedDataModule(DataLoader(range(3)), scores_vector(), 0.5)  # type: ignore[arg-type]


def test_wrong_length_scores():
    pdm = PrunedDataModule(fitted(TinyDataModule()), torch.rand(N + 1), 0.5)
    with pytest.raises(ValueError, match="41 values but the training set of TinyDataModule has 40.*recompute"):
        pdm.train_dataloader()


def test_impossible_class_quota():
    # 10 examples in classes of 4, 3, 3: quotas of 5 are [2, 2, 1] and per-class offsets of 5 are [2, 2, 1]: class 1
    # would need ranks [2, 4) of its 3
    pdm = PrunedDataModule(fitted(TinyDataModule(n=10)), torch.rand(10), 0.5, "window", offset=0.5, class_balanced=True)
    with pytest.raises(ValueError, match="cannot fill its quota.*lower `offset`"):
        pdm.train_dataloader()


def test_score_file_from_another_dataset(tmp_path):
    other_labels = (torch.arange(N) + 1) % NUM_CLASSES
    path = save_scores(tmp_path / "other.pt", scores_vector(), method="el2n", labels=other_labels)
    pdm = PrunedDataModule(fitted(TinyDataModule()), str(path), 0.5)
    with pytest.raises(ScoreFileError, match="another training set.*check_fingerprint=False"):
        pdm.train_dataloader()
    with pytest.raises(ValueError):  # ScoreFileError is a ValueError
        pdm.kept_indices  # noqa: B018
    ok = PrunedDataModule(fitted(TinyDataModule()), str(path), 0.5, check_fingerprint=False)
    assert ok.keep_count == 20


def test_ranks_disagreeing_is_an_error():
    pdm = PrunedDataModule(fitted(TinyDataModule()), scores_vector(), 0.5)

    class Strategy:
        def broadcast(self, obj, src=0):
            return "digest of rank 0"

        def reduce_boolean_decision(self, decision, all=True):
            return decision

    class FakeTrainer:
        world_size, strategy = 2, Strategy()

    pdm.__dict__["_trainer"] = FakeTrainer()
    with pytest.raises(RuntimeError, match="ranks selected different training subsets"):
        pdm.train_dataloader()


# ---------------------------------------------------------------------------------------------- LightningCLI


def test_lightning_cli_yaml(tmp_path):
    path = save_scores(tmp_path / "el2n.pt", scores_vector(), method="el2n", labels=torch.arange(N) % NUM_CLASSES)
    config = {
        "trainer": {"max_epochs": 1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False},
        "model": {"class_path": f"{__name__}.RecordingModel"},
        "data": {
            "class_path": "lightning_datadiet.data.pruned.PrunedDataModule",
            "init_args": {
                "datamodule": {"class_path": f"{__name__}.TinyDataModule", "init_args": {"batch_size": 5}},
                "scores": str(path),
                "keep_fraction": 0.5,
                "selection": "window",
                "offset": 0.25,
            },
        },
    }
    (tmp_path / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    cli = LightningCLI(run=False, args=["--config", str(tmp_path / "config.yaml")], save_config_callback=None)
    pdm = cli.datamodule
    assert isinstance(pdm, PrunedDataModule) and isinstance(pdm.datamodule, TinyDataModule)
    assert pdm.datamodule.hparams.batch_size == 5 and pdm.selection == "window" and pdm.offset == 0.25
    cli.trainer.fit(cli.model, datamodule=pdm)
    assert sorted(cli.model.train_seen[0]) == selection.window(scores_vector(), 20, 10).tolist()


# ------------------------------------------------------------------------------------------------------- DDP

DDP_SCRIPT = """
import sys, torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset
from lightning_datadiet.data.pruned import PrunedDataModule

out = sys.argv[1]

class DM(LightningDataModule):
    def setup(self, stage):
        self.train_set = TensorDataset(torch.randn(50, 2), torch.arange(50) % 3, torch.arange(50))
    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=4, shuffle=True)

class Model(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 3)
        self.seen = []
    def training_step(self, batch, batch_idx):
        self.seen += batch[2].tolist()
        return torch.nn.functional.cross_entropy(self.layer(batch[0]), batch[1])
    def on_train_end(self):
        torch.save({"seen": self.seen, "kept": self.trainer.datamodule.kept_indices,
                    "world_size": self.trainer.world_size}, f"{out}/rank{self.global_rank}.pt")
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

scores = torch.linspace(0, 1, 50).flip(0)  # index i has rank 49 - i
pdm = PrunedDataModule(DM(), scores, keep_fraction=0.42, selection="highest")  # 21 kept: odd, so padded
Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=out).fit(Model(), datamodule=pdm)
"""


@pytest.mark.slow
def test_ddp_two_processes_same_subset_and_covered(tmp_path):
    script = tmp_path / "ddp_script.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=240, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    expected = list(range(21))  # the 21 highest scores are indices 0..20
    for r in ranks:
        assert r["world_size"] == 2
        assert r["kept"].tolist() == expected  # same subset on every rank
        assert set(r["seen"]) <= set(expected)
        assert len(r["seen"]) == 11  # ceil(21 / 2): the DistributedSampler pads one rank by one index
    assert set(ranks[0]["seen"]) | set(ranks[1]["seen"]) == set(expected)  # the ranks cover the subset
    assert len(set(ranks[0]["seen"]) & set(ranks[1]["seen"])) <= 1  # split, not duplicated (padding aside)


def test_docs_rule_outputs_are_what_the_code_prints():
    """Every `expr  # [values]` line of the rules example in docs/selection.md evaluates to the values shown."""
    text = (Path(__file__).parents[1] / "docs" / "selection.md").read_text()
    block = text.split("The same on a real vector", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    checked = 0
    for line in block.strip().splitlines():
        code, _, comment = line.partition("#")
        if comment.strip().startswith("["):
            expected = ast.literal_eval(comment.strip().split("]")[0] + "]")
            assert eval(code, namespace) == expected, line
            checked += 1
        else:
            exec(line, namespace)
    assert checked == 8


def test_tie_break_option_reaches_the_selection():
    from lightning.pytorch import LightningDataModule
    from torch.utils.data import DataLoader, TensorDataset

    import lightning_datadiet.selection as S

    class DM(LightningDataModule):
        def __init__(self):
            super().__init__()
            self.ds = TensorDataset(torch.randn(100, 2), torch.arange(100) // 10)

        def train_dataloader(self):
            return DataLoader(self.ds, batch_size=10)

    scores = torch.full((100,), float("inf"))
    pdm = PrunedDataModule(DM(), scores, 0.1, tie_break="random", seed=2)
    assert torch.equal(pdm.kept_indices, S.select(scores, 10, "highest", tie_break="random", seed=2))
    assert pdm.state_dict()["tie_break"] == "random"
    assert PrunedDataModule(DM(), scores, 0.1).kept_indices.tolist() == list(range(90, 100))
    with pytest.raises(ValueError, match="tie_break"):
        PrunedDataModule(DM(), scores, 0.1, tie_break="x")


def test_lightning_cli_yaml_with_a_list_of_score_files_averages_them(tmp_path):
    """Issue 9 item 4: jsonargparse used to turn the YAML list into one string ('no such score file')."""
    labels = torch.arange(N) % NUM_CLASSES
    a = save_scores(tmp_path / "el2n_seed0.scores", scores_vector(), method="el2n", labels=labels)
    b = save_scores(tmp_path / "el2n_seed1.scores", scores_vector().flip(0), method="el2n", labels=labels)
    config = {
        "trainer": {"max_epochs": 1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False},
        "model": {"class_path": f"{__name__}.RecordingModel"},
        "data": {
            "class_path": "lightning_datadiet.PrunedDataModule",
            "init_args": {
                "datamodule": {"class_path": f"{__name__}.TinyDataModule"},
                "scores": [str(a), str(b)],
                "keep_fraction": 0.5,
            },
        },
    }
    (tmp_path / "config.yaml").write_text(json.dumps(config))
    cli = LightningCLI(run=False, args=["--config", str(tmp_path / "config.yaml")], save_config_callback=None,
                       subclass_mode_data=True)
    pdm = cli.datamodule
    assert isinstance(pdm, PrunedDataModule) and pdm.score_source.startswith("mean of 2 files")
    pdm.setup("fit")
    mean = (scores_vector() + scores_vector().flip(0)) / 2
    assert pdm.kept_indices.tolist() == selection.highest(mean, 20).tolist()


def test_setup_logs_what_was_kept_and_the_settings_reach_the_logger(tmp_path, caplog):
    """Issue 9 item 9: the rule, keep count, fraction and class histogram are logged; the settings are hparams."""
    from lightning.pytorch.loggers import CSVLogger

    dm = TinyDataModule()
    pdm = PrunedDataModule(dm, scores_vector(), 0.5, "highest")
    logger = CSVLogger(tmp_path)
    trainer = Trainer(max_epochs=1, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        trainer.fit(RecordingModel(), datamodule=pdm)
    text = caplog.text
    assert "kept 20 of 40 training examples (50.0%" in text and "rule highest" in text
    kept_labels = torch.bincount(dm.train_set.tensors[1][pdm.kept_indices], minlength=NUM_CLASSES).tolist()
    all_labels = torch.bincount(dm.train_set.tensors[1], minlength=NUM_CLASSES).tolist()
    assert "kept per class (class: kept/all): " + ", ".join(
        f"{c}: {k}/{f}" for c, (k, f) in enumerate(zip(kept_labels, all_labels))
    ) in text
    hparams = (Path(logger.log_dir) / "hparams.yaml").read_text()
    assert "datadiet_pruning" in hparams and "keep_fraction: 0.5" in hparams and "selection: highest" in hparams
