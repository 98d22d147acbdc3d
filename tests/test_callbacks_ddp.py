"""The callbacks under 2-process CPU DDP (gloo): scores gathered by sample index equal the single-process
reference with the same weights; forgetting equals the scripted sequence despite the sampler's padding."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_datadiet import el2n, grand, load_scores

from tiny import TinyNet, expected_forgetting, make_data, scripted_data

SCRIPT = Path(__file__).parent / "scripts" / "ddp_scores.py"
pytestmark = pytest.mark.slow


def _run(tmp_path, kind):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), kind], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [torch.load(tmp_path / f"scores_rank{r}.pt") for r in (0, 1)]
    return ranks


def _net(path):
    net = TinyNet(3)
    net.load_state_dict(torch.load(path))
    return net.eval()


def test_ddp_el2n_grand_forgetting_equal_single_process_reference(tmp_path):
    ranks = _run(tmp_path, "models")
    x, y = make_data(37).tensors
    for epoch in (0, 2):
        with torch.no_grad():
            ref = el2n(_net(tmp_path / f"weights_{epoch}.pt")(x), y)
        for r in ranks:
            torch.testing.assert_close(r["el2n"][epoch], ref, rtol=1e-5, atol=1e-6)
    ref = grand(_net(tmp_path / "weights_1.pt"), x, y)
    for r in ranks:
        torch.testing.assert_close(r["grand"][1], ref, rtol=1e-4, atol=1e-6)
    # forgetting: both ranks hold the same dense counts over all 37 examples, and rank 0 wrote them
    f0, f1 = ranks[0]["forgetting"][2], ranks[1]["forgetting"][2]
    assert torch.equal(f0, f1) and f0.shape == (37,)
    assert torch.equal(load_scores(tmp_path / "scores" / "forgetting_epoch002_seed0.scores").scores, f0)
    assert torch.equal(load_scores(tmp_path / "scores" / "el2n_epoch002_seed0.scores").scores, ranks[0]["el2n"][2])


def test_ddp_forgetting_matches_scripted_sequence(tmp_path):
    ranks = _run(tmp_path, "scripted")
    script = torch.load(tmp_path / "script.pt")
    expected = expected_forgetting(script)
    for r in ranks:
        assert torch.equal(r["forgetting"][4], expected)
    f = load_scores(tmp_path / "scores" / "forgetting_epoch004_seed0.scores")
    assert torch.equal(f.scores, expected)
    from lightning_datadiet.store import label_fingerprint

    assert f.label_fingerprint == label_fingerprint(scripted_data(23).tensors[1])
