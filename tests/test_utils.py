"""The helpers with one copy each in the package: fraction x N (one rounding everywhere) and eval mode."""

from fractions import Fraction

import pytest
import torch
from torch import nn

from lightning_datadiet import selection
from lightning_datadiet._utils import eval_mode, fraction_count
from lightning_datadiet.analysis import corrupt_labels, noise_detection, window_offsets


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [
        (45, 0.7, 32),  # 31.5 on the decimal written; the float product 0.7 * 45 is 31.499999999999996
        (10, 0.35, 4),  # 3.5 -> 4
        (5, 0.5, 3),  # half up, not half to even (round(2.5) == 2)
        (3, 0.5, 2),
        (7, 0.5, 4),
        (3, 0.1, 0),  # may be 0: callers that need one example say so
        (0, 0.5, 0),
        (10, 1.0, 10),
        (10, 0.0, 0),
        (50_000, 0.3, 15_000),
        (1, 0.5, 1),
        (6, Fraction(1, 4), 2),  # a Fraction is taken exactly: 1.5 -> 2
    ],
)
def test_fraction_count_rounds_half_up_on_the_written_decimal(n, fraction, expected):
    assert fraction_count(n, fraction) == expected
    assert isinstance(fraction_count(n, fraction), int)


def test_fraction_count_is_the_rounding_of_every_count():
    """keep_count, the window offset/size, label noise, noise detection and the sweep's offsets use the same count."""
    for n, f in [(45, 0.7), (10, 0.35), (5, 0.5), (9, 0.5), (11, 0.45)]:
        k = fraction_count(n, f)
        assert selection.keep_count(n, f) == max(1, k)
        scores = torch.arange(float(n))
        assert selection.window(scores, size=f, offset=0).numel() == max(1, k)
        assert selection.window(scores, size=1, offset=f).tolist() == [k]  # ranks [k, k + 1) of 0, 1, ..., n - 1
        _, changed = corrupt_labels(torch.arange(n) % 3, f, mode="uniform_other", seed=1)
        assert int(changed.sum()) == k  # every drawn label changes in this mode
        assert noise_detection(scores, torch.zeros(n, dtype=torch.bool), top=f)["k"] == k
    # offsets i / (m - 1) of n - size: 0, 2.5 -> 3, 5 (half up; Python's round would give 2)
    assert window_offsets(10, 5, 3) == [0, 3, 5]
    assert selection.keep_count(3, 0.1) == 1  # keep_count adds the at-least-one rule


class _Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout())
        self.b = nn.Linear(2, 2)


def test_eval_mode_restores_every_submodule_flag_exactly():
    model = _Mixed()
    model.train()
    model.a[1].eval()  # a frozen BatchNorm inside a training model
    model.b.eval()
    before = {name: m.training for name, m in model.named_modules()}
    assert sorted(before.values()) == [False, False, True, True, True, True]
    with eval_mode(model) as inside:
        assert inside is model
        assert not any(m.training for m in model.modules())
    assert {name: m.training for name, m in model.named_modules()} == before


def test_eval_mode_restores_after_an_error_and_takes_several_modules():
    first, second = _Mixed(), nn.Linear(2, 2)
    first.a.eval()
    second.train()
    before = [m.training for m in [*first.modules(), *second.modules()]]
    with pytest.raises(RuntimeError, match="boom"), eval_mode(first, second) as both:
        assert both == (first, second)
        assert not any(m.training for m in [*first.modules(), *second.modules()])
        raise RuntimeError("boom")
    assert [m.training for m in [*first.modules(), *second.modules()]] == before


def test_no_other_copy_of_eval_mode_or_the_rounding():
    """One copy each: no module saves training flags or rounds a fraction by itself."""
    import pathlib

    root = pathlib.Path(selection.__file__).parent
    library = [root / "selection.py", root / "store.py"]
    for folder in ("data", "callbacks", "scores", "analysis"):
        library += sorted((root / folder).glob("*.py"))
    for path in library:
        text = path.read_text()
        assert "m.training = flag" not in text and "module.training = flag" not in text, path
        assert "+ 0.5)" not in text and "Fraction(1, 2)" not in text, path
    assert 0.7 * 45 < 31.5 and int(0.7 * 45 + 0.5) == 31  # why the decimal matters: float rounding gives 31
