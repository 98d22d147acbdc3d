"""The study's training stages: ``score`` (scoring runs with the callbacks, then averaged scores) and ``train``
(every subset and baseline retrained and measured), each resumable; and ``demo`` (score, train, report)."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, seed_everything

from lightning_datadiet._utils import fraction_count
from lightning_datadiet.callbacks import (
    EL2NCallback,
    ForgettingCallback,
    GraNdCallback,
    TrainingDynamicsCallback,
)
from lightning_datadiet.data.budget import retrain_epochs
from lightning_datadiet.data.pruned import PrunedDataModule
from lightning_datadiet.pipeline._io import ETA, read_json, say, write_json
from lightning_datadiet.pipeline.build import (
    AccuracyCallback,
    make_datamodule,
    make_module,
    make_trainer,
    quiet_lightning,
    tensorboard_logger,
    training_size,
)
from lightning_datadiet.pipeline.config import PipelineConfig, PipelineError
from lightning_datadiet.pipeline.plan import (
    RetrainRun,
    ScoringRun,
        mean_score_path,
    method_epoch,
    plan_retraining,
    plan_scoring,
    result_path,
    scoring_key,
    settings,
)
from lightning_datadiet.pipeline.report import run_report
from lightning_datadiet.pipeline.results import load_results
from lightning_datadiet.store import average_scores, save_scores

__all__ = ["run_scoring", "run_retraining", "run_demo", "window_offset"]


class _StopAfterEpoch(Callback):
    """Stops a scoring run once every requested scoring epoch is done (the LR schedule still spans ``epochs``)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch + 1 >= self.epoch:
            trainer.should_stop = True


def _data_map_callback(directory: Path, seed: int) -> TrainingDynamicsCallback:
    """Training dynamics of each scoring run, for the report's data maps (no extra pass; three dense [N] metrics)."""
    return TrainingDynamicsCallback(
        ["confidence", "variability", "correctness"], dirpath=directory, seed=seed, log_histogram=False
    )


def _scoring_done(run: ScoringRun, methods: list[str]) -> dict | None:
    marker = read_json(run.marker)
    if not marker or not set(methods) <= set(marker.get("paths", {})):
        return None
    if not all((run.directory / marker["paths"][m]).exists() for m in methods):
        return None
    return marker


def _begin(cfg: PipelineConfig) -> PipelineConfig:
    return cfg.validate()


def run_scoring(cfg: PipelineConfig) -> dict[str, dict[str, Path]]:
    """Scoring stage: ``num_runs`` training runs per setting with the score callbacks, then one averaged file per
    method. Finished runs (a ``run_seed<S>.json`` marker next to their score files) are skipped.

    Returns:
        ``{setting name: {method: averaged score file}}``.
    """
    cfg = _begin(cfg)
    plan = plan_scoring(cfg)
    averaged: dict[str, dict[str, Path]] = {}
    if not plan:
        say("scoring: no methods configured, nothing to score")
        return averaged
    stop = max(max(method_epoch(cfg, m) for m in cfg.methods), 1)
    todo = [run for run in plan if not _scoring_done(run, cfg.methods)]
    for i, run in enumerate(plan, 1):
        if run not in todo:
            say(f"[score {i}/{len(plan)}] {run.setting.name} seed={run.seed}: done before, skipped")
    eta = ETA(len(todo))
    with quiet_lightning(cfg):
        for i, run in enumerate(todo, 1):
            tag = f"[score {i}/{len(todo)}] {run.setting.name} seed={run.seed}"
            dm = make_datamodule(cfg, run.setting.label_noise)
            seed_everything(run.seed, workers=True, verbose=False)
            module = make_module(cfg)
            callbacks: dict[str, Any] = {}
            d = run.directory
            if "el2n" in cfg.methods:
                callbacks["el2n"] = EL2NCallback(cfg.el2n_epoch, dirpath=d, seed=run.seed)
            if "grand" in cfg.methods:
                callbacks["grand"] = GraNdCallback(cfg.grand_epoch, dirpath=d, seed=run.seed)
            if "forgetting" in cfg.methods:
                callbacks["forgetting"] = ForgettingCallback(epochs=None, dirpath=d, seed=run.seed)
            if cfg.progress_bar:
                say(f"{tag}: training {stop} of {cfg.epochs} epochs with {', '.join(callbacks)} scoring")
            start = time.perf_counter()
            trainer = make_trainer(
                cfg,
                cfg.epochs,
                logger=tensorboard_logger(cfg, f"{run.setting.name}/score", f"seed{run.seed}"),
                callbacks=[*callbacks.values(), _data_map_callback(d, run.seed), _StopAfterEpoch(stop)],
            )
            trainer.fit(module, datamodule=dm)
            if trainer.interrupted:
                raise KeyboardInterrupt
            paths = {}
            for method, cb in callbacks.items():
                epoch = method_epoch(cfg, method) if method != "forgetting" else max(cb.score_paths)
                paths[method] = Path(cb.score_paths[epoch]).name
            write_json(
                run.marker,
                {
                    "seed": run.seed,
                    "setting": run.setting.name,
                    "paths": paths,
                    "epochs_trained": trainer.current_epoch,
                    "wall_time_s": round(time.perf_counter() - start, 3),
                    "config": scoring_key(cfg, run.setting),
                    "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                },
            )
            say(
                f"{tag}: {', '.join(callbacks)} scored after {trainer.current_epoch} of {cfg.epochs} epochs in "
                f"{time.perf_counter() - start:.1f} s -> {d} ({eta.tick()})"
            )
    for s in settings(cfg):
        runs = [r for r in plan if r.setting == s]
        averaged[s.name] = {}
        for method in cfg.methods:
            files = [r.directory / read_json(r.marker)["paths"][method] for r in runs]
            avg = average_scores(files)
            path = mean_score_path(cfg, s, method)
            extra = {"runs": len(files), "seeds": [r.seed for r in runs], "sources": [f.name for f in files]}
            save_scores(
                path, avg.scores, method=method, epoch=avg.epoch, label_fingerprint=avg.label_fingerprint, extra=extra
            )
            averaged[s.name][method] = path
    say(f"scoring: averaged scores of {cfg.num_runs} run(s) per method written under {Path(cfg.output_dir) / 'scores'}")
    return averaged


def _check_scores_present(cfg: PipelineConfig) -> None:
    missing = [
        str(mean_score_path(cfg, s, m)) for s in settings(cfg) for m in cfg.methods if not mean_score_path(cfg, s, m).exists()
    ]
    if missing:
        raise PipelineError(
            f"No averaged scores for this configuration ({len(missing)} file(s) missing, e.g. {missing[0]}). "
            "Run `datadiet score` with the same options (and --output_dir) first, or `datadiet demo` for all stages."
        )


def window_offset(n: int, keep_fraction: float, skip_fraction: float) -> int:
    """The ``offset`` of :func:`lightning_datadiet.selection.window` that skips the top ``skip_fraction`` of the
    ranking and keeps the next ``keep_fraction`` (the paper's ``N - skip*N - keep*N``), with the one rounding of
    fractions used everywhere (:func:`lightning_datadiet._utils.fraction_count`)."""
    return max(0, n - fraction_count(n, skip_fraction) - fraction_count(n, keep_fraction))


def _train_one(cfg: PipelineConfig, run: RetrainRun) -> dict[str, Any]:
    dm = make_datamodule(cfg, run.setting.label_noise)
    n, batch_size, drop_last = training_size(dm)
    if run.method == "full":
        data, kept = dm, n
    else:
        kwargs: dict[str, Any] = {"class_balanced": cfg.class_balanced, "seed": run.seed}
        if run.rule == "window":
            kwargs["offset"] = window_offset(n, run.keep_fraction, run.window_skip)
        if run.rule == "coverage":
            kwargs.update(beta=cfg.coverage_beta, num_strata=cfg.coverage_strata)
        scores = None if run.method == "random" else str(mean_score_path(cfg, run.setting, run.method))
        data = PrunedDataModule(dm, scores, run.keep_fraction, selection=run.rule, **kwargs)
        kept = data.keep_count
    epochs = retrain_epochs(cfg.epochs, n, kept, cfg.budget, batch_size=batch_size, drop_last=drop_last)
    seed_everything(run.seed, workers=True, verbose=False)
    module = make_module(cfg)
    version = f"{run.method}-{run.rule_label}-keep{run.keep_fraction:g}-seed{run.seed}-{run.key[:8]}"
    measure = AccuracyCallback(val=cfg.select_on_val)
    trainer = make_trainer(
        cfg, epochs, logger=tensorboard_logger(cfg, f"{run.setting.name}/train", version), callbacks=[measure]
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    if trainer.interrupted:
        raise KeyboardInterrupt
    return {
        "key": run.key,
        "setting": run.setting.name,
        "label_noise": run.setting.label_noise,
        "noise_mode": cfg.noise_mode if run.setting.label_noise > 0 else None,
        "method": run.method,
        "rule": run.rule_label,
        "window_skip": run.window_skip,
        "keep_fraction": run.keep_fraction,
        "fraction_pruned": round(1.0 - run.keep_fraction, 10),
        "kept": int(kept),
        "train_size": int(n),
        "seed": run.seed,
        "budget": cfg.budget,
        "epochs_trained": int(epochs),
        "test_acc": measure.results["test"],
        "val_acc": measure.results["val"],
        "wall_time_s": round(time.perf_counter() - start, 3),
        "config": run.config,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_retraining(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Retraining stage: every planned run whose result file is missing is trained and measured, then written
    atomically to ``results/runs/<key>.json``. Needs the averaged scores of :func:`run_scoring`.

    Returns:
        The results of all planned runs (finished before or now).
    """
    cfg = _begin(cfg)
    _check_scores_present(cfg)
    plan = plan_retraining(cfg)
    todo = [r for r in plan if read_json(result_path(cfg, r.key)) is None]
    say(f"retraining: {len(plan)} runs planned, {len(plan) - len(todo)} done before, {len(todo)} to train")
    eta = ETA(len(todo))
    with quiet_lightning(cfg):
        for i, run in enumerate(todo, 1):
            result = _train_one(cfg, run)
            write_json(result_path(cfg, run.key), result)
            say(
                f"[train {i}/{len(todo)}] {run.describe()}: {result['kept']} examples, {result['epochs_trained']} epochs,"
                f" test acc {result['test_acc']:.4f} ({result['wall_time_s']:.1f} s; {eta.tick()})"
            )
    return load_results(cfg)[0]


def run_demo(cfg: PipelineConfig) -> dict[str, Any]:
    """All stages: score, retrain, report (skipping whatever is already finished in ``output_dir``)."""
    resolved = _begin(cfg)
    write_json(Path(resolved.output_dir) / "config.resolved.json", dataclasses.asdict(resolved))
    start = time.perf_counter()
    run_scoring(resolved)
    run_retraining(resolved)
    report = run_report(resolved)
    say(f"datadiet: all stages done in {time.perf_counter() - start:.1f} s")
    return report
