"""Selection rules against hand-computed indices and a naive reference; errors; the retraining budget."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from lightning_datadiet import selection as S

INF = float("inf")


def naive_order(scores):
    """Ascending (score, index): the documented ranking, by Python's sort."""
    return [i for _, i in sorted((float(s), i) for i, s in enumerate(scores))]


def naive_quotas(labels, k):
    labels = [int(v) for v in labels]
    n, num_classes = len(labels), max(labels) + 1
    exact = [Fraction(k * labels.count(c), n) for c in range(num_classes)]
    quotas = [int(q) for q in exact]
    by_rem = sorted(range(num_classes), key=lambda c: (-(exact[c] - quotas[c]), c))
    for c in by_rem[: k - sum(quotas)]:
        quotas[c] += 1
    return quotas


def naive_per_class(scores, labels, k, pick):
    """Apply `pick(ranked_members, quota)` within each class, in the documented ranking."""
    quotas = naive_quotas(labels, k)
    kept = []
    for c, q in enumerate(quotas):
        members = [i for i in naive_order(scores) if int(labels[i]) == c]
        kept += pick(members, q)
    return sorted(kept)


# --------------------------------------------------------------------------------------------- hand-computed


def test_rank_order_ties_and_infinities():
    s = torch.tensor([0.5, 0.1, 0.5, INF, 0.1, -INF, -0.0, 0.0])
    # -inf, then -0.0 == 0.0 (tie: index order), 0.1 x2, 0.5 x2, +inf
    assert S.rank_order(s).tolist() == [5, 6, 7, 1, 4, 0, 2, 3]


def test_highest_lowest_hand_computed_with_ties():
    s = torch.tensor([0.3, 0.9, 0.3, 0.1, 0.3])  # ranks: 3 | 0 2 4 | 1
    assert S.highest(s, 1).tolist() == [1]
    assert S.highest(s, 2).tolist() == [1, 4]  # among the tied 0.3s the larger index is kept
    assert S.highest(s, 3).tolist() == [1, 2, 4]
    assert S.lowest(s, 2).tolist() == [0, 3]  # among the tied 0.3s the smaller index is kept
    assert S.lowest(s, 3).tolist() == [0, 2, 3]
    assert S.highest(s, 5).tolist() == [0, 1, 2, 3, 4]


def test_integer_scores_forgetting_with_inf():
    counts = torch.tensor([2, 0, 0, 5, 1, 0, 2])  # int scores (forgetting counts) are accepted
    assert S.highest(counts, 3).tolist() == [0, 3, 6]
    never_learned = torch.tensor([2.0, 0.0, INF, 5.0, 1.0, 0.0, 2.0])
    assert S.highest(never_learned, 2).tolist() == [2, 3]  # +inf kept first
    assert S.lowest(never_learned, 2).tolist() == [1, 5]


def test_fractions_round_half_up_and_odd_sizes():
    s = torch.arange(7, dtype=torch.float32).flip(0)  # index i has score 6 - i
    assert S.keep_count(7, 0.5) == 4  # 3.5 -> 4
    assert S.keep_count(5, 0.5) == 3
    assert S.keep_count(10, 0.35) == 4  # exact decimal: 3.5 -> 4, not 3.4999...
    assert S.keep_count(10, 0.34) == 3
    assert S.keep_count(1000, 0.0001) == 1  # at least one
    assert S.keep_count(7, 1.0) == 7
    assert S.highest(s, 0.5).tolist() == [0, 1, 2, 3]
    assert S.lowest(s, 0.5).tolist() == [3, 4, 5, 6]
    assert S.highest(s, 3).tolist() == [0, 1, 2]  # an int is a count


def test_window_hand_computed():
    s = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0])  # ascending ranks: 1, 3, 4, 2, 0
    assert S.window(s, size=2, offset=1).tolist() == [3, 4]
    assert S.window(s, size=2, offset=0).tolist() == S.lowest(s, 2).tolist()
    assert S.window(s, size=2, offset=3).tolist() == S.highest(s, 2).tolist()
    assert S.window(s, size=0.4, offset=0.2).tolist() == [3, 4]  # fractions of N = 5
    # "keep the top 2 but drop the single highest" = ranks [5 - 1 - 2, 5 - 1)
    assert S.window(s, size=2, offset=2).tolist() == [2, 4]
    ties = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
    assert S.window(ties, size=2, offset=2).tolist() == [2, 3]  # all tied: ranks are indices


def test_random_seeded_and_uniformish():
    a = S.random(100, 10, seed=3)
    assert a.tolist() == S.random(torch.zeros(100), 10, seed=3).tolist()
    assert a.tolist() == sorted(set(a.tolist())) and len(a) == 10
    assert a.tolist() != S.random(100, 10, seed=4).tolist()
    hits = torch.zeros(20)
    for seed in range(400):
        hits[S.random(20, 5, seed=seed)] += 1
    assert hits.sum() == 2000 and hits.min() > 60 and hits.max() < 140  # expected 100 each


def test_class_quotas_hand_computed():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    assert S.class_quotas(labels, 4).tolist() == [2, 1, 1]  # exact 2, 1.33, 0.67
    assert S.class_quotas(labels, 3).tolist() == [2, 1, 0]  # exact 1.5, 1, 0.5: tie in remainders -> class 0
    assert S.class_quotas(labels, 6).tolist() == [3, 2, 1]
    assert S.class_quotas(labels, 1).tolist() == [1, 0, 0]
    assert S.class_quotas(torch.tensor([0, 2, 2]), 2).tolist() == [1, 0, 1]  # absent class 1 gets 0
    assert S.class_quotas(labels, 4, num_classes=5).tolist() == [2, 1, 1, 0, 0]


@pytest.mark.parametrize("seed", range(5))
def test_class_quotas_sum_exactly_and_match_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(5, 200, (1,), generator=g))
    labels = torch.randint(0, 7, (n,), generator=g)
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
    for k in range(0, n + 1, max(1, n // 17)):
        q = S.class_quotas(labels, k)
        assert int(q.sum()) == k
        assert bool((q <= counts).all())
        assert q.tolist() == naive_quotas(labels, k)


def test_class_balanced_hand_computed():
    #                  0    1    2    3    4    5    6
    s = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.2, 0.2, 0.8])
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    # k = 3: quotas 3*3/7 = 1.29 -> 1, 3*4/7 = 1.71 -> 2
    assert S.class_quotas(labels, 3).tolist() == [1, 2]
    assert S.highest(s, 3, labels=labels, class_balanced=True).tolist() == [0, 3, 6]
    assert S.lowest(s, 3, labels=labels, class_balanced=True).tolist() == [1, 4, 5]  # 0.2 tie: both kept
    # class 1 ranks: 4 (0.2), 5 (0.2), 3 (0.7), 6 (0.8); k = 2 -> quotas [1, 1] (0.86 vs 1.14: remainder to class 0)
    assert S.class_quotas(labels, 2).tolist() == [1, 1]
    assert S.lowest(s, 2, labels=labels, class_balanced=True).tolist() == [1, 4]  # 0.2 tie: smaller index
    assert S.highest(s, 2, labels=labels, class_balanced=True).tolist() == [0, 6]
    # window size 3, offset 2: quotas [1, 2], per-class offsets [1, 1]
    # class 0 ranks 1, 2, 0 -> rank 1 = index 2; class 1 ranks 4, 5, 3, 6 -> ranks 1..2 = indices 5, 3
    assert S.window(s, 3, 2, labels=labels, class_balanced=True).tolist() == [2, 3, 5]
    r = S.random(s, 3, seed=0, labels=labels, class_balanced=True)
    assert torch.bincount(labels[r]).tolist() == [1, 2]


@pytest.mark.parametrize("seed", range(4))
def test_rules_match_naive_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n = 101  # odd
    s = torch.randint(0, 12, (n,), generator=g).float() / 4  # many ties
    s[torch.randint(0, n, (3,), generator=g)] = INF
    labels = torch.randint(0, 4, (n,), generator=g)
    order = naive_order(s)
    for k in (1, 2, 17, 50, 51, 100, 101):
        assert S.highest(s, k).tolist() == sorted(order[n - k :])
        assert S.lowest(s, k).tolist() == sorted(order[:k])
        assert S.select(s, k, "highest").tolist() == sorted(order[n - k :])
        for off in sorted({0, min(3, n - k), n - k}):
            assert S.window(s, k, off).tolist() == sorted(order[off : off + k])
        hi = S.highest(s, k, labels=labels, class_balanced=True)
        lo = S.lowest(s, k, labels=labels, class_balanced=True)
        assert len(hi) == len(lo) == k
        assert hi.tolist() == naive_per_class(s, labels, k, lambda m, q: m[len(m) - q :])
        assert lo.tolist() == naive_per_class(s, labels, k, lambda m, q: m[:q])
        rnd = S.random(s, k, seed=seed, labels=labels, class_balanced=True)
        quotas = naive_quotas(labels, k)
        assert torch.bincount(labels[rnd], minlength=len(quotas)).tolist() == quotas


def test_select_dispatch_equals_rules():
    s = torch.tensor([0.4, 0.2, 0.9, 0.1, 0.6, 0.3])
    assert S.SELECTION_RULES == ("highest", "lowest", "random", "window", "coverage")
    assert S.select(s, 0.5).tolist() == S.highest(s, 3).tolist() == [0, 2, 4]
    assert S.select(s, 0.5, "lowest").tolist() == [1, 3, 5]
    assert S.select(s, 2, "window", offset=2).tolist() == [0, 5]
    assert S.select(s, 3, "random", seed=7).tolist() == S.random(s, 3, seed=7).tolist()
    assert S.select(s, 3, "coverage", seed=1, num_strata=2).tolist() == S.coverage(s, 3, seed=1, num_strata=2).tolist()


# ------------------------------------------------------------------------------------------------------- CCS


def test_coverage_hand_computed_strata():
    s = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 9.0, 10.0])
    # two strata over [0, 10]: [0, 5) holds indices 0..4, [5, 10] holds 5, 6
    # budget 4: the small stratum gives its share 2, the other gets 4 - 2 = 2
    for seed in range(10):
        kept = S.coverage(s, 4, num_strata=2, seed=seed).tolist()
        assert 5 in kept and 6 in kept and len(kept) == 4
    # budget 5: the high stratum (smaller, served first) gets 5 // 2 = 2, the low one the remaining 3
    kept = S.coverage(s, 5, num_strata=2).tolist()
    assert {5, 6} <= set(kept) and len(set(kept) & {0, 1, 2, 3, 4}) == 3
    # beta drops the hardest: with beta = 2/7 the two high scores go, leaving one stratum
    s2 = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 9.0, 10.0])
    kept = S.coverage(s2, 3, beta=0.28, num_strata=2).tolist()  # round(7 * 0.28 = 1.96) = 2 dropped
    assert set(kept) <= {0, 1, 2, 3, 4} and len(kept) == 3


def test_coverage_strata_budgets_redistribute():
    # 4 strata of width 1 over [0, 4] (4.0 joins the last): sizes [1, 1, 10, 2]; budget 8, smallest first:
    # 8 // 4 = 2 -> 1 (all it has), 7 // 3 = 2 -> 1, 6 // 2 = 3 -> 2 (all it has), the last gets the remaining 4
    s = torch.cat([torch.tensor([0.0, 1.5]), torch.full((10,), 2.5), torch.tensor([3.5, 4.0])])
    kept = S.coverage(s, 8, num_strata=4, seed=0)
    strata = torch.tensor([0, 1] + [2] * 10 + [3, 3])
    assert torch.bincount(strata[kept], minlength=4).tolist() == [1, 1, 4, 2]
    assert S._stratum_budgets([0, 1, 1, 10, 2, 0], 8) == [0, 1, 1, 4, 2, 0]
    assert S._stratum_budgets([5, 5, 5], 10) == [3, 3, 4]


def test_coverage_infinite_scores_get_their_own_stratum():
    s = torch.tensor([0.0, 1.0, 2.0, 3.0, INF, INF])
    kept = S.coverage(s, 2, num_strata=1, seed=0).tolist()  # one finite stratum, one +inf stratum: one each
    assert len(set(kept) & {4, 5}) == 1
    assert S.coverage(s, 2, beta=0.34, num_strata=1).tolist() == S.coverage(s, 2, beta=0.34, num_strata=1).tolist()
    assert set(S.coverage(s, 4, beta=0.34, num_strata=3).tolist()) == {0, 1, 2, 3}  # beta drops both infs


def test_coverage_seeded_class_balanced():
    g = torch.Generator().manual_seed(0)
    s = torch.rand(300, generator=g)
    labels = torch.randint(0, 3, (300,), generator=g)
    a = S.coverage(s, 0.2, beta=0.1, seed=5, labels=labels, class_balanced=True)
    assert a.tolist() == S.coverage(s, 0.2, beta=0.1, seed=5, labels=labels, class_balanced=True).tolist()
    assert torch.bincount(labels[a], minlength=3).tolist() == S.class_quotas(labels, 60).tolist()
    for c in range(3):  # nothing from the hardest 10% of each class
        members = (labels == c).nonzero().flatten()
        ranked = members[S.rank_order(s[members])]
        drop = int(Fraction(len(members)) * Fraction(1, 10) + Fraction(1, 2))
        assert not set(ranked[len(ranked) - drop :].tolist()) & set(a.tolist())


def test_coverage_spreads_over_range_unlike_highest():
    s = torch.linspace(0, 1, 1000) ** 4  # most examples at low scores
    kept = S.coverage(s, 100, num_strata=10, seed=0)
    strata = (s.double() / s.max() * 10).floor().clamp(max=9).long()
    assert int(torch.bincount(strata).min()) > 10  # every stratum can give its share
    assert torch.bincount(strata[kept], minlength=10).tolist() == [10] * 10
    assert int((s[S.highest(s, 100)] < 0.5).sum()) == 0  # whereas `highest` takes none of the easy half


# ---------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_keep_fraction_outside_range(bad):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        S.keep_count(10, bad)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        S.select(torch.rand(10), bad)


def test_bad_counts_and_names():
    s = torch.rand(10)
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        S.highest(s, 11)
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        S.highest(s, 0)
    with pytest.raises(ValueError, match="Unknown selection rule 'median'.*'highest'"):
        S.select(s, 0.5, "median")
    with pytest.raises(ValueError, match="needs `offset`"):
        S.select(s, 0.5, "window")
    with pytest.raises(ValueError, match="only applies to selection='window'"):
        S.select(s, 0.5, "highest", offset=2)
    with pytest.raises(ValueError, match="run past"):
        S.window(s, 5, 6)
    with pytest.raises(ValueError, match="labels="):
        S.highest(s, 5, class_balanced=True)
    with pytest.raises(ValueError, match="same examples"):
        S.highest(s, 5, labels=torch.zeros(9, dtype=torch.long), class_balanced=True)
    with pytest.raises(ValueError, match="beta"):
        S.coverage(s, 5, beta=1.0)
    with pytest.raises(TypeError):
        S.highest(torch.rand(2, 5), 1)


def test_nan_and_inf_scores():
    s = torch.tensor([0.1, float("nan"), 0.3])
    for rule in ("highest", "lowest", "coverage"):
        with pytest.raises(ValueError, match="NaN.*indices \\[1\\]"):
            S.select(s, 1, rule)
    with pytest.raises(ValueError, match="NaN"):
        S.window(s, 1, 0)
    with pytest.raises(ValueError, match="allow_infinite=True"):
        S.check_scores(torch.tensor([0.1, INF]), allow_infinite=False)


def test_impossible_class_quota():
    s = torch.tensor([0.1, 0.2, 0.3, 0.4])
    labels = torch.tensor([0, 0, 0, 1])
    # window of 2 from offset 2: quotas [2, 0] and per-class offsets [2, 0]: class 0 would need ranks [2, 4) of 3
    with pytest.raises(ValueError, match="Class 0 cannot fill its quota.*lower `offset`"):
        S.window(s, 2, 2, labels=labels, class_balanced=True)
    # CCS: dropping the hardest 50% of each class leaves too few for the quota
    with pytest.raises(ValueError, match="Class 0 cannot fill its quota.*Lower `beta`"):
        S.coverage(s, 3, beta=0.5, labels=labels, class_balanced=True)
    with pytest.raises(ValueError, match="cannot fill its quota.*Lower `beta`"):
        S.coverage(s, 3, beta=0.5)


# ----------------------------------------------------------------------------------------- retraining budget


def test_same_steps_epochs():
    assert S.same_steps_epochs(200, 50_000, 25_000) == 400
    assert S.same_steps_epochs(200, 50_000, 35_000) == 286  # ceil(285.7)
    # steps: ceil(50000 / 128) = 391 per full epoch, ceil(20000 / 128) = 157 per subset epoch
    assert S.same_steps_epochs(200, 50_000, 20_000, batch_size=128) == 499
    # drop_last: 390 and 156 steps -> exactly 500
    assert S.same_steps_epochs(200, 50_000, 20_000, batch_size=128, drop_last=True) == 500
    # 2 ranks: ceil(25000 / 128) = 196 vs ceil(10000 / 128) = 79 -> ceil(39200 / 79) = 497
    assert S.same_steps_epochs(200, 50_000, 20_000, batch_size=128, world_size=2) == 497
    assert S.same_steps_epochs(10, 100, 100) == 10
    assert S.retrain_epochs(200, 50_000, 25_000) == 400
    assert S.retrain_epochs(200, 50_000, 25_000, "same_epochs") == 200
    with pytest.raises(ValueError, match="same_steps"):
        S.retrain_epochs(200, 50_000, 25_000, "same_time")
    with pytest.raises(ValueError, match="no batch"):
        S.same_steps_epochs(10, 1000, 10, batch_size=64, drop_last=True)
    with pytest.raises(ValueError, match="cannot exceed"):
        S.same_steps_epochs(10, 100, 200)


# ------------------------------------------------------------------------------------------------------ speed


@pytest.mark.slow
def test_two_million_examples_correct_counts():
    """Every rule handles N = 2M (timings are a benchmark: benchmarks/bench_scale.py, not a timed test)."""
    n = 2_000_000
    g = torch.Generator().manual_seed(0)
    s = torch.rand(n, generator=g)
    labels = torch.randint(0, 100, (n,), generator=g)
    calls = {
        "highest": lambda: S.highest(s, 0.5),
        "highest class-balanced": lambda: S.highest(s, 0.5, labels=labels, class_balanced=True),
        "window": lambda: S.window(s, 0.5, 0.25),
        "random class-balanced": lambda: S.random(s, 0.5, labels=labels, class_balanced=True),
        "coverage": lambda: S.coverage(s, 0.3, beta=0.1),
        "coverage class-balanced": lambda: S.coverage(s, 0.3, beta=0.1, labels=labels, class_balanced=True),
    }
    for name, call in calls.items():
        kept = call()
        assert kept.numel() in (600_000, 1_000_000), name
        assert bool((kept[1:] > kept[:-1]).all()), name  # sorted, unique


def test_random_tie_break_spreads_tied_examples_and_is_seeded():
    # forgetting-like scores on a class-ordered dataset: 60 of 100 examples tie at +inf
    labels = torch.arange(100) // 10  # sorted by class
    scores = torch.zeros(100)
    scores[torch.arange(0, 100, 5)] = 1.0  # 20 finite, distinct-ish
    scores[torch.arange(100) % 5 >= 2] = float("inf")
    by_index = S.select(scores, 10, "highest")
    assert torch.isinf(scores[by_index]).all()
    assert labels[by_index].unique().tolist() == [8, 9]  # index order keeps the last tied examples only
    by_random = S.select(scores, 10, "highest", tie_break="random", seed=3)
    assert torch.isinf(scores[by_random]).all() and by_random.numel() == 10
    assert labels[by_random].unique().numel() > 2
    assert torch.equal(by_random, S.select(scores, 10, "highest", tie_break="random", seed=3))
    assert not torch.equal(by_random, S.select(scores, 10, "highest", tie_break="random", seed=4))
    # without ties, the tie-break changes nothing (every rule that ranks)
    distinct = torch.randperm(100, generator=torch.Generator().manual_seed(0)).float()
    for rule, kw in [("highest", {}), ("lowest", {}), ("window", {"offset": 20})]:
        assert torch.equal(
            S.select(distinct, 30, rule, **kw), S.select(distinct, 30, rule, tie_break="random", seed=9, **kw)
        )
    with pytest.raises(ValueError, match="tie_break"):
        S.select(scores, 10, "highest", tie_break="nope")
