"""The ``datadiet`` command: ``score``, ``train`` (alias ``prune``), ``report`` and ``demo`` (all three).

Every option is a field of :class:`~lightning_datadiet.pipeline.PipelineConfig`, settable by flag or by a YAML
file (``--config``), in jsonargparse / LightningCLI conventions (``--print_config`` prints a complete YAML).
Dashes and underscores in option names are interchangeable (``--data-dir`` = ``--data_dir``). Lists are written
as ``--keep_fractions [0.3,0.5]``.

Examples::

    datadiet demo --output-dir runs/demo
    datadiet demo --dataset cifar10 --data-dir ../shared/data/cifar10-jpeg.zip --accelerator gpu --model resnet18
    datadiet score --config my.yaml && datadiet train --config my.yaml && datadiet report --config my.yaml
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser

from lightning_datadiet.pipeline import (
    PipelineConfig,
    PipelineError,
    run_demo,
    run_report,
    run_retraining,
    run_scoring,
)

__all__ = ["main", "build_parser"]

_STAGES: dict[str, tuple[Callable[[PipelineConfig], Any], str, str]] = {
    "score": (
        run_scoring,
        "stage 1: compute the scores",
        "Stage 1: train `num_runs` ordinary runs per label-noise setting with the EL2N / GraNd / forgetting "
        "callbacks attached; they write one score file per run and method, then one averaged file per method is "
        "written with average_scores. Finished runs are skipped.",
    ),
    "train": (
        run_retraining,
        "stage 2: prune with the scores and retrain (alias: prune)",
        "Stage 2: for every setting, keep fraction, selection rule and seed, retrain a fresh model on the subset "
        "kept by PrunedDataModule, plus the full-data and random-subset baselines; test each. Each finished run is "
        "written to results/runs/<key>.json; runs already there are skipped. Needs the scores of `datadiet score`.",
    ),
    "report": (
        run_report,
        "stage 3: tables, plots and the summary",
        "Stage 3: rebuild results.csv / results.json from the finished runs, choose the rule on validation data, "
        "measure how well the top scores catch corrupted labels, plot accuracy vs fraction pruned and the score "
        "histograms, add TensorBoard histograms and print the final table.",
    ),
    "demo": (
        run_demo,
        "all stages (score, train, report); defaults need no download",
        "All stages: score, train, report. With the defaults: scikit-learn's handwritten digits, a small CNN, "
        "clean labels and 20% uniform label noise, 3 scoring runs, keep fractions 0.3/0.5/0.7, 2 seeds; a few "
        "minutes on 2 CPU cores. Rerunning skips finished runs.",
    ),
}


def build_parser() -> ArgumentParser:
    """The ``datadiet`` parser: one subcommand per stage, each taking every :class:`PipelineConfig` option."""
    parser = ArgumentParser(
        prog="datadiet",
        description=(
            "Deep Learning on a Data Diet (Paul et al. 2021) as a command: score training examples early in "
            "training (EL2N, GraNd, forgetting), prune, retrain, report. Run `datadiet demo` for everything on an "
            "embedded dataset; `datadiet <stage> --help` lists the options. Options may be given by flag or in a "
            "YAML file (--config); --print_config writes a complete one."
        ),
    )
    subcommands = parser.add_subcommands(dest="stage", required=True)
    for name, (_, short, long) in _STAGES.items():
        sub = ArgumentParser(prog=f"datadiet {name}", description=long)
        sub.add_argument(
            "--config", action=ActionConfigFile, help="A YAML file with any of the options below."
        )
        sub.add_class_arguments(PipelineConfig, nested_key=None, as_group=False)
        extra = {"aliases": ["prune"]} if name == "train" else {}
        subcommands.add_subcommand(name, sub, help=short, **extra)
    return parser


def _normalize(argv: Sequence[str]) -> list[str]:
    """``--data-dir x`` -> ``--data_dir x`` (option names only; values are left alone)."""
    out = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            token = "--" + name.replace("-", "_") + eq + value
        out.append(token)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``datadiet`` console script; returns the exit status (2 = bad options)."""
    argv = _normalize(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser()
    ns = parser.parse_args(argv)  # type errors and unknown options exit here with status 2
    stage = "train" if ns.stage == "prune" else ns.stage
    options = ns[ns.stage].as_dict()
    values = {k: v for k, v in options.items() if k in PipelineConfig.__dataclass_fields__}
    try:
        resolved = PipelineConfig(**values).validate()
    except PipelineError as err:
        print(f"datadiet {ns.stage}: error: {err}", file=sys.stderr)
        return 2
    out = Path(resolved.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    sub_parser = parser._subcommands_action._name_parser_map[ns.stage]
    (out / "config.yaml").write_text(sub_parser.dump(ns[ns.stage], skip_none=False))
    run, _, _ = _STAGES[stage]
    try:
        run(resolved)
    except PipelineError as err:
        print(f"datadiet {ns.stage}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
