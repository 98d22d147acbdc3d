"""The study on a user's own LightningModule and LightningDataModule, named by class path the LightningCLI way."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_datadiet import load_scores
from lightning_datadiet.analysis import NoisyLabelDataModule
from lightning_datadiet.cli import main
from lightning_datadiet.data.pruned import PrunedDataModule
from lightning_datadiet.data.valsplit import ValidationSplitDataModule, stratified_split
from lightning_datadiet.pipeline import PipelineConfig, PipelineError, plan_retraining, window_offset
from lightning_datadiet.pipeline.build import accuracy
from lightning_datadiet.selection import keep_count

# A user's file: a module with no validation/test step and no logged metric, and a DataModule without a
# validation loader (the study carves one) whose items are plain (x, y) tuples. Nothing datadiet-specific.
USER_FILE = '''
import torch
from torch import nn
import lightning.pytorch as pl
from torch.utils.data import DataLoader, TensorDataset


class TinyNet(pl.LightningModule):
    def __init__(self, hidden: int = 32, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


class BlobData(pl.LightningDataModule):
    def __init__(self, n: int = 120, batch_size: int = 16, seed: int = 0):
        super().__init__()
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def setup(self, stage=None):
        g = torch.Generator().manual_seed(self.seed)
        centers = torch.randn(3, 8, generator=g) * 2
        def make(n):
            y = torch.arange(n) % 3
            return TensorDataset(centers[y] + torch.randn(n, 8, generator=g), y)
        self.train_set, self.test_set = make(self.n), make(60)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def test_dataloader(self):
        return DataLoader(self.test_set, batch_size=32)


class CountFits(pl.Callback):
    """Given as --trainer.callbacks: one line per fit in a file."""

    def __init__(self, path: str):
        self.path = path

    def on_fit_start(self, trainer, pl_module):
        with open(self.path, "a") as f:
            f.write(f"{trainer.max_epochs}\\n")
'''


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "user_study_mod.py").write_text(textwrap.dedent(USER_FILE))
    monkeypatch.chdir(tmp_path)  # `datadiet` imports class paths from the current folder, as `python -m` does
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _options(out: Path) -> list[str]:
    return [
        "--output_dir", str(out),
        "--model", "user_study_mod.TinyNet", "--model.hidden", "16",
        "--data", "user_study_mod.BlobData", "--data.n", "120",
        "--epochs", "2", "--el2n_epoch", "1", "--num_runs", "2",
        "--keep_fractions", "[0.5]", "--seeds", "[0]", "--label_noise", "[0.0,0.2]",
        "--rules", "[highest,window,coverage]", "--tensorboard", "false",
    ]  # fmt: skip


@pytest.mark.slow
def test_score_train_report_on_a_users_own_module_and_data(user_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = user_dir / "out"
    fits = user_dir / "fits.txt"
    options = [*_options(out), "--trainer.callbacks+=user_study_mod.CountFits", f"--trainer.callbacks.path={fits}"]
    for stage in ("score", "train", "report"):
        assert main([stage, *options]) == 0, capsys.readouterr().err
    rows = list(csv.DictReader((out / "results.csv").open()))
    seen = {(r["setting"], r["method"], r["rule"]) for r in rows}
    for setting in ("clean", "noise20-uniform"):
        assert (setting, "full", "full") in seen and (setting, "random", "random") in seen
        for method in ("el2n", "grand", "forgetting"):
            for rule in ("highest", "window(skip=0.2)", "coverage(beta=0.1)"):
                assert (setting, method, rule) in seen
    for r in rows:
        assert 0.0 <= float(r["test_acc"]) <= 1.0
        assert r["val_acc"] != ""  # a validation split was carved from the training set (the DataModule has none)
        assert int(r["kept"]) == (108 if r["method"] == "full" else keep_count(108, 0.5))  # 120 - 10% validation
    # the --trainer callback reached every fit: 2 settings x 2 scoring runs, then 2 x (full + random + 9) retrainings
    assert len(fits.read_text().split()) == 4 + 2 * 11
    summary = (out / "summary.txt").read_text()
    assert "model TinyNet" in summary and "data BlobData" in summary
    # the scores of the noisy setting were computed with the noisy labels (the files' label fingerprints match the
    # retraining data: PrunedDataModule refuses a file of other labels), and the top EL2N scores catch the noise
    noise = json.loads((out / "noise_detection.json").read_text())
    el2n = next(r for r in noise if r["method"] == "el2n")
    assert el2n["precision"] > 2 * el2n["base_rate"]
    dumped = (out / "config.yaml").read_text()
    assert "class_path: user_study_mod.TinyNet" in dumped and "hidden: 16" in dumped


@pytest.mark.slow
def test_a_yaml_config_with_class_paths(user_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = user_dir / "study.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            output_dir: {user_dir / "yaml_out"}
            model:
              class_path: user_study_mod.TinyNet
              init_args: {{hidden: 8, lr: 0.05}}
            data:
              class_path: user_study_mod.BlobData
              init_args: {{n: 90}}
            trainer:
              deterministic: true
            epochs: 2
            el2n_epoch: 1
            methods: [el2n]
            num_runs: 1
            keep_fractions: [0.5]
            rules: [highest]
            seeds: [0]
            label_noise: [0.0]
            select_on_val: false
            tensorboard: false
            """
        )
    )
    assert main(["demo", "--config", str(config)]) == 0, capsys.readouterr().err
    resolved = json.loads((user_dir / "yaml_out" / "config.resolved.json").read_text())
    assert resolved["model"] == {"class_path": "user_study_mod.TinyNet", "init_args": {"hidden": 8, "lr": 0.05}}
    assert resolved["data"]["init_args"] == {"n": 90, "batch_size": 16, "seed": 0}
    assert resolved["trainer"] == {"deterministic": True}
    rows = list(csv.DictReader((user_dir / "yaml_out" / "results.csv").open()))
    assert {r["method"] for r in rows} == {"full", "random", "el2n"} and all(r["val_acc"] == "" for r in rows)
    scores = next((user_dir / "yaml_out" / "scores").iterdir()) / "el2n_mean1runs.scores"
    assert load_scores(scores).num_samples == 90  # no validation split without select_on_val


def _keys(**overrides: object) -> list[str]:
    cfg = PipelineConfig(
        output_dir="unused",
        model={"class_path": "user_study_mod.TinyNet", "init_args": overrides.pop("model_args", {})},
        data={"class_path": "user_study_mod.BlobData", "init_args": overrides.pop("data_args", {})},
        methods=["el2n"],
        rules=["highest"],
        label_noise=[0.0],
        **overrides,
    ).validate()
    return [r.key for r in plan_retraining(cfg)]


def test_run_keys_cover_the_data_the_model_and_the_trainer(user_dir: Path) -> None:
    base = _keys()
    assert _keys() == base  # nothing changed: the same runs
    assert not set(_keys(data_args={"seed": 1})) & set(base)  # other items of the same shape and labels
    assert not set(_keys(model_args={"hidden": 8})) & set(base)
    assert not set(_keys(trainer={"gradient_clip_val": 1.0})) & set(base)
    assert not set(_keys(data_args={"batch_size": 8})) & set(base)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 4}, "--width sets the `width` argument of the model class, but user_study_mod.TinyNet takes no"),
        ({"data_dir": "x"}, "takes no `data_dir`"),
        ({"dataset": "digits"}, "--dataset digits picks a built-in dataset, but --data names your DataModule"),
        ({"model": "small_cnn"}, "--model must name your LightningModule too"),
        ({"trainer": {"max_epochs": 3}}, "--trainer.max_epochs is set by the study for every fit; use --epochs"),
        ({"trainer": {"logger": False}}, "--trainer.logger is set by the study"),
        ({"model": {"class_path": "user_study_mod.TinyNet", "init_args": {"depth": 3}}}, "depth"),
        ({"model": {"class_path": "user_study_mod.NoSuchNet"}}, "NoSuchNet"),
        ({"model": {"class_path": "no_such_module.Net"}}, "no_such_module"),
    ],
)
def test_options_that_do_not_fit_the_users_classes_are_refused(user_dir: Path, changes: dict, message: str) -> None:
    options = {
        "model": {"class_path": "user_study_mod.TinyNet"},
        "data": {"class_path": "user_study_mod.BlobData"},
        **changes,
    }
    with pytest.raises(PipelineError) as err:
        PipelineConfig(**options).validate()
    assert message in str(err.value)


def test_shorthands_set_init_args_of_a_class_that_takes_them(user_dir: Path) -> None:
    cfg = PipelineConfig(
        model={"class_path": "user_study_mod.TinyNet"}, data={"class_path": "user_study_mod.BlobData"}, lr=0.3, batch_size=4
    ).validate()
    assert cfg.model["init_args"]["lr"] == 0.3 and cfg.data["init_args"]["batch_size"] == 4
    assert cfg.lr is None and cfg.batch_size is None and cfg.validate() == cfg
    assert cfg.el2n_epoch == 1 and cfg.epochs == 10  # the defaults for one's own model: 10 epochs, EL2N at 10%


def test_built_in_presets_are_class_paths_too() -> None:
    cfg = PipelineConfig(model="mlp", width=12, lr=0.02, batch_size=32, val_size=100).validate()
    assert cfg.preset == "digits" and cfg.data["class_path"] == "lightning_datadiet.demo.DigitsDataModule"
    assert cfg.model["init_args"]["net"] == "mlp" and cfg.model["init_args"]["width"] == 12
    assert cfg.model["init_args"]["lr"] == 0.02 and cfg.data["init_args"]["batch_size"] == 32
    assert cfg.data["init_args"]["val_size"] == 100 and cfg.accelerator == "cpu" and cfg.num_threads == 1
    assert cfg.validate() == cfg


# ------------------------------------------------------------------------------------------------ the wrappers


def _datamodule(n: int = 30, with_score_dataset: bool = True):
    from lightning.pytorch import LightningDataModule

    class DM(LightningDataModule):
        def setup(self, stage: str | None = None) -> None:
            y = torch.arange(n) % 3
            self.train_set = TensorDataset(torch.arange(n).float()[:, None], y)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(self.train_set, batch_size=4, shuffle=True)

        def test_dataloader(self) -> DataLoader:
            return DataLoader(self.train_set, batch_size=4)

    if with_score_dataset:
        DM.score_dataset = lambda self: self.train_set  # type: ignore[attr-defined]
    dm = DM()
    dm.setup()
    return dm


@pytest.mark.parametrize("with_score_dataset", [True, False])
def test_noisy_label_wrapper_scores_the_noisy_labels(with_score_dataset: bool) -> None:
    noisy = NoisyLabelDataModule(_datamodule(with_score_dataset=with_score_dataset), 0.4, "uniform_other", seed=3)
    view = noisy.score_dataset()
    labels = torch.tensor([int(view[i][1]) for i in range(len(view))])
    assert torch.equal(labels, noisy.targets) and int(noisy.corrupted_mask.sum()) == 12


def test_validation_split_is_stratified_seeded_and_disjoint() -> None:
    targets = torch.tensor([0] * 20 + [1] * 10 + [2] * 5)
    rest, held = stratified_split(targets, 7, seed=4)
    assert torch.bincount(targets[held], minlength=3).tolist() == [4, 2, 1]
    assert sorted(rest.tolist() + held.tolist()) == list(range(35))
    assert torch.equal(stratified_split(targets, 7, seed=4)[1], held)
    assert not torch.equal(stratified_split(targets, 7, seed=5)[1], held)
    dm = ValidationSplitDataModule(_datamodule(30), 0.2, seed=0)
    train_items = sorted(int(x) for batch in dm.train_dataloader() for x in batch[0].flatten())
    val_items = sorted(int(x) for batch in dm.val_dataloader() for x in batch[0].flatten())
    assert len(val_items) == 6 and sorted(train_items + val_items) == list(range(30))
    assert [int(dm.score_dataset()[i][0]) for i in range(24)] == dm.train_indices.tolist()


def test_the_pipelines_window_and_pruned_datamodules_agree() -> None:
    """One rounding of fraction x N: n=45, keep 0.7, skip the top 0.2 -> skip 9, keep 32 (not 31)."""
    n = 45
    scores = torch.randperm(n, generator=torch.Generator().manual_seed(0)).double()
    dm = _datamodule(n)
    pruned = PrunedDataModule(dm, scores, 0.7, selection="window", offset=window_offset(n, 0.7, 0.2))
    ranked = torch.argsort(scores, descending=True)
    assert sorted(pruned.kept_indices.tolist()) == sorted(ranked[9 : 9 + 32].tolist())


def test_accuracy_is_measured_from_the_logits() -> None:
    from lightning.pytorch import LightningModule, Trainer

    class Fixed(LightningModule):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([x[:, 0], -x[:, 0], torch.zeros_like(x[:, 0])], dim=1)

    x = torch.tensor([[1.0], [-1.0], [2.0], [-3.0], [0.5]])
    y = torch.tensor([0, 1, 1, 1, 2])  # predictions 0, 1, 0, 1, 0: 3 of 5 right
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    module = Fixed()
    trainer.strategy.connect(module)
    assert accuracy(trainer, module, DataLoader(TensorDataset(x, y), batch_size=2), "test") == pytest.approx(0.6)


@pytest.mark.slow
def test_reproduce_runs_the_protocol_on_a_users_own_model_and_data(user_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`datadiet reproduce` keeps the protocol of its scale and drops the airbench recipe's CIFAR-10 shorthands."""
    out = user_dir / "repro"
    argv = ["reproduce", "--scale", "smoke", "--model", "user_study_mod.TinyNet", "--data", "user_study_mod.BlobData",
            "--output_dir", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    table = (out / "verdicts.md").read_text()
    assert "model TinyNet" in table and table.count("| clean |") == 1 + 4 * 3  # full + (random, highest, coverage) x 4
    resolved = json.loads((out / "reproduce.json").read_text())["config"]
    assert resolved["preset"] is None and resolved["keep_fractions"] == [0.9, 0.7, 0.5, 0.4]
    assert resolved["data"]["init_args"] == {"n": 120, "batch_size": 16, "seed": 0}  # not the preset's batch 64
