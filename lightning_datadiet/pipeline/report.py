"""``datadiet report``: the tables, the rule chosen on validation data, noisy-label detection, plots, TensorBoard
and the printed summary, rebuilt from the finished runs' files (works on partial results)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter

from lightning_datadiet.analysis.datamap import data_map_from_files
from lightning_datadiet.analysis.noise import noise_detection
from lightning_datadiet.pipeline._io import say, write_csv, write_json, write_text
from lightning_datadiet.pipeline.build import make_datamodule, quiet_lightning
from lightning_datadiet.pipeline.config import PipelineConfig
from lightning_datadiet.pipeline.plan import (
    describe,
        mean_score_path,
    plan_scoring,
    settings,
)
from lightning_datadiet.pipeline.plots import plot_accuracy, plot_histograms
from lightning_datadiet.pipeline.results import (
    RESULT_COLUMNS,
    choose_rules_on_validation,
    group,
    load_results,
)
from lightning_datadiet.store import load_scores

__all__ = ["run_report", "format_summary", "plot_data_maps"]


def _noise_rows(cfg: PipelineConfig, masks: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for s in settings(cfg):
        if s.label_noise <= 0:
            continue
        for method in cfg.methods:
            path = mean_score_path(cfg, s, method)
            if not path.exists():
                continue
            det = noise_detection(load_scores(path).scores, masks[s.name], top=s.label_noise)
            rows.append(
                {
                    "setting": s.name,
                    "method": method,
                    "top_fraction": s.label_noise,
                    "flagged": det["k"],
                    "precision": det["precision"],
                    "recall": det["recall"],
                    "base_rate": det["base_rate"],
                    "num_corrupted": det["num_corrupted"],
                }
            )
    return rows


def _tensorboard_report(cfg: PipelineConfig, results: list[dict[str, Any]]) -> Path | None:
    if not cfg.tensorboard:
        return None
    logdir = Path(cfg.output_dir) / "tensorboard" / "report"
    writer = SummaryWriter(str(logdir))
    for s in settings(cfg):
        for method in cfg.methods:
            p = mean_score_path(cfg, s, method)
            if p.exists():
                scores = load_scores(p).scores.double()
                inf = torch.isposinf(scores)
                finite = scores[torch.isfinite(scores)]
                shown = scores.clone()
                if bool(inf.any()):  # every example counted: +inf at one past the largest finite score
                    shown[inf] = (float(finite.max()) if finite.numel() else 0.0) + 1.0
                writer.add_histogram(f"scores_mean/{s.name}/{method}", shown[~torch.isnan(shown)], 0)
                writer.add_scalar(f"never_learned/{s.name}/{method}", int(inf.sum()), 0)
    for (setting, method, rule, keep), values in sorted(group(results).items()):
        # step = percent of the training set kept (100 = full data), as in every table
        writer.add_scalar(f"test_acc/{setting}/{method} {rule}", float(np.mean(values)), int(round(100 * keep)))
    writer.close()
    return logdir


def _fmt(values: list[float] | None) -> str:
    if not values:
        return "-"
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.3f}±{a.std():.3f}" if len(a) > 1 else f"{a.mean():.3f}"


def format_summary(
    cfg: PipelineConfig,
    results: list[dict[str, Any]],
    chosen: list[dict[str, Any]],
    noise: list[dict[str, Any]],
    missing: int,
) -> str:
    """The plain-text summary printed at the end (also saved as ``summary.txt``)."""
    groups = group(results)
    fractions = sorted(cfg.keep_fractions)
    lines = [
        f"datadiet: {describe(cfg)}, {cfg.epochs} epochs full-data, budget {cfg.budget}, "
        f"seeds {cfg.seeds}, scores averaged over {cfg.num_runs} run(s)",
        "test accuracy, mean±std over seeds; columns = fraction of the training set kept",
    ]
    for s in settings(cfg):
        lines.append("")
        lines.append(f"== {s.name} ==")
        width = 28
        header = f"{'method':<12}{'rule':<{width}}" + "".join(f"{f'keep={f:g}':>16}" for f in fractions)
        lines.append(header)
        lines.append(f"{'full data':<12}{'-':<{width}}{_fmt(groups.get((s.name, 'full', 'full', 1.0))):>16}")
        rows = sorted(
            {(m, r) for (st, m, r, _f) in groups if st == s.name and m != "full"},
            key=lambda t: (t[0] != "random", t),
        )
        for method, rule in rows:
            cells = "".join(f"{_fmt(groups.get((s.name, method, rule, f))):>16}" for f in fractions)
            lines.append(f"{method:<12}{rule:<{width}}{cells}")
        for row in (r for r in noise if r["setting"] == s.name):
            lines.append(
                f"noisy labels caught by the top {row['top_fraction']:.0%} {row['method']} scores: precision "
                f"{row['precision']:.3f}, recall {row['recall']:.3f} (random pick: {row['base_rate']:.3f})"
            )
        picks = [c for c in chosen if c["setting"] == s.name]
        if picks:
            lines.append("rule chosen on validation data (mean val acc -> test acc):")
            for c in picks:
                verdict = (
                    "RANDOM WINS" if c["random_wins"] else f"beats random (val {c['random_val_acc']:.3f})"
                )
                test = f"{c['chosen_test_acc']:.3f}" if c["chosen_test_acc"] is not None else "-"
                lines.append(
                    f"  {c['method']:<11} keep={c['keep_fraction']:<5g} {c['chosen_rule']:<24} val "
                    f"{c['chosen_val_acc']:.3f} -> test {test}  {verdict}"
                )
            wins = sum(c["random_wins"] for c in picks)
            if wins:
                lines.append(
                    f"  random wins {wins} of {len(picks)} choices: there the scores did not beat a random subset."
                )
    if missing:
        lines.append("")
        lines.append(
            f"{missing} planned run(s) have no result yet: run `datadiet train` (or `demo`) with the same options."
        )
    return "\n".join(lines)


def run_report(cfg: PipelineConfig) -> dict[str, Any]:
    """Report stage: rebuild the tables from the per-run result files, choose rules on validation, measure noisy
    label detection, plot, log TensorBoard histograms and print the summary. Works on partial results.

    Returns:
        Paths of what was written and the summary text.
    """
    cfg = cfg.validate()
    out = Path(cfg.output_dir)
    results, missing = load_results(cfg)
    rows = sorted(
        results, key=lambda r: (r["setting"], r["method"], r["rule"], r["keep_fraction"], r["seed"])
    )
    written: dict[str, Any] = {}
    write_csv(out / "results.csv", rows, RESULT_COLUMNS)
    write_json(out / "results.json", [{c: r.get(c) for c in RESULT_COLUMNS} for r in rows])
    written.update(results_csv=out / "results.csv", results_json=out / "results.json")
    chosen = choose_rules_on_validation(rows) if cfg.select_on_val else []
    if chosen:
        write_json(out / "rule_selection.json", chosen)
        write_csv(out / "rule_selection.csv", chosen, [k for k in chosen[0] if k != "candidates_val_acc"])
        written["rule_selection"] = out / "rule_selection.json"
    masks: dict[str, Any] = {}
    for s in settings(cfg):
        if s.label_noise > 0:
            with quiet_lightning(cfg):
                masks[s.name] = make_datamodule(cfg, s.label_noise).corrupted_mask
    noise = _noise_rows(cfg, masks)
    if noise:
        write_json(out / "noise_detection.json", noise)
        write_csv(out / "noise_detection.csv", noise, list(noise[0]))
        written["noise_detection"] = out / "noise_detection.json"
    if rows:
        written["plot"] = plot_accuracy(cfg, rows, out / "accuracy_vs_kept.png")
    hist = plot_histograms(cfg, masks, out / "score_histograms.png")
    if hist is not None:
        written["histograms"] = hist
    written.update(plot_data_maps(cfg, masks, out))
    tb = _tensorboard_report(cfg, rows)
    if tb is not None:
        written["tensorboard"] = tb
    summary = format_summary(cfg, rows, chosen, noise, len(missing))
    write_text(out / "summary.txt", summary + "\n")
    written["summary"] = out / "summary.txt"
    say("")
    say(summary)
    say("")
    say(
        f"results: {out / 'results.csv'}; plot: {written.get('plot', '-')}; TensorBoard: tensorboard --logdir {out / 'tensorboard'}"
    )
    return {"paths": written, "summary": summary, "results": rows, "missing": len(missing)}


def plot_data_maps(cfg: PipelineConfig, masks: dict[str, Any], out: Path) -> dict[str, Path]:
    """One data map PNG per setting (``data_map_<setting>.png``) from its first scoring run's training dynamics,
    corrupted examples marked when labels were corrupted."""
    written: dict[str, Path] = {}
    for s in settings(cfg):
        runs = [r for r in plan_scoring(cfg) if r.setting == s]
        if not runs:
            continue
        files = sorted(runs[0].directory.glob(f"*_seed{runs[0].seed}.scores"))
        files = [f for f in files if f.name.split("_epoch")[0] in ("confidence", "variability", "correctness")]
        latest = max((f.name.split("_epoch")[1][:3] for f in files), default=None)
        files = [f for f in files if latest is not None and f"_epoch{latest}" in f.name]
        path = data_map_from_files(files, out / f"data_map_{s.name}.png", corrupted=masks.get(s.name),
                                   title=f"{s.name}, seed {runs[0].seed}")  # fmt: skip
        if path is not None:
            written[f"data_map_{s.name}"] = path
    return written
