"""Faults (docs/robustness.md, K = kills): a process killed with SIGKILL while writing a score file, while training
(then resumed from its last checkpoint), and while running the ``datadiet`` pipeline (then rerun)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_datadiet import average_scores, load_scores, save_scores

SCRIPTS = Path(__file__).resolve().parent / "scripts"
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _spawn(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _read_until(proc: subprocess.Popen, predicate, timeout: float = 120.0) -> list[str]:
    """Lines of the child's output up to and including the first line for which ``predicate`` is true."""
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"the child exited ({proc.wait()}) before the expected line:\n" + "".join(lines))
        lines.append(line)
        if predicate(line.strip()):
            return lines
    raise AssertionError("timed out waiting for the child:\n" + "".join(lines))


def _temp_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def _check_one_version(path: Path, allowed: set[int]) -> int:
    sf = load_scores(path)  # never a ScoreFileError: the file is one complete version
    version = sf.epoch
    assert version in allowed, (version, allowed)
    assert sf.num_samples == N_BIG
    assert float(sf.scores.min()) == float(sf.scores.max()) == float(version)
    return version


N_BIG = 5_000_000  # 20 MB of float32 per version


# -------------------------------------------------------------------------------------- K1: kill during a write


def test_K1_kill_during_score_file_write_keeps_a_complete_file(tmp_path):
    path = tmp_path / "scores" / "el2n_epoch020_seed0.scores"
    save_scores(path, torch.full((N_BIG,), 0.0), method="el2n", epoch=0)  # the previous file
    rng = random.Random(0)
    versions, first = {0}, 1
    # 1) deterministic: killed inside fsync, when the temporary file is complete but not yet renamed over `path`
    proc = _spawn(str(SCRIPTS / "fault_write.py"), str(path), str(N_BIG), str(first), "slow-fsync")
    _read_until(proc, lambda line: line == "in-fsync")
    _kill(proc)
    assert _check_one_version(path, versions) == 0  # the previous version, untouched
    assert len(_temp_files(path)) == 1  # the dead writer's temporary file stays behind (not cleaned up)
    # 2) random moments: after the first complete write (to time one), kill at a random point of a later write
    for round_ in range(2):
        first = 1000 * (round_ + 1)
        proc = _spawn(str(SCRIPTS / "fault_write.py"), str(path), str(N_BIG), str(first))
        start = time.monotonic()
        _read_until(proc, lambda line, v=first: line == f"begin {v}")
        begun = time.monotonic()
        _read_until(proc, lambda line, v=first: line == f"end {v}")
        duration = time.monotonic() - begun
        versions.add(first)
        lines = _read_until(proc, lambda line: line.startswith("begin "))
        versions.add(int(lines[-1].split()[1]))
        time.sleep(rng.uniform(0.0, 1.2 * duration))
        _kill(proc)
        versions.update(int(line.split()[1]) for line in proc.stdout.read().splitlines() if line.startswith("begin "))
        got = _check_one_version(path, versions)
        assert got >= first, "a completed write was lost"
        assert time.monotonic() - start < 120
    # stray temporary files never break loading, and a `*.scores` glob never picks them up
    strays = _temp_files(path)
    assert strays and all(p.name.startswith(".") and p.suffix == ".tmp" for p in strays)
    assert sorted(path.parent.glob("*.scores")) == [path]
    assert average_scores(sorted(path.parent.glob("*.scores"))).num_samples == N_BIG


# ------------------------------------------------------------------------- K2: kill mid-epoch, resume, compare


def _scores_in(folder: Path) -> dict[str, torch.Tensor]:
    return {p.name: load_scores(p).scores for p in sorted(folder.glob("*.scores"))}


def test_K2_fit_killed_mid_epoch_and_resumed_gives_the_same_scores(tmp_path):
    full, crash = tmp_path / "full", tmp_path / "crash"
    script = str(SCRIPTS / "fault_train.py")
    p_full = _spawn(script, str(full), "full")
    p_crash = _spawn(script, str(crash), "crash")
    marker = crash / "in_epoch2"
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert p_crash.poll() is None, p_crash.stdout.read()
        assert time.monotonic() < deadline, "the crash run never reached epoch 2"
        time.sleep(0.05)
    _kill(p_crash)
    assert not (crash / "weights.pt").exists()
    before = _scores_in(crash / "scores")
    assert set(before) == {"el2n_epoch001_seed0.scores", "forgetting_epoch002_seed0.scores"}
    out, _ = p_full.communicate(timeout=300)
    assert p_full.returncode == 0, out
    resumed = subprocess.run([sys.executable, script, str(crash), "resume"], capture_output=True, text=True,
                             timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    expected, got = _scores_in(full / "scores"), _scores_in(crash / "scores")
    assert sorted(got) == sorted(expected) == [
        "el2n_epoch001_seed0.scores",
        "el2n_epoch003_seed0.scores",
        "forgetting_epoch002_seed0.scores",
        "forgetting_epoch003_seed0.scores",
        "grand_epoch003_seed0.scores",
    ]
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)
    w_full = torch.load(full / "weights.pt", weights_only=True)
    w_resumed = torch.load(crash / "weights.pt", weights_only=True)
    for key in w_full:
        torch.testing.assert_close(w_resumed[key], w_full[key], rtol=0, atol=0, msg=key)


# ----------------------------------------------------------------------------- K3: pipeline killed and rerun

_PIPELINE = [
    "--label_noise", "[0.0]", "--epochs", "2", "--model", "mlp", "--width", "16", "--methods", "[el2n,forgetting]",
    "--el2n_epoch", "1", "--num_runs", "3", "--keep_fractions", "[0.5]", "--rules", "[highest]",
    "--seeds", "[0,1,2]", "--select_on_val", "false", "--tensorboard", "false", "--progress_bar", "false",
]  # fmt: skip


def _snapshot(files) -> dict[Path, tuple[int, bytes]]:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the pipeline finished before it could be killed:\n" + proc.stdout.read()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    _kill(proc)


@pytest.mark.skipif(not (REPO / "lightning_datadiet" / "cli.py").exists(), reason="no datadiet command")
def test_K3_pipeline_killed_and_rerun_loses_no_finished_run(tmp_path):
    out = tmp_path / "out"
    cli = ["-m", "lightning_datadiet.cli"]
    args = ["--output_dir", str(out), *_PIPELINE]
    # 1) killed in the scoring stage, right after its first run finished
    proc = _spawn(*cli, "score", *args, cwd=tmp_path)
    _kill_when(proc, lambda: any(out.glob("scores/*/run_seed*.json")))
    markers = sorted(out.glob("scores/*/run_seed*.json"))
    assert 1 <= len(markers) < 3
    kept = _snapshot(markers + [m.parent / f for m in markers for f in _marker_paths(m)])
    # 2) rerun (all stages), killed in the retraining stage after its first finished run
    proc = _spawn(*cli, "demo", *args, cwd=tmp_path)
    _kill_when(proc, lambda: any(out.glob("results/runs/*.json")))
    finished = sorted(out.glob("results/runs/*.json"))
    planned = 3 * 4  # seeds x (full data, random, el2n-highest, forgetting-highest)
    assert 1 <= len(finished) < planned
    kept.update(_snapshot(finished))
    # 3) rerun the retraining stage to the end
    done = subprocess.run([sys.executable, *cli, "train", *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = f"{planned} runs planned, {len(finished)} done before, {planned - len(finished)} to train"
    assert summary in done.stdout + done.stderr
    assert len(list(out.glob("results/runs/*.json"))) == planned
    for path, (mtime, raw) in kept.items():  # nothing finished before a kill was redone or lost
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == raw, path
    assert len(list(out.glob("scores/*/run_seed*.json"))) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # X5: nothing written outside the output folder


def _marker_paths(marker: Path) -> list[str]:
    import json

    return list(json.loads(marker.read_text())["paths"].values())
