"""The ``datadiet`` command: a reduced demo end to end, resume, fail-fast option checks, help and YAML configs."""

from __future__ import annotations

import csv
import json
import shutil
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from lightning_datadiet import load_scores, pipeline
from lightning_datadiet.cli import main
from lightning_datadiet.pipeline import (
    PipelineConfig,
    choose_rules_on_validation,
    plan_retraining,
    plan_scoring,
    stages,
)

# a reduced demo: clean + 20% noise, all three methods, three rules, one keep fraction, one seed
REDUCED = [
    "--epochs", "2",
    "--el2n_epoch", "1",
    "--num_runs", "2",
    "--keep_fractions", "[0.5]",
    "--seeds", "[0]",
    "--progress_bar", "false",
]  # fmt: skip


def _reduced_config(out: Path) -> PipelineConfig:
    return PipelineConfig(
        output_dir=str(out),
        epochs=2,
        el2n_epoch=1,
        num_runs=2,
        keep_fractions=[0.5],
        seeds=[0],
        progress_bar=False,
    ).validate()


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo")
    # the README spells options with dashes: both forms are accepted
    # progress bars left at their default (off): the output is one line per finished fit
    argv = ["demo", "--output-dir", str(out), *[a for a in REDUCED if a not in ("--progress_bar", "false")]]
    import contextlib
    import io

    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        assert main(argv) == 0
    demo_output["stderr"] = err.getvalue()
    return out, buf.getvalue()


demo_output: dict[str, str] = {}


def _png_ok(path: Path) -> None:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def _histogram_tags(run_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"histograms": 0})
    acc.Reload()
    return acc.Tags()["histograms"]


@pytest.mark.slow
def test_demo_outputs_exist_and_are_consistent(demo_dir):
    out, stdout = demo_dir
    cfg = _reduced_config(out)
    planned = plan_retraining(cfg)
    assert len(planned) == 2 * (1 + 1 + 3 * 3)  # 2 settings x (full + random + 3 methods x 3 rules)

    # every configured run has its own result file, and the table holds exactly those runs
    for run in planned:
        assert (out / "results" / "runs" / f"{run.key}.json").exists()
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted(r["key"] for r in rows) == sorted(r.key for r in planned)
    table = json.loads((out / "results.json").read_text())
    assert len(table) == len(rows)
    for row in table:
        assert 0.0 <= row["test_acc"] <= 1.0
        assert row["val_acc"] is None or 0.0 <= row["val_acc"] <= 1.0
        assert row["wall_time_s"] > 0
        assert {"method", "rule", "keep_fraction", "seed"} <= set(row)
    assert {r["method"] for r in table} == {"full", "random", "el2n", "grand", "forgetting"}
    halves = [r for r in table if r["method"] not in ("full",)]
    assert all(
        r["kept"] == 500 and r["epochs_trained"] == 4 for r in halves
    )  # same-steps budget: 2 x 2 epochs

    # score files: one per scoring run and method, plus the averaged ones
    for run in plan_scoring(cfg):
        marker = json.loads(run.marker.read_text())
        for method in ("el2n", "grand", "forgetting"):
            assert (run.directory / marker["paths"][method]).exists()
    for s in pipeline.settings(cfg):
        for method in ("el2n", "grand", "forgetting"):
            sf = load_scores(pipeline.mean_score_path(cfg, s, method))
            assert sf.num_samples == 1000 and sf.extra["runs"] == 2

    # plots are valid PNGs
    _png_ok(out / "accuracy_vs_kept.png")
    _png_ok(out / "score_histograms.png")

    # noisy-label precision for the noisy setting only
    noise = json.loads((out / "noise_detection.json").read_text())
    assert {(r["setting"], r["method"]) for r in noise} == {
        ("noise20-uniform", m) for m in ("el2n", "grand", "forgetting")
    }
    assert all(0.0 <= r["precision"] <= 1.0 and r["flagged"] == 200 for r in noise)

    # the rule picked on validation data, per method and fraction
    chosen = json.loads((out / "rule_selection.json").read_text())
    assert len(chosen) == 2 * 3
    assert all(isinstance(c["random_wins"], bool) for c in chosen)

    # TensorBoard: the callbacks' histograms in the scoring runs, the averaged ones in the report
    score_runs = sorted((out / "tensorboard" / "clean" / "score").iterdir())
    assert score_runs and "datadiet/el2n" in _histogram_tags(score_runs[0])
    report_tags = _histogram_tags(out / "tensorboard" / "report")
    assert "scores_mean/noise20-uniform/el2n" in report_tags

    # the final table is printed, the config saved
    assert "== clean ==" in stdout and "== noise20-uniform ==" in stdout and "full data" in stdout
    assert (out / "summary.txt").read_text().strip() in stdout
    assert "keep_fractions" in (out / "config.yaml").read_text()


@pytest.mark.slow
def test_demo_prints_one_line_per_finished_fit(demo_dir):
    out, stdout = demo_dir
    cfg = _reduced_config(out)
    lines = stdout.splitlines()
    score = [ln for ln in lines if ln.startswith("[score ")]
    train = [ln for ln in lines if ln.startswith("[train ")]
    assert len(score) == len(plan_scoring(cfg)) == 4  # one line per scoring fit
    assert len(train) == len(plan_retraining(cfg)) == 22  # one line per retraining fit
    for i, line in enumerate(train, 1):
        assert line.startswith(f"[train {i}/22]") and "eta " in line and "test acc" in line
    assert all("scored after" in ln and "eta " in ln for ln in score)
    assert "\r" not in stdout and "it/s" not in stdout + demo_output["stderr"]  # no progress bars
    assert len(demo_output["stderr"]) < 2000, demo_output["stderr"][:2000]
    assert len(stdout) < 12000  # the full demo (130 fits) prints 23 kB
    assert len(lines) < len(score) + len(train) + 60  # the rest is the summary table


@pytest.mark.slow
def test_rerun_skips_finished_runs(demo_dir, capsys, monkeypatch):
    out, _ = demo_dir
    stamps = {p: p.stat().st_mtime_ns for p in (out / "results" / "runs").glob("*.json")}
    fits = []
    import lightning.pytorch as pl

    real_fit = pl.Trainer.fit
    monkeypatch.setattr(pl.Trainer, "fit", lambda self, *a, **k: (fits.append(1), real_fit(self, *a, **k))[1])
    assert main(["demo", "--output_dir", str(out), *REDUCED]) == 0
    text = capsys.readouterr().out
    assert fits == []  # nothing trained again
    assert "0 to train" in text and "done before, skipped" in text
    assert {p: p.stat().st_mtime_ns for p in (out / "results" / "runs").glob("*.json")} == stamps


@pytest.mark.slow
def test_interrupted_run_loses_only_the_run_in_progress(demo_dir, tmp_path, monkeypatch, capsys):
    src, _ = demo_dir
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    cfg = _reduced_config(out)
    runs = plan_retraining(cfg)
    # forget three finished runs, and leave a half-written (unreadable) result behind for a fourth
    for run in runs[:3]:
        pipeline.result_path(cfg, run.key).unlink()
    pipeline.result_path(cfg, runs[3].key).write_text('{"key": "trunc')
    calls = []
    real = stages._train_one

    def flaky(cfg_, run):
        calls.append(run.key)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(cfg_, run)

    monkeypatch.setattr(stages, "_train_one", flaky)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_retraining(cfg)
    assert pipeline.result_path(cfg, runs[0].key).exists() and pipeline.result_path(cfg, runs[1].key).exists()
    assert pipeline.result_path(cfg, runs[4].key).exists()  # untouched
    monkeypatch.setattr(stages, "_train_one", real)
    calls.clear()
    results = pipeline.run_retraining(cfg)
    assert len(results) == len(runs)
    assert "2 to train" in capsys.readouterr().out  # the interrupted one and the truncated one


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--keep_fractions", "[0.5,1.5]"], "--keep_fractions must lie strictly between 0 and 1"),
        (["--keep_fractions", "[0.0]"], "--keep_fractions must lie strictly between 0 and 1"),
        (["--dataset", "cifar10"], "--data-dir pointing at cifar10-jpeg.zip"),
        (
            ["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"],
            "--data-dir pointing at cifar10-jpeg.zip",
        ),
        (["--label_noise", "[1.2]"], "--label_noise values must be fractions in [0, 1)"),
        (["--el2n_epoch", "50"], "--el2n_epoch must be in [0, epochs=10]"),
        (["--rules", "[window]", "--window_skip", "[0.9]"], "no window fits"),
        (["--devices", "2"], "--devices"),
        (["--val_size", "0"], "--select_on_val needs validation data"),
    ],
)
def test_bad_options_fail_before_training(argv, message, tmp_path, capsys, monkeypatch):
    import lightning.pytorch as pl

    monkeypatch.setattr(pl.Trainer, "fit", lambda *a, **k: pytest.fail("training started"))
    out = tmp_path / "out"
    assert main(["demo", "--output_dir", str(out), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "imagenet"], "imagenet"),
        (["--methods", "[el2n,loss]"], "loss"),
        (["--budget", "forever"], "forever"),
        (["--no_such_option", "1"], "no_such_option"),
    ],
)
def test_bad_values_rejected_by_the_parser(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--output_dir", str(tmp_path / "out"), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_train_without_scores_fails_fast(tmp_path, capsys, monkeypatch):
    import lightning.pytorch as pl

    monkeypatch.setattr(pl.Trainer, "fit", lambda *a, **k: pytest.fail("training started"))
    assert main(["train", "--output_dir", str(tmp_path), *REDUCED]) == 2
    assert "Run `datadiet score`" in capsys.readouterr().err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for name in PipelineConfig.__dataclass_fields__:
        assert name == "preset" or f"--{name}" in text  # `preset` is set by resolution, not an option
    assert "--trainer.precision" in text and "--model.help" in text and "--data.help" in text  # as LightningCLI
    assert "same_steps" in text and "Fractions of the training set kept" in text
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for stage in ("score", "train", "prune", "report", "demo"):
        assert stage in text


def test_console_script_is_declared():
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts.get("datadiet") == "lightning_datadiet.cli:main"


@pytest.mark.slow
def test_yaml_config_for_report(demo_dir, tmp_path, capsys):
    out, _ = demo_dir
    config = tmp_path / "run.yaml"
    config.write_text(
        f"output_dir: {out}\nepochs: 2\nel2n_epoch: 1\nnum_runs: 2\nkeep_fractions: [0.5]\nseeds: [0]\n"
        "progress_bar: false\n"
    )
    assert main(["report", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert "have no result yet" not in text  # the YAML names the same runs as the flags did
    # a flag after --config overrides the file: another seed -> those runs are missing
    assert main(["report", "--config", str(config), "--seeds", "[5]"]) == 0
    assert "have no result yet" in capsys.readouterr().out


def test_plan_keys_and_windows(tmp_path):
    cfg = PipelineConfig(
        output_dir=str(tmp_path), keep_fractions=[0.5, 0.9], window_skip=[0.05, 0.2]
    ).validate()
    runs = plan_retraining(cfg)
    keys = [r.key for r in runs]
    assert len(keys) == len(set(keys))
    windows = {(r.keep_fraction, r.window_skip) for r in runs if r.rule == "window"}
    assert windows == {(0.5, 0.05), (0.5, 0.2), (0.9, 0.05)}  # 0.9 + 0.2 > 1 is left out
    assert [r.key for r in plan_retraining(cfg)] == keys  # stable
    other = PipelineConfig(
        output_dir=str(tmp_path), keep_fractions=[0.5, 0.9], window_skip=[0.05, 0.2], lr=0.02
    )
    assert not set(keys) & {r.key for r in plan_retraining(other.validate())}
    # output_dir, progress bars and threads do not change what a run is
    moved = PipelineConfig(output_dir=str(tmp_path / "x"), keep_fractions=[0.5, 0.9], window_skip=[0.05, 0.2],
                           progress_bar=False, num_threads=2)  # fmt: skip
    assert [r.key for r in plan_retraining(moved.validate())] == keys


def test_choose_rules_on_validation_says_when_random_wins():
    def row(method, rule, val, test, seed=0):
        return {"setting": "clean", "method": method, "rule": rule, "keep_fraction": 0.5, "seed": seed,
                "val_acc": val, "test_acc": test}  # fmt: skip

    results = [
        row("random", "random", 0.90, 0.91),
        row("random", "random", 0.92, 0.93, seed=1),
        row("el2n", "highest", 0.95, 0.96),
        row("el2n", "window(skip=0.1)", 0.80, 0.81),
        row("grand", "highest", 0.91, 0.5),  # tie with random's mean 0.91 -> random
    ]
    chosen = {c["method"]: c for c in choose_rules_on_validation(results)}
    assert chosen["el2n"]["chosen_rule"] == "highest" and not chosen["el2n"]["random_wins"]
    assert chosen["el2n"]["chosen_test_acc"] == pytest.approx(0.96)
    assert chosen["grand"]["chosen_rule"] == "random" and chosen["grand"]["random_wins"]
    assert chosen["grand"]["chosen_test_acc"] == pytest.approx(0.92)


def test_histogram_places_never_learned_right(tmp_path):
    from lightning_datadiet import save_scores

    cfg = PipelineConfig(
        output_dir=str(tmp_path), label_noise=[0.0], methods=["forgetting"], num_runs=1
    ).validate()
    s = pipeline.settings(cfg)[0]
    scores = torch.zeros(1000)
    scores[:5] = float("inf")
    save_scores(pipeline.mean_score_path(cfg, s, "forgetting"), scores, method="forgetting")
    path = pipeline.plot_histograms(cfg, {}, tmp_path / "h.png")
    _png_ok(path)
