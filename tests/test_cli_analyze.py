"""`datadiet analyze`: stability report over score files, against a direct Spearman computation."""

import torch

from lightning_datadiet.cli import main
from lightning_datadiet.store import save_scores


def _spearman(a, b):
    ra = torch.empty_like(a).scatter_(0, a.argsort(), torch.arange(len(a), dtype=a.dtype))
    rb = torch.empty_like(b).scatter_(0, b.argsort(), torch.arange(len(b), dtype=b.dtype))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def test_analyze_writes_table_csv_and_heatmap(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(200, generator=g, dtype=torch.float64)
    paths = []
    for seed in range(3):
        noisy = base + 0.3 * torch.rand(200, generator=g, dtype=torch.float64)
        paths.append(str(save_scores(tmp_path / f"el2n_s{seed}.scores", noisy.float(), method="el2n", epoch=2, seed=seed)))
    out = tmp_path / "an"
    assert main(["analyze", "--scores", "[" + ",".join(paths) + "]", "--output-dir", str(out)]) == 0
    text = (out / "stability.md").read_text()
    assert (out / "stability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "stability.csv").exists()
    from lightning_datadiet import load_scores

    a, b = load_scores(paths[0]).scores.double(), load_scores(paths[1]).scores.double()
    assert f"{_spearman(a, b):.3f}" in text
    assert "mean" in capsys.readouterr().out


def test_analyze_refuses_files_from_different_datasets(tmp_path, capsys):
    a = save_scores(tmp_path / "a.scores", torch.rand(10), method="el2n", labels=torch.arange(10) % 2)
    b = save_scores(tmp_path / "b.scores", torch.rand(10), method="el2n", labels=torch.arange(10) % 3)
    assert main(["analyze", "--scores", f"[{a},{b}]", "--output-dir", str(tmp_path / "o")]) == 2
    assert "fingerprint" in capsys.readouterr().err.lower()
    assert main(["analyze", "--scores", f"[{a}]"]) == 2
