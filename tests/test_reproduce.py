"""``datadiet reproduce``: presets, the verdict table, and an end-to-end smoke run on a tiny ImageFolder."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from lightning_datadiet.cli import main
from lightning_datadiet.pipeline import PipelineConfig, PipelineError
from lightning_datadiet.reproduce import SCALES, format_verdicts, reproduce_config, verdict_rows

sys.path.insert(0, str(Path(__file__).parent))
from imagefolder import make_image_folder  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("repro"), classes=3, train=60, test=20, size=32)


def test_scales_follow_the_protocol(folder: Path) -> None:
    import torch

    # the gpu scale refuses a machine without one; its protocol is checked with the accelerator overridden
    hw = {} if torch.cuda.is_available() else {"accelerator": "cpu"}
    for scale in SCALES:
        cfg = reproduce_config(scale, str(folder), output_dir="x", **(hw if scale == "gpu" else {}))
        assert cfg.preset == "airbench" and cfg.model["class_path"] == "lightning_datadiet.demo.AirbenchModule"
        assert cfg.data["class_path"] == "lightning_datadiet.demo.AirbenchDataModule" and cfg.budget == "same_steps"
        assert cfg.keep_fractions == [0.9, 0.7, 0.5, 0.4] and set(cfg.rules) == {"highest", "coverage"}
        assert cfg.methods == ["el2n", "grand", "forgetting"] and cfg.grand_epoch == 0
        assert cfg.el2n_epoch in (1, 2)
    assert reproduce_config("cpu", str(folder)).num_runs >= 4 and len(reproduce_config("cpu", str(folder)).seeds) >= 3
    if not torch.cuda.is_available():
        with pytest.raises(PipelineError, match="no GPU is visible"):
            reproduce_config("gpu", str(folder))
    gpu = reproduce_config("gpu", str(folder), **hw)
    assert gpu.num_runs == 10 and gpu.data["init_args"]["train_subset"] is None and gpu.model["init_args"]["width"] == 64
    assert reproduce_config("smoke", str(folder), epochs=3).epochs == 3  # study options apply on top


def _result(method: str, rule: str, keep: float, seed: int, acc: float) -> dict:
    return {"setting": "clean", "method": method, "rule": rule, "keep_fraction": keep, "seed": seed, "test_acc": acc}


def test_verdict_rows_margin_spread_and_verdict(folder: Path) -> None:
    cfg = reproduce_config("smoke", str(folder), methods=["el2n"], rules=["highest"], keep_fractions=[0.5, 0.4])
    results = [_result("full", "full", 1.0, s, a) for s, a in ((0, 0.9), (1, 0.92))]
    results += [_result("random", "random", 0.5, s, a) for s, a in ((0, 0.80), (1, 0.84))]
    results += [_result("el2n", "highest", 0.5, s, a) for s, a in ((0, 0.85), (1, 0.87))]
    results += [_result("random", "random", 0.4, s, a) for s, a in ((0, 0.80), (1, 0.80))]
    results += [_result("el2n", "highest", 0.4, s, a) for s, a in ((0, 0.70), (1, 0.90))]
    rows = verdict_rows(cfg, results)
    by = {(r["keep_fraction"], r["method"]): r for r in rows}
    assert by[(1.0, "full")]["mean"] == pytest.approx(0.91)
    r = by[(0.5, "el2n")]
    assert r["margin"] == pytest.approx(0.04)
    s_el2n, s_rand = math.sqrt(2) * 0.01, math.sqrt(2) * 0.02  # sample std of two values
    assert r["spread"] == pytest.approx(math.sqrt(s_el2n**2 / 2 + s_rand**2 / 2))
    assert r["verdict"] == "score beats random" and not r["within_noise"]
    assert r["p16"] == pytest.approx(0.85 + 0.16 * 0.02) and r["p84"] == pytest.approx(0.85 + 0.84 * 0.02)
    r = by[(0.4, "el2n")]
    assert r["margin"] == pytest.approx(0.0) and r["verdict"] == "tie" and r["within_noise"]
    text = format_verdicts(cfg, rows)
    assert "| clean | 50% | el2n | highest | 86.00 ± 1.41 |" in text and "+4.00" in text


def test_reproduce_rejects_unknown_scale(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "--scale", "huge", "--data_dir", "nowhere"]) == 2
    assert "--scale must be one of smoke, cpu, gpu" in capsys.readouterr().err


@pytest.mark.slow
def test_reproduce_smoke_end_to_end(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTNING_DATADIET_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    argv = ["reproduce", "--scale", "smoke", "--data-dir", str(folder), "--output-dir", str(out), "--seeds", "[0]"]
    assert main(argv) == 0
    rows = json.loads((out / "verdicts.json").read_text())
    keeps = [0.9, 0.7, 0.5, 0.4]
    cells = {(r["keep_fraction"], r["method"], r["rule"].split("(")[0]) for r in rows}
    for keep in keeps:  # a row per rule and keep fraction
        for cell in ((keep, "random", "random"), (keep, "el2n", "highest"), (keep, "el2n", "coverage")):
            assert cell in cells
    assert (1.0, "full", "full") in cells
    scored = {r["method"] for r in rows if "verdict" in r}
    assert scored == {"el2n"}
    assert all(r["verdict"] in ("score beats random", "random wins", "tie") for r in rows if "verdict" in r)
    table = (out / "verdicts.md").read_text()
    assert table.count("| clean |") == 1 + 4 * 3
    assert (out / "accuracy_vs_kept.png").stat().st_size > 0
    score_dir = next((out / "scores").iterdir())  # GraNd at init and forgetting were scored alongside EL2N
    for method in ("el2n", "grand", "forgetting"):
        assert (score_dir / f"{method}_mean2runs.scores").exists()
    cfg = PipelineConfig(**json.loads((out / "config.resolved.json").read_text()))
    assert cfg.preset == "airbench" and cfg.seeds == [0]
    assert cfg.validate() == cfg  # a resolved config resolves to itself
