"""examples/quickstart.py (the README's three steps) runs end to end."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"


@pytest.mark.slow
def test_quickstart_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("quickstart_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(output_dir=str(tmp_path), epochs=3, score_runs=2)
    assert set(results) == {"full", "el2n", "random"}
    assert all(0.0 <= acc <= 1.0 for acc in results.values())
    assert results["full"] > 0.5
    scores = sorted(p.name for p in (tmp_path / "scores").glob("*.scores"))
    assert "el2n_epoch002_seed0.scores" in scores and "el2n_epoch002_seed1.scores" in scores
    assert any(name.startswith("grand_epoch000") for name in scores)
    assert any(name.startswith("forgetting_") for name in scores)
