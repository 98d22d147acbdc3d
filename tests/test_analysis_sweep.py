import pytest
import torch

from lightning_datadiet.analysis import plot_sliding_window, sliding_window_sweep, window_offsets


def test_window_offsets():
    assert window_offsets(10, 4, 4) == [0, 2, 4, 6]
    assert window_offsets(10, 4, 1) == [6]
    assert window_offsets(5, 4, 10) == [0, 1]
    with pytest.raises(ValueError):
        window_offsets(5, 6)


def test_sweep_calls_windows_and_finds_best_offset(tmp_path):
    scores = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 0.0])  # ascending ranks: 5, 1, 3, 4, 2, 0
    calls = []

    def train_and_evaluate(kept, level):
        calls.append((kept.tolist(), level))
        return float(scores[kept].mean()) if level is None else -float(scores[kept].mean()) + level

    out = sliding_window_sweep(scores, 2, train_and_evaluate, offsets=[0, 2, 4])
    assert [c[0] for c in calls] == [[1, 5], [3, 4], [0, 2]]
    assert out["window_size"] == 2 and out["offsets"] == [0, 2, 4]
    assert out["accuracy"][None] == [0.5, 2.5, 4.5]
    assert out["best_offset"][None] == 4 and out["best_accuracy"][None] == 4.5

    noisy = sliding_window_sweep({0.0: scores, 0.2: scores}, 0.5, train_and_evaluate, num_offsets=2)
    assert noisy["window_size"] == 3 and noisy["offsets"] == [0, 3]
    assert noisy["best_offset"] == {0.0: 0, 0.2: 0}
    assert plot_sliding_window(noisy, tmp_path / "s.png", num_examples=6).exists()


def test_sweep_ties_go_to_lower_offset():
    out = sliding_window_sweep(torch.arange(8.0), 2, lambda kept, level: 1.0, num_offsets=4)
    assert out["best_offset"][None] == 0
