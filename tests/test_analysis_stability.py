import math
import types

import pytest
import scipy.stats
import torch

from lightning_datadiet.analysis import (
    StabilityTable,
    plot_heatmap,
    rank_correlation,
    single_vs_mean,
    stability_report,
)
from lightning_datadiet.analysis import stability as stability_module


def _pair(n, seed=0, ties=False):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g, dtype=torch.float64)
    b = a + torch.randn(n, generator=g, dtype=torch.float64)
    if ties:
        a = torch.round(a * 2)
    return a, b


def _hand_spearman(a, b):
    # Tie-free data: rho = 1 - 6 sum d^2 / (n (n^2 - 1)), with ranks from a double argsort.
    n = a.numel()
    ra = torch.argsort(torch.argsort(a)).double()
    rb = torch.argsort(torch.argsort(b)).double()
    return 1 - 6 * float(((ra - rb) ** 2).sum()) / (n * (n * n - 1))


@pytest.mark.parametrize("n", [3, 10, 500])
def test_spearman_matches_direct_rank_computation(n):
    a, b = _pair(n, seed=n)
    assert rank_correlation(a, b) == pytest.approx(_hand_spearman(a, b), abs=1e-6)
    assert rank_correlation(a.float(), b.float()) == pytest.approx(_hand_spearman(a, b), abs=1e-6)


@pytest.mark.parametrize("n", [20, 2000])
def test_spearman_with_ties_matches_scipy(n):
    a, b = _pair(n, seed=1, ties=True)
    expected = scipy.stats.spearmanr(a.numpy(), b.numpy()).statistic
    assert rank_correlation(a, b) == pytest.approx(expected, abs=1e-6)


def test_large_n_fallback_matches_torchmetrics_path(monkeypatch):
    a, b = _pair(3000, seed=2, ties=True)
    expected = rank_correlation(a, b)
    monkeypatch.setattr(stability_module, "_TORCHMETRICS_SAFE_N", 10)
    assert rank_correlation(a, b) == pytest.approx(expected, abs=1e-6)
    assert rank_correlation(a, b) == pytest.approx(
        scipy.stats.spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-12
    )


def test_infinite_scores_rank_above_finite():
    a = torch.tensor([0.0, 3.0, float("inf"), 1.0, float("inf"), -float("inf")])
    b = torch.tensor([0.0, 3.0, 10.0, 1.0, 10.0, -5.0])
    assert rank_correlation(a, b) == pytest.approx(1.0, abs=1e-6)
    assert rank_correlation(a, -b) == pytest.approx(-1.0, abs=1e-6)


def test_degenerate_inputs():
    assert math.isnan(rank_correlation(torch.ones(5), torch.arange(5.0)))
    with pytest.raises(ValueError, match="length"):
        rank_correlation(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        rank_correlation(torch.tensor([1.0, float("nan")]), torch.ones(2))


def test_stability_report_symmetric_with_unit_diagonal(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(200, generator=g)
    vectors = {f"v{i}": base + 0.5 * i * torch.randn(200, generator=g) for i in range(4)}
    table = stability_report(vectors)
    assert isinstance(table, StabilityTable) and table.names == ["v0", "v1", "v2", "v3"]
    assert table.matrix.shape == (4, 4) and table.matrix.dtype == torch.float64
    assert torch.equal(table.matrix, table.matrix.T)
    assert torch.equal(torch.diagonal(table.matrix), torch.ones(4, dtype=torch.float64))
    assert table["v1", "v3"] == pytest.approx(rank_correlation(vectors["v1"], vectors["v3"]))
    assert table.matrix[0, 1] > table.matrix[0, 3]

    csv_text = table.to_csv(tmp_path / "t.csv").read_text().splitlines()
    assert csv_text[0] == ",v0,v1,v2,v3" and csv_text[1].startswith("v0,1.000000,")
    md = table.to_markdown()
    assert md.splitlines()[0] == "| | v0 | v1 | v2 | v3 |" and len(md.splitlines()) == 6
    out = plot_heatmap(table, tmp_path / "fig" / "heat.png", title="test")
    assert out.exists() and out.read_bytes()[:4] == b"\x89PNG"


def test_stability_report_names_from_score_files_and_paths(tmp_path, monkeypatch):
    scores = torch.arange(10.0)
    files = [
        types.SimpleNamespace(scores=scores, method="el2n", epoch=20, seed=0),
        types.SimpleNamespace(scores=scores.flip(0), method="el2n", epoch=200, seed=0),
        scores,
    ]
    table = stability_report(files)
    assert table.names == ["el2n@20 s0", "el2n@200 s0", "scores[2]"]
    assert table["el2n@20 s0", "el2n@200 s0"] == pytest.approx(-1.0, abs=1e-6)
    assert stability_report(files, labels=["a", "b", "c"]).names == ["a", "b", "c"]
    assert stability_report([scores, scores], labels=["x", "x"]).names == ["x", "x#1"]

    fake = lambda path: types.SimpleNamespace(scores=scores, method="forgetting", epoch=None, seed=3)  # noqa: E731
    monkeypatch.setattr(stability_module, "load_scores", fake)
    assert stability_report([tmp_path / "a.pt"]).names == ["forgetting s3"]


def test_single_vs_mean_by_hand():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(300, generator=g)
    runs = [base + torch.randn(300, generator=g) for _ in range(3)]
    out = single_vs_mean(runs)
    assert out["k"] == 2
    expected = [rank_correlation(runs[i], (runs[(i + 1) % 3] + runs[(i + 2) % 3]) / 2) for i in range(3)]
    assert out["per_run"].tolist() == pytest.approx(expected)
    assert out["mean"] == pytest.approx(sum(expected) / 3)
    one = single_vs_mean(runs, k=1)
    assert one["per_run"][0] == pytest.approx(rank_correlation(runs[0], runs[1]))
    with_self = single_vs_mean(runs, include_self=True)
    assert with_self["k"] == 3 and with_self["mean"] > out["mean"]
    with pytest.raises(ValueError, match="k"):
        single_vs_mean(runs, k=3)


def test_stability_report_from_real_score_files(tmp_path):
    store = pytest.importorskip("lightning_datadiet.store")
    g = torch.Generator().manual_seed(0)
    base = torch.rand(50, generator=g)
    paths = [
        store.save_scores(
            tmp_path / f"el2n_e3_s{s}",
            base + 0.1 * torch.rand(50, generator=g),
            method="el2n",
            epoch=3,
            seed=s,
        )
        for s in range(3)
    ]
    mean = store.average_scores(paths)
    table = stability_report([*paths, mean])
    assert table.names == ["el2n@3 s0", "el2n@3 s1", "el2n@3 s2", "el2n@3"]
    assert table["el2n@3 s0", "el2n@3"] == pytest.approx(
        rank_correlation(store.load_scores(paths[0]).scores, mean.scores)
    )
