"""Every score callback under 2-process CPU DDP (gloo), through one harness (tests/scripts/ddp_harness.py): on
every rank the results equal the single-process reference computed from what was trained (EL2N and GraNd from rank
0's weights, forgetting, training dynamics and dynamic pruning from the scripted logits, the DistributedSampler's
padding and the pruned epochs included), after a fit stopped inside an epoch right after a checkpoint and resumed
from it. Two launches for all callbacks. A new score: one entry in the harness's ``CASES``."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_datadiet import load_scores
from lightning_datadiet.store import label_fingerprint

SCRIPT = Path(__file__).parent / "scripts" / "ddp_harness.py"
pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("ddp_harness", SCRIPT)
harness = sys.modules["ddp_harness"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)
N, EPOCHS = harness.N, harness.EPOCHS


def _launch(out, mode):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), mode], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [torch.load(out / f"{mode}_rank{r}.pt") for r in (0, 1)]


def _multiplicity(presented: dict) -> torch.Tensor:
    mult = torch.zeros(EPOCHS, N, dtype=torch.long)
    for epoch, ids in presented.items():
        mult[epoch].index_add_(0, torch.tensor(ids), torch.ones(len(ids), dtype=torch.long))
    return mult


def test_every_score_callback_equals_its_reference_under_ddp_and_a_mid_epoch_resume(tmp_path):
    part = _launch(tmp_path, "part")
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert state["global_step"] == harness.STOP_STEP
    assert all(s["presentations"]["batches_done"] > 0 for s in state["callbacks"].values() if "presentations" in s)
    resumed = _launch(tmp_path, "resume")

    mult = sum(_multiplicity(r["presented"]) for r in part + resumed)
    assert int(mult[0].sum()) == 24 and int(mult[0].max()) == 2  # the padded repeat
    assert (mult[1:3] == 0).any() and bool((mult[3] > 0).all())  # pruned epochs, then annealing uses all data
    assert 0 < int(mult[2].sum()) < 24 and all(2 in r["presented"] for r in part)  # epoch 2 split by the stop
    # the resumed epoch continued where it stopped: no example trained twice in an epoch beyond the one padded repeat
    assert all(int((mult[e] > 1).sum()) <= 1 and int(mult[e].max()) <= 2 for e in range(EPOCHS))

    x, y = harness.tagged_data(N).tensors
    run = harness.Run(harness.scripted_logits(EPOCHS, N, seed=11), x, y, mult, tmp_path)
    assert set(resumed[0]["results"]) == set(harness.CASES)
    for name, case in harness.CASES.items():
        expected = case.reference(run)
        for rank in resumed:
            got = rank["results"][name]
            assert set(got) == set(expected), name
            for key, value in got.items():
                torch.testing.assert_close(value, expected[key].to(value.dtype), rtol=case.rtol, atol=case.atol,
                                           equal_nan=True, msg=f"{name}/{key}")  # fmt: skip

    # rank 0 wrote the files, with the labels' fingerprint; both ranks hold the same dense results
    scores = tmp_path / "scores"
    for file, (name, key) in {"el2n_epoch003_seed0.scores": ("el2n", "epoch3"),
                              "grand_epoch004_seed0.scores": ("grand", "epoch4"),
                              "forgetting_epoch004_seed0.scores": ("forgetting", "forgetting")}.items():  # fmt: skip
        loaded = load_scores(scores / file)
        assert torch.equal(loaded.scores, resumed[0]["results"][name][key]), file
        assert torch.equal(resumed[0]["results"][name][key], resumed[1]["results"][name][key]), file
        assert loaded.label_fingerprint == label_fingerprint(y), file
