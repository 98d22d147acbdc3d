"""The ``datadiet`` command: ``score``, ``train`` (alias ``prune``), ``report``, ``demo`` (all three), ``analyze`` and
``reproduce``.

Options follow LightningCLI: the model and the data are class paths with init args (``--model my_pkg.MyNet
--model.width 64 --data my_pkg.MyData``, or ``class_path`` / ``init_args`` in a YAML file given with ``--config``),
``--trainer.*`` are Trainer arguments applied to every fit, and every study option is a field of
:class:`~lightning_datadiet.pipeline.PipelineConfig` (``--print_config`` prints a complete YAML). The built-in
setups are shorthands for preset YAML files (:mod:`lightning_datadiet.presets`): ``--dataset digits`` (the
default), ``--dataset cifar10 --data_dir PATH``, ``--model airbench``. Dashes and underscores in option names are
interchangeable (``--data-dir`` = ``--data_dir``). Lists are written as ``--keep_fractions [0.3,0.5]``. Modules
named by class path are imported from the current folder as with ``python -m``.

Examples::

    datadiet demo --output-dir runs/demo
    datadiet demo --model my_models.MyNet --model.width 64 --data my_models.MyData --trainer.precision bf16-mixed
    datadiet score --config my.yaml && datadiet train --config my.yaml && datadiet report --config my.yaml
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

from jsonargparse import ActionConfigFile, ArgumentParser

from lightning_datadiet._utils import plain

__all__ = ["main", "build_parser", "stage_parser", "STAGES"]

#: stage -> (short help, long description)
STAGES: dict[str, tuple[str, str]] = {
    "score": (
        "stage 1: compute the scores",
        "Stage 1: train `num_runs` ordinary runs per label-noise setting with the EL2N / GraNd / forgetting "
        "callbacks attached; they write one score file per run and method, then one averaged file per method is "
        "written with average_scores. Finished runs are skipped.",
    ),
    "train": (
        "stage 2: prune with the scores and retrain (alias: prune)",
        "Stage 2: for every setting, keep fraction, selection rule and seed, retrain a fresh model on the subset "
        "kept by PrunedDataModule, plus the full-data and random-subset baselines; measure each on the test (and "
        "validation) data. Each finished run is written to results/runs/<key>.json; runs already there are "
        "skipped. Needs the scores of `datadiet score`.",
    ),
    "report": (
        "stage 3: tables, plots and the summary",
        "Stage 3: rebuild results.csv / results.json from the finished runs, choose the rule on validation data, "
        "measure how well the top scores catch corrupted labels, plot accuracy vs fraction kept and the score "
        "histograms, add TensorBoard histograms and print the final table.",
    ),
    "demo": (
        "all stages (score, train, report); defaults need no download",
        "All stages: score, train, report. With the defaults: scikit-learn's handwritten digits, a small CNN, "
        "clean labels and 20% uniform label noise, 3 scoring runs, keep fractions 0.3/0.5/0.7, 2 seeds; a few "
        "minutes on 2 CPU cores. Rerunning skips finished runs.",
    ),
}
_ANALYZE = (
    "score stability report over score files (Spearman)",
    "Score stability: pairwise Spearman rank correlations between score files of one training set (early vs "
    "late epochs, single runs vs their mean, method vs method), written as a Markdown table, a CSV and a "
    "heatmap PNG, and printed. The files must have the same number of examples and label fingerprint; "
    "methods and epochs may differ. The other analyses (NTK velocity, error barriers with BarrierSpawnCallback, "
    "sliding-window sweeps, label-noise detection) are library calls in lightning_datadiet.analysis: see "
    "docs/analysis.md.",
)
_REPRODUCE = "Kirsch's pruning protocol with the airbench recipe (--scale smoke|cpu|gpu)"
_STUDY_FIELDS_SKIPPED = {"model", "data", "trainer", "preset"}


def build_parser() -> ArgumentParser:
    """The top-level ``datadiet`` parser (for ``datadiet --help``; light: imports neither torch nor Lightning).
    Each stage is parsed by :func:`stage_parser`."""
    parser = ArgumentParser(
        prog="datadiet",
        description=(
            "Deep Learning on a Data Diet (Paul et al. 2021) as a command: score training examples early in "
            "training (EL2N, GraNd, forgetting), prune, retrain, report, on your own LightningModule and "
            "LightningDataModule (--model my_pkg.MyNet --data my_pkg.MyData) or a built-in preset. Run `datadiet "
            "demo` for everything on an embedded dataset; `datadiet <stage> --help` lists the options. Options may "
            "be given by flag or in a YAML file (--config); --print_config writes a complete one."
        ),
    )
    subcommands = parser.add_subcommands(dest="stage", required=True)
    for name, (short, long) in STAGES.items():
        extra = {"aliases": ["prune"]} if name == "train" else {}
        subcommands.add_subcommand(name, ArgumentParser(prog=f"datadiet {name}", description=long), help=short, **extra)
    subcommands.add_subcommand("analyze", ArgumentParser(prog="datadiet analyze", description=_ANALYZE[1]), help=_ANALYZE[0])
    subcommands.add_subcommand(
        "reproduce", ArgumentParser(prog="datadiet reproduce", description="see `datadiet reproduce --help`"), help=_REPRODUCE
    )
    return parser


def add_study_arguments(parser: ArgumentParser) -> None:
    """Every study option, plus ``--model``, ``--data`` and the ``--trainer`` group as LightningCLI has them."""
    from lightning.pytorch import LightningDataModule, LightningModule, Trainer

    from lightning_datadiet.pipeline.config import MODEL_NAMES, PipelineConfig

    parser.add_argument("--config", action=ActionConfigFile, help="A YAML file with any of the options below.")
    parser.add_class_arguments(PipelineConfig, nested_key=None, as_group=False, skip=_STUDY_FIELDS_SKIPPED)
    parser.add_argument(
        "--model",
        type=Optional[Union[Literal[MODEL_NAMES], LightningModule]],  # type: ignore[valid-type]
        default=None,
        help="Your LightningModule as a class path with init args (--model my_pkg.MyNet --model.width 64), or a "
        f"built-in network for the built-in datasets: {', '.join(MODEL_NAMES)} (default auto).",
    )
    parser.add_argument(
        "--data",
        type=Optional[LightningDataModule],
        default=None,
        help="Your LightningDataModule as a class path with init args (--data my_pkg.MyData --data.batch_size 32); "
        "default: the preset of --dataset.",
    )
    parser.add_class_arguments(Trainer, "trainer", instantiate=False, fail_untyped=False, sub_configs=True)


def stage_parser(stage: str) -> ArgumentParser:
    """The parser of one stage (``score``, ``train``, ``report``, ``demo``); imports Lightning for ``--trainer``."""
    parser = ArgumentParser(prog=f"datadiet {stage}", description=STAGES[stage][1])
    add_study_arguments(parser)
    return parser


def analyze_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="datadiet analyze", description=_ANALYZE[1])
    parser.add_argument("--scores", type=list[str], required=True, help="Score files to compare, e.g. [a.scores,b.scores].")
    parser.add_argument("--output_dir", type=str, default="runs/analysis", help="Folder for stability.md/.csv/.png.")
    parser.add_argument(
        "--mean", type=bool, default=True,
        help="Add the mean of all files as one more column (only when all files hold the same method).",
    )  # fmt: skip
    return parser


def config_from_namespace(parser: ArgumentParser, ns: Any) -> Any:
    """The :class:`PipelineConfig` of a parsed stage: study options as given, ``model`` / ``data`` as class-path
    dicts, ``trainer`` holding only the Trainer arguments that differ from Trainer's defaults."""
    from lightning_datadiet.pipeline.config import PipelineConfig

    fields = PipelineConfig.__dataclass_fields__
    values = {k: v for k, v in ns.as_dict().items() if k in fields and k not in _STUDY_FIELDS_SKIPPED}
    given, defaults = ns.get("trainer"), parser.get_defaults().get("trainer")
    trainer = {
        name: plain(value)
        for name, value in (vars(given).items() if given is not None else ())
        if plain(value) != plain(getattr(defaults, name, None))
    }
    return PipelineConfig(**values, model=plain(ns.model), data=plain(ns.data), trainer=trainer)


def _import_from_cwd() -> None:
    """Class paths name modules the way ``python -m`` finds them: the current folder comes first."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _check_same_dataset(paths: Sequence[str], files: Sequence[Any]) -> None:
    """Score files compared by ``analyze`` must describe one training set: the same number of examples and, where
    both are known, the same label fingerprint. Method and epoch may differ (that is what is compared)."""
    from lightning_datadiet.pipeline.config import PipelineError

    problems = []
    n0 = files[0].num_samples
    fp = next((f.label_fingerprint for f in files if f.label_fingerprint is not None), None)
    for path, f in zip(paths, files):
        if f.num_samples != n0:
            problems.append(f"  {path}: {f.num_samples} examples, {paths[0]}: {n0}")
        if fp is not None and f.label_fingerprint is not None and f.label_fingerprint != fp:
            problems.append(f"  {path}: label fingerprint {f.label_fingerprint} differs from {fp}")
    if problems:
        raise PipelineError(
            "Score files are not of one dataset (a different length or label fingerprint means another training "
            "set, split or label order):\n" + "\n".join(problems) + "\nFix: compare score files of the same "
            "training set (any methods and epochs)."
        )


def _column_names(paths: Sequence[str]) -> list[str]:
    """File names without ``.scores``; files of the same name get their folder prepended (then their position)."""
    base = [Path(p).name.removesuffix(".scores") for p in paths]
    names = [f"{Path(p).parent.name}/{b}" if base.count(b) > 1 else b for p, b in zip(paths, base)]
    return [f"{n}#{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def run_analyze(score_paths: Sequence[str], output_dir: str, add_mean: bool = True) -> Path:
    """Stability report over ``score_paths``: files of one training set, any methods and epochs; returns the
    Markdown file. Raises ``PipelineError`` on bad or incompatible files or a bad ``output_dir``."""
    from lightning_datadiet.analysis import (  # torch and matplotlib: not for --help
        plot_heatmap,
        stability_report,
    )
    from lightning_datadiet.pipeline.config import PipelineError, output_dir_problems
    from lightning_datadiet.store import ScoreFileError, load_scores

    if len(score_paths) < 2:
        raise PipelineError("analyze needs at least two score files (--scores [a.scores,b.scores]).")
    problems = output_dir_problems(output_dir)
    if problems:
        raise PipelineError(problems[0])
    try:
        files = [load_scores(p) for p in score_paths]
    except (ScoreFileError, OSError) as err:
        raise PipelineError(str(err)) from err
    _check_same_dataset(score_paths, files)

    named: dict[str, Any] = {}
    for name, f in zip(_column_names(score_paths), files):
        named[name] = f.scores
    methods = sorted({f.method for f in files})
    if add_mean and len(methods) > 1:  # scores of different methods live on different scales
        print(f"analyze: no mean column: the files hold different methods ({', '.join(methods)}).")
    elif add_mean:
        import torch

        named["mean"] = torch.stack([f.scores.double() for f in files]).mean(0)
    table = stability_report(named)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "stability.md"
    md.write_text(table.to_markdown() + "\n")
    table.to_csv(out / "stability.csv")
    plot_heatmap(table, out / "stability.png")
    print(table.to_markdown())
    _analyze_data_map(files, out)
    return md


def _analyze_data_map(files: Sequence[Any], out: Path) -> Path | None:
    """A data map PNG when the files include TrainingDynamicsCallback's confidence and variability."""
    from lightning_datadiet.analysis.datamap import data_map_from_files

    written = data_map_from_files(files, out / "data_map.png")
    if written is not None:
        print(f"data map: {written}")
    return written


def _normalize(argv: Sequence[str]) -> list[str]:
    """``--data-dir x`` -> ``--data_dir x`` (option names only; values are left alone)."""
    out = []
    for token in argv:
        if token.startswith("--") and len(token) > 2:
            name, eq, value = token[2:].partition("=")
            token = "--" + name.replace("-", "_") + eq + value
        out.append(token)
    return out


def _run_stage(stage: str, argv: list[str]) -> int:
    from lightning_datadiet.pipeline import PipelineError, run_demo, run_report, run_retraining, run_scoring

    run = {"score": run_scoring, "train": run_retraining, "report": run_report, "demo": run_demo}[stage]
    name = "prune" if stage == "train" and argv and argv[0] == "prune" else stage
    parser = stage_parser(stage)
    parser.prog = f"datadiet {name}"
    ns = parser.parse_args(argv[1:])  # type errors and unknown options exit here with status 2
    try:
        resolved = config_from_namespace(parser, ns).validate()
    except PipelineError as err:
        print(f"datadiet {name}: error: {err}", file=sys.stderr)
        return 2
    out = Path(resolved.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"datadiet {name}: error: --output_dir {resolved.output_dir!r}: {err}", file=sys.stderr)
        return 2
    with warnings.catch_warnings():  # skip_none is deprecated in jsonargparse >= 4.49 but needed for >= 4.27
        warnings.simplefilter("ignore")
        (out / "config.yaml").write_text(parser.dump(ns, skip_none=False))
    try:
        run(resolved)
    except PipelineError as err:
        print(f"datadiet {name}: error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``datadiet`` console script; returns the exit status (2 = bad options)."""
    argv = _normalize(sys.argv[1:] if argv is None else list(argv))
    _import_from_cwd()
    stage = argv[0] if argv else None
    if stage == "reproduce":
        from lightning_datadiet.reproduce import main as reproduce_main

        return reproduce_main(argv[1:])
    if stage in STAGES or stage == "prune":
        return _run_stage("train" if stage == "prune" else stage, argv)
    if stage == "analyze":
        from lightning_datadiet.pipeline.config import PipelineError

        ns = analyze_parser().parse_args(argv[1:])
        try:
            run_analyze(ns.scores, ns.output_dir, ns.mean)
        except PipelineError as err:
            print(f"datadiet analyze: error: {err}", file=sys.stderr)
            return 2
        return 0
    build_parser().parse_args(argv)  # --help, or an error naming the stages (exits)
    return 2


if __name__ == "__main__":
    sys.exit(main())
