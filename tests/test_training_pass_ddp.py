"""The training-pass callbacks under 2-process CPU DDP (gloo), through one harness (tests/scripts/ddp_training_pass.py):
every rank holds the scripted reference over all examples (the DistributedSampler's padding and the pruned epochs
included) and both ranks skip the same examples, after a fit stopped inside an epoch right after a checkpoint and
resumed from it. A new callback: one line in the script's ``CALLBACKS`` and
its reference in ``REFERENCES``."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from tiny import expected_dynamics, scripted_logits

SCRIPT = Path(__file__).parent / "scripts" / "ddp_training_pass.py"
N, EPOCHS, K = 23, 4, 3
pytestmark = pytest.mark.slow


def _multiplicity(presented: dict) -> torch.Tensor:
    mult = torch.zeros(EPOCHS, N, dtype=torch.long)
    for epoch, ids in presented.items():
        mult[epoch].index_add_(0, torch.tensor(ids), torch.ones(len(ids), dtype=torch.long))
    return mult


def _forgetting(logits, mult):
    correct = logits.argmax(2) == torch.arange(N) % K
    out = torch.zeros(N)
    for i in range(N):
        seq = [bool(correct[e, i]) for e in range(EPOCHS) if mult[e, i] > 0]
        out[i] = sum(a and not b for a, b in zip(seq, seq[1:])) if any(seq) else math.inf
    return {"forgetting": out}


def _pruning(logits, mult):
    labels = torch.arange(N) % K
    expected = {f"skipped_{e}": mult[e] == 0 for e in range(EPOCHS)}
    latest = torch.full((N,), float("nan"))
    for e in range(EPOCHS):
        ids = (mult[e] > 0).nonzero().flatten()
        latest[ids] = F.cross_entropy(logits[e, ids], labels[ids], reduction="none")
    expected["losses"] = latest
    return expected


REFERENCES = {  # name -> (logits [E, N, K], multiplicity [E, N]) -> {result: expected}
    "forgetting": _forgetting,
    "dynamics": lambda logits, mult: expected_dynamics(logits, 3, mult),
    "pruning": _pruning,
}


def _run(out, mode):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), mode], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [torch.load(out / f"{mode}_rank{r}.pt") for r in (0, 1)]


def test_ddp_training_pass_callbacks_equal_references_and_resume_mid_epoch(tmp_path):
    """A fit stopped inside epoch 2 right after a checkpoint, then resumed: the resumed results on both ranks equal the
    references computed from what was trained (the stopped part's batches plus the resumed part's)."""
    part = _run(tmp_path, "part")
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 9
    assert all(s["presentations"]["batches_done"] > 0 for s in state["callbacks"].values() if "presentations" in s)
    resumed = _run(tmp_path, "resume")
    mult = sum(_multiplicity(r["presented"]) for r in part + resumed)
    assert int(mult[0].sum()) == 24 and int(mult[0].max()) == 2  # the padded repeat
    assert (mult[1:3] == 0).any() and bool((mult[3] > 0).all())  # pruned epochs, then annealing uses all data
    assert 0 < int(mult[2].sum()) < 24 and all(2 in r["presented"] for r in part)  # epoch 2 split by the stop
    # the resumed epoch continued where it stopped: no example trained twice in an epoch beyond the one padded repeat
    assert all(int((mult[e] > 1).sum()) <= 1 and int(mult[e].max()) <= 2 for e in range(EPOCHS))
    logits = scripted_logits(EPOCHS, N, seed=11)
    assert set(resumed[0]["results"]) == set(REFERENCES)
    for name, reference in REFERENCES.items():
        expected = reference(logits, mult)
        for rank in resumed:
            for key, value in rank["results"][name].items():
                torch.testing.assert_close(value, expected[key].to(value.dtype), rtol=1e-5, atol=2e-6, equal_nan=True,
                                           msg=f"{name}/{key}")  # fmt: skip
