"""Scale smoke test at N = 1,000,000 (the 10M figures are a benchmark: benchmarks/bench_scale.py)."""

import pytest
import torch

from lightning_datadiet import load_scores, save_scores, selection
from lightning_datadiet.scores import ForgettingState, forgetting_update

N = 1_000_000


def test_score_file_round_trip_at_one_million(tmp_path):
    scores = torch.rand(N)
    scores[::1000] = float("inf")
    labels = torch.randint(0, 10, (N,))
    path = save_scores(tmp_path / "big.scores", scores, method="forgetting", epoch=3, labels=labels)
    loaded = load_scores(path)
    assert torch.equal(loaded.scores, scores) and loaded.num_samples == N
    assert path.stat().st_size < 4 * N + 4096  # float32 payload plus a small header


@pytest.mark.parametrize(
    "rule,kwargs",
    [("highest", {}), ("lowest", {}), ("random", {}), ("window", {"offset": 0.2}), ("coverage", {"beta": 0.1})],
)
@pytest.mark.parametrize("balanced", [False, True])
def test_every_rule_at_one_million(rule, kwargs, balanced):
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(N, generator=g)
    labels = torch.randint(0, 10, (N,), generator=g)
    kept = selection.select(scores, 0.3, rule, labels=labels, class_balanced=balanced, **kwargs)
    assert kept.numel() == 300_000
    assert bool((kept[1:] > kept[:-1]).all()) and int(kept[0]) >= 0 and int(kept[-1]) < N
    if rule == "highest" and not balanced:
        assert scores[kept].min() >= torch.topk(scores, 300_000).values.min()


def test_forgetting_state_is_dense_and_exact_at_one_million():
    state = ForgettingState(N)
    assert sum(t.nbytes for t in state.state_dict().values()) == 6 * N
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, N, (2 * N,), generator=g)  # with repeats
    correct = torch.rand(2 * N, generator=g) > 0.5
    forgetting_update(state, idx, correct)
    # independent check on a few examples: walk their presentations in order
    for i in idx[:20].tolist():
        seq = correct[idx == i].tolist()
        assert int(state.forgotten[i]) == sum(1 for a, b in zip(seq, seq[1:]) if a and not b)
        assert bool(state.ever_correct[i]) == any(seq)
