"""The training-pass callbacks under 2-process CPU DDP (gloo), through one harness (tests/scripts/ddp_training_pass.py):
every rank holds the scripted reference over all examples (the DistributedSampler's padding included), and a fit
stopped inside an epoch right after a checkpoint, then resumed, gives the same results as an uninterrupted one."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny import expected_dynamics, expected_forgetting, scripted_logits

SCRIPT = Path(__file__).parent / "scripts" / "ddp_training_pass.py"
N, EPOCHS = 23, 4
pytestmark = pytest.mark.slow


def _multiplicity(presented: dict) -> torch.Tensor:
    mult = torch.zeros(EPOCHS, N, dtype=torch.long)
    for epoch, ids in presented.items():
        mult[epoch].index_add_(0, torch.tensor(ids), torch.ones(len(ids), dtype=torch.long))
    return mult


def _forgetting(logits, mult):
    return {"forgetting": expected_forgetting(logits.argmax(2) == torch.arange(N) % 3)}


REFERENCES = {  # name -> (logits [E, N, K], multiplicity [E, N]) -> {result: expected}
    "forgetting": _forgetting,
    "dynamics": lambda logits, mult: expected_dynamics(logits, 3, mult),
}


def _run(out, name, mode):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), name, mode], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [torch.load(out / f"{mode}_rank{r}.pt") for r in (0, 1)]


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_ddp_scores_equal_reference_and_mid_epoch_resume(tmp_path, name):
    full = _run(tmp_path / "full", name, "full")
    mult = sum(_multiplicity(r["presented"]) for r in full)
    assert int(mult.sum()) == EPOCHS * 24 and int(mult.max()) == 2  # one padded repeat per epoch
    expected = REFERENCES[name](scripted_logits(EPOCHS, N, seed=11), mult)
    for rank in full:
        for key, value in rank["results"].items():
            torch.testing.assert_close(value, expected[key].float(), rtol=1e-5, atol=2e-6, equal_nan=True)
    _run(tmp_path / "split", name, "part")
    resumed = _run(tmp_path / "split", name, "resume")
    for rank_full, rank_resumed in zip(full, resumed):
        for key, value in rank_full["results"].items():
            torch.testing.assert_close(rank_resumed["results"][key], value, rtol=0, atol=0, equal_nan=True)
