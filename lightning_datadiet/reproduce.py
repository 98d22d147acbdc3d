"""``datadiet reproduce``: the Data Diet pruning protocol of Kirsch's hlb-CIFAR10 reproduction, as one command.

It is the ordinary study (:mod:`lightning_datadiet.pipeline`: score, retrain, report, resumable) with the
``airbench`` recipe and a size preset chosen by ``--scale``; every study option given on the command line (or in
``--config``) applies on top of the preset. After the study's own report it writes the verdict table:
per keep fraction, score method and rule, the test accuracy (mean +- std and 16th-84th percentile over the
retraining seeds), the random subset's, the margin (score - random, in accuracy points) with its spread (the
standard error of the difference of the two means), and the verdict: ``score beats random`` or ``random wins``
(``, within noise`` when the margin is inside its spread).

Protocol (all scales): EL2N early in training averaged over several scoring runs, GraNd at initialisation and
forgetting counts alongside, keep 90/70/50/40%, rules ``highest`` (the paper) and ``coverage`` (CCS) plus the
random subset and the full-data baseline, several retraining seeds, the same-steps budget (a 50% subset trains
twice the epochs). Verdicts are read on the test split, as in Kirsch's and the paper's tables (no rule is selected,
so nothing is tuned on it).

Scales (``--scale``):

- ``smoke``: a few hundred images are enough; width-4 net, 2 epochs, 2 scoring runs, EL2N subsets retrained;
  checks the plumbing.
- ``cpu``: all 50,000 training images, width 16 (16/64/64), batch 256, lr 0.15, 4 epochs, EL2N at epoch 1 over
  4 runs (GraNd at init and forgetting over the 2 scoring epochs scored alongside), 3 seeds; retrains EL2N subsets
  only (``--retrain_methods``); about 80 minutes on 2 CPU cores (docs/reproduction.md).
- ``gpu``: all 50,000 images, width 64 (64/256/256), batch 1024, lr 0.4, 10 epochs, bf16, EL2N at epoch 1 over
  10 runs, forgetting over all 10 epochs, 5 seeds, every method retrained.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from lightning_datadiet.cli import _normalize, add_study_arguments, config_from_namespace
from lightning_datadiet.pipeline import PipelineConfig, PipelineError, run_report, run_retraining, run_scoring
from lightning_datadiet.pipeline._io import write_csv, write_json, write_text
from lightning_datadiet.pipeline.plan import describe, settings
from lightning_datadiet.pipeline.results import group
from lightning_datadiet.presets import load_preset

__all__ = [
    "SCALES",
    "RETRAIN_METHODS",
    "write_verdicts",
    "reproduce_config",
    "own_model_and_data",
    "verdict_rows",
    "format_verdicts",
    "run_reproduce",
    "main",
]

#: the study options of each scale: the preset files ``lightning_datadiet/presets/reproduce_<scale>.yaml``
SCALES: dict[str, dict[str, Any]] = {}
# which methods' subsets each scale retrains (None = all); the others are scored alongside
RETRAIN_METHODS: dict[str, list[str] | None] = {}
for _scale in ("smoke", "cpu", "gpu"):
    _preset = load_preset(f"reproduce_{_scale}")
    RETRAIN_METHODS[_scale] = _preset.pop("retrain_methods", None)
    SCALES[_scale] = _preset


def reproduce_config(scale: str, data_dir: str | None = None, **overrides: Any) -> PipelineConfig:
    """The study configuration of a scale, with ``overrides`` (any :class:`PipelineConfig` field) on top, resolved.

    Raises:
        PipelineError: unknown scale or a bad option.
    """
    if scale not in SCALES:
        raise PipelineError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}.")
    values = {**SCALES[scale], **overrides}
    if data_dir is not None:
        values["data_dir"] = data_dir
    return own_model_and_data(PipelineConfig(**values), scale).validate()


#: the scale presets' shorthands for the airbench recipe on CIFAR-10 (they do not apply to one's own model/data)
_RECIPE_SHORTHANDS = ("dataset", "data_dir", "train_subset", "batch_size", "num_workers", "width", "lr", "weight_decay")


def own_model_and_data(cfg: PipelineConfig, scale: str) -> PipelineConfig:
    """The protocol of a scale on one's own model and data: when ``cfg`` names a model or data class path, the
    scale's recipe shorthands (its dataset, image subset, width, batch size, learning rate) are dropped unless
    they were given on top of the preset; the protocol (scores, epochs, fractions, rules, seeds, budget) stays."""
    own_model = isinstance(cfg.model, dict) or (isinstance(cfg.model, str) and "." in cfg.model)
    if cfg.data is None and not own_model:
        return cfg
    preset = SCALES[scale]
    changes: dict[str, Any] = {
        name: None for name in _RECIPE_SHORTHANDS if name in preset and getattr(cfg, name) == preset[name]
    }
    if cfg.data is not None and not own_model:
        changes["model"] = None if cfg.model == preset.get("model") else cfg.model
    return dataclasses.replace(cfg, **changes)


# ------------------------------------------------------------------------------------------------ verdicts


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {
        "mean": float(a.mean()),
        "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        "p16": float(np.percentile(a, 16)),
        "p84": float(np.percentile(a, 84)),
        "n": int(len(a)),
    }


def verdict_rows(cfg: PipelineConfig, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (setting, keep fraction, method, rule) with test accuracy, the random subset's, the margin
    (score - random, accuracy points) and its spread, and the verdict; plus one ``full`` row per setting.

    The spread is the standard error of the difference of the two means, ``sqrt(s1^2/n1 + s2^2/n2)`` (sample
    std over seeds; 0 with a single seed). ``verdict`` is ``score beats random`` when the margin is positive,
    ``random wins`` when negative (``tie`` at 0); ``within_noise`` is true when ``|margin| <= spread``.
    """
    groups = group(results)
    rows: list[dict[str, Any]] = []
    for s in settings(cfg):
        full = groups.get((s.name, "full", "full", 1.0))
        if full:
            st = _stats(full)
            rows.append({"setting": s.name, "keep_fraction": 1.0, "method": "full", "rule": "full", **st})
        for keep in sorted(cfg.keep_fractions, reverse=True):
            rand = groups.get((s.name, "random", "random", keep))
            rs = _stats(rand) if rand else None
            if rs:
                rows.append({"setting": s.name, "keep_fraction": keep, "method": "random", "rule": "random", **rs})
            labels = sorted({r for (st_, m, r, f) in groups if st_ == s.name and f == keep and m in cfg.methods})
            for method in cfg.methods:
                for rule in labels:
                    vals = groups.get((s.name, method, rule, keep))
                    if not vals:
                        continue
                    st = _stats(vals)
                    row: dict[str, Any] = {"setting": s.name, "keep_fraction": keep, "method": method, "rule": rule}
                    row.update(st)
                    if rs:
                        margin = st["mean"] - rs["mean"]
                        spread = math.sqrt(st["std"] ** 2 / st["n"] + rs["std"] ** 2 / rs["n"])
                        row.update(
                            random_mean=rs["mean"],
                            random_std=rs["std"],
                            margin=margin,
                            spread=spread,
                            verdict="score beats random" if margin > 0 else "random wins" if margin < 0 else "tie",
                            within_noise=abs(margin) <= spread,
                        )
                    rows.append(row)
    return rows


def format_verdicts(cfg: PipelineConfig, rows: list[dict[str, Any]]) -> str:
    """The verdict table as Markdown (accuracies in %, margins in accuracy points)."""
    data_args, model_args = cfg.data.get("init_args", {}), cfg.model.get("init_args", {})
    lines = [
        f"datadiet reproduce: {describe(cfg)} at {data_args.get('data_dir')} (width {model_args.get('width')}), "
        f"{data_args.get('train_subset') or 'all'} training images, {cfg.epochs} epochs full-data, budget {cfg.budget}, "
        f"seeds {cfg.seeds}; EL2N at epoch {cfg.el2n_epoch}, GraNd at epoch {cfg.grand_epoch}, forgetting over "
        f"{cfg.forgetting_epochs} epochs, scores averaged over {cfg.num_runs} run(s)",
        "",
        "| setting | kept | method | rule | test acc % (mean ± std) | 16-84th pct | random % | margin (pts) | "
        "spread (pts) | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}"
        band = f"{100 * r['p16']:.2f}-{100 * r['p84']:.2f}"
        if "margin" in r:
            rand = f"{100 * r['random_mean']:.2f} ± {100 * r['random_std']:.2f}"
            verdict = r["verdict"] + (", within noise" if r["within_noise"] else "")
            extra = f"{rand} | {100 * r['margin']:+.2f} | {100 * r['spread']:.2f} | {verdict}"
        else:
            extra = "- | - | - | baseline"
        lines.append(
            f"| {r['setting']} | {r['keep_fraction']:.0%} | {r['method']} | {r['rule']} | {acc} | {band} | {extra} |"
        )
    return "\n".join(lines)


def write_verdicts(cfg: PipelineConfig, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Write ``verdicts.md`` / ``verdicts.csv`` / ``verdicts.json`` under ``output_dir``; returns rows and text."""
    out = Path(cfg.output_dir)
    rows = verdict_rows(cfg, results)
    text = format_verdicts(cfg, rows)
    write_text(out / "verdicts.md", text + "\n")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    write_csv(out / "verdicts.csv", rows, columns)
    write_json(out / "verdicts.json", rows)
    return {"rows": rows, "text": text, "path": out / "verdicts.md"}


def run_reproduce(cfg: PipelineConfig, retrain_methods: Sequence[str] | None = None) -> dict[str, Any]:
    """All study stages (skipping finished runs), then the verdict table. Returns the report and the verdicts.

    Args:
        cfg: the study configuration (e.g. from :func:`reproduce_config`).
        retrain_methods: score methods whose subsets are retrained (default: all of ``cfg.methods``); every
            method in ``cfg.methods`` is still scored (its averaged score file is written), which is how the CPU
            scale computes GraNd and forgetting alongside EL2N but retrains on EL2N only.

    Raises:
        PipelineError: a bad option, or ``retrain_methods`` not among ``cfg.methods``.
    """
    cfg = cfg.validate()
    retrain = list(cfg.methods if retrain_methods is None else retrain_methods)
    unknown = [m for m in retrain if m not in cfg.methods]
    if unknown:
        raise PipelineError(f"--retrain_methods {unknown} are not among --methods {cfg.methods}.")
    start = time.perf_counter()
    write_json(Path(cfg.output_dir) / "config.resolved.json", dataclasses.asdict(cfg))
    run_scoring(cfg)
    sub = dataclasses.replace(cfg, methods=retrain)
    run_retraining(sub)
    report = run_report(sub)
    print(f"datadiet reproduce: all stages done in {time.perf_counter() - start:.1f} s", flush=True)
    verdicts = write_verdicts(sub, report["results"])
    print("", flush=True)
    print(verdicts["text"], flush=True)
    print(f"\nverdicts: {verdicts['path']}; plot: {report['paths'].get('plot', '-')}", flush=True)
    return {"report": report, "verdicts": verdicts}


# ------------------------------------------------------------------------------------------------ command line


def _scale_in(argv: Sequence[str]) -> str:
    for i, token in enumerate(argv):
        if token in ("--scale", "--scale=") and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--scale="):
            return token.split("=", 1)[1]
    return "cpu"


def build_parser(scale: str = "cpu") -> Any:
    """The ``datadiet reproduce`` parser: ``--scale`` plus every study option, defaulting to the scale's preset."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="datadiet reproduce",
        description=(
            "Kirsch's Data Diet protocol with the airbench recipe: EL2N early (averaged over runs), GraNd at init "
            "and forgetting; keep 90/70/50/40%; rules highest, coverage and random; several seeds; same-steps "
            "budget; table with mean ± std, 16-84th percentile bands and a verdict per fraction, plus the plot. "
            "--scale smoke|cpu|gpu picks the size (the preset files reproduce_<scale>.yaml of "
            "lightning_datadiet.presets); any study option given here applies on top."
        ),
    )
    parser.add_argument("--scale", type=str, default="cpu", help="smoke, cpu or gpu (see the module docs).")
    parser.add_argument(
        "--retrain_methods",
        type=Optional[list[str]],
        default=None,
        help="Score methods whose subsets are retrained (default: all --methods; every method is still scored).",
    )
    add_study_arguments(parser)
    if scale in SCALES:
        parser.set_defaults(**SCALES[scale], retrain_methods=RETRAIN_METHODS.get(scale))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``datadiet reproduce [options]``; returns the exit status (2 = bad options)."""
    argv = _normalize(sys.argv[2:] if argv is None else list(argv))
    scale = _scale_in(argv)
    if scale not in SCALES:
        print(f"datadiet reproduce: error: --scale must be one of {', '.join(SCALES)}, got {scale!r}.", file=sys.stderr)
        return 2
    parser = build_parser(scale)
    ns = parser.parse_args(argv)
    try:
        cfg = own_model_and_data(config_from_namespace(parser, ns), scale).validate()
    except PipelineError as err:
        print(f"datadiet reproduce: error: {err}", file=sys.stderr)
        return 2
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (out / "config.yaml").write_text(parser.dump(ns, skip_none=False))
    write_json(out / "reproduce.json", {"scale": scale, "config": dataclasses.asdict(cfg)})
    try:
        run_reproduce(cfg, ns.retrain_methods)
    except PipelineError as err:
        print(f"datadiet reproduce: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
