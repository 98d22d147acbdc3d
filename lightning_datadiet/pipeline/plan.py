"""The plan of a study: its label-noise settings, scoring runs and retraining runs, and the keys they are stored under.

A run's key is a hash of everything that determines its result: what the data *is* (a content fingerprint, never
where it is stored), the DataModule and LightningModule class paths with all their init args, the Trainer
options, the label noise, the validation split, the recipe (epochs, precision), and for a pruned run the scores
(their own key), the rule, the keep fraction and the seed. Rerunning finds finished runs by key; other data,
another model or another option runs again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_datadiet.pipeline.build import content_key
from lightning_datadiet.pipeline.config import CONTENT_KEYS, METHODS, PipelineConfig, PipelineError

__all__ = [
    "Setting",
    "settings",
    "ScoringRun",
    "RetrainRun",
    "plan_scoring",
    "plan_retraining",
    "score_dir",
    "mean_score_path",
    "result_path",
    "method_epoch",
    "rule_label",
    "data_key",
    "describe",
]


def describe(cfg: PipelineConfig) -> str:
    """``"data DigitsDataModule (preset digits), model ClassifierModule(net=digits_cnn)"``: what a study trains."""
    data = cfg.data["class_path"].rsplit(".", 1)[-1]
    model = cfg.model["class_path"].rsplit(".", 1)[-1]
    net = cfg.model.get("init_args", {}).get("net")
    if isinstance(net, str):
        model += f"(net={net})"
    preset = f" (preset {cfg.preset})" if cfg.preset else ""
    return f"data {data}{preset}, model {model}"


def digest(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Setting:
    """One label-noise level: its own data, scores and runs."""

    name: str
    label_noise: float


def settings(cfg: PipelineConfig) -> list[Setting]:
    """The label-noise settings of a resolved config, e.g. ``clean`` and ``noise20-uniform``."""
    return [Setting("clean" if f == 0 else f"noise{f * 100:g}-{cfg.noise_mode}", f) for f in cfg.label_noise]


def _content(cfg: PipelineConfig) -> dict[str, Any]:
    memo = digest(cfg.data, 32)
    if memo not in CONTENT_KEYS:
        try:
            CONTENT_KEYS[memo] = content_key(cfg)
        except (FileNotFoundError, OSError, ValueError) as err:
            raise PipelineError(f"Cannot read the data of --data {cfg.data['class_path']}: {err}") from err
    return CONTENT_KEYS[memo]


def data_key(cfg: PipelineConfig, setting: Setting) -> dict[str, Any]:
    content = dict(_content(cfg))
    carved = content.pop("carved_val")
    key: dict[str, Any] = {"content": content, "data": cfg.data, "label_noise": setting.label_noise}
    if carved:
        key["val_split"] = {"val_size": cfg.val_size if cfg.val_size is not None else 0.1, "seed": cfg.split_seed}
    if setting.label_noise > 0:
        key.update(noise_mode=cfg.noise_mode, noise_seed=cfg.noise_seed)
    return key


def recipe_key(cfg: PipelineConfig) -> dict[str, Any]:
    return {"model": cfg.model, "trainer": cfg.trainer, "epochs": cfg.epochs, "precision": cfg.precision}


def scoring_key(cfg: PipelineConfig, setting: Setting) -> dict[str, Any]:
    return {
        "data": data_key(cfg, setting),
        "recipe": recipe_key(cfg),
        "el2n_epoch": cfg.el2n_epoch,
        "grand_epoch": cfg.grand_epoch,
        "forgetting_epochs": cfg.forgetting_epochs,
    }


def method_epoch(cfg: PipelineConfig, method: str) -> int:
    return {"el2n": cfg.el2n_epoch, "grand": cfg.grand_epoch, "forgetting": cfg.forgetting_epochs}[method]


def score_dir(cfg: PipelineConfig, setting: Setting) -> Path:
    """Folder of a setting's score files: ``output_dir/scores/<setting>-<hash of data, recipe, scoring epochs>``."""
    return Path(cfg.output_dir) / "scores" / f"{setting.name}-{digest(scoring_key(cfg, setting), 8)}"


def mean_score_path(cfg: PipelineConfig, setting: Setting, method: str) -> Path:
    """The averaged score file of ``method`` (over ``num_runs`` runs)."""
    return score_dir(cfg, setting) / f"{method}_mean{cfg.num_runs}runs.scores"


def result_path(cfg: PipelineConfig, key: str) -> Path:
    """Where the result of the run with ``key`` is stored."""
    return Path(cfg.output_dir) / "results" / "runs" / f"{key}.json"


@dataclass(frozen=True)
class ScoringRun:
    """One scoring run: a training run with the score callbacks attached."""

    setting: Setting
    seed: int
    directory: Path

    @property
    def marker(self) -> Path:
        return self.directory / f"run_seed{self.seed}.json"


def plan_scoring(cfg: PipelineConfig) -> list[ScoringRun]:
    """Every scoring run of a resolved config (none when ``methods`` is empty)."""
    if not cfg.methods:
        return []
    return [ScoringRun(s, cfg.score_seed + r, score_dir(cfg, s)) for s in settings(cfg) for r in range(cfg.num_runs)]


def rule_label(rule: str, window_skip: float | None = None, beta: float | None = None) -> str:
    if rule == "window":
        return f"window(skip={window_skip:g})"
    if rule == "coverage" and beta is not None:
        return f"coverage(beta={beta:g})"
    return rule


@dataclass(frozen=True)
class RetrainRun:
    """One retraining run: a subset (or the full data), a seed, and the key its result is stored under."""

    setting: Setting
    method: str  # "full", "random" or a score method
    rule: str  # "full", "random", "highest", "lowest", "window", "coverage"
    keep_fraction: float
    seed: int
    window_skip: float | None
    key: str
    config: dict[str, Any]

    @property
    def rule_label(self) -> str:
        return rule_label(self.rule, self.window_skip, self.config.get("coverage_beta"))

    def describe(self) -> str:
        what = "full data" if self.method == "full" else f"{self.method} {self.rule_label} keep={self.keep_fraction:g}"
        return f"{self.setting.name}: {what} seed={self.seed}"


def _retrain_run(
    cfg: PipelineConfig, s: Setting, method: str, rule: str, keep: float, seed: int, skip: float | None = None
) -> RetrainRun:
    conf: dict[str, Any] = {
        "data": data_key(cfg, s),
        "recipe": recipe_key(cfg),
        "budget": cfg.budget,
        "method": method,
        "rule": rule,
        "keep_fraction": keep,
        "seed": seed,
    }
    if method != "full":
        conf["class_balanced"] = cfg.class_balanced
    if method in METHODS:
        conf["scores"] = {
            "key": scoring_key(cfg, s),
            "method_epoch": method_epoch(cfg, method),
            "num_runs": cfg.num_runs,
            "score_seed": cfg.score_seed,
        }
    if rule == "window":
        conf["window_skip"] = skip
    if rule == "coverage":
        conf.update(coverage_beta=cfg.coverage_beta, coverage_strata=cfg.coverage_strata)
    return RetrainRun(s, method, rule, keep, seed, skip, digest(conf), conf)


def plan_retraining(cfg: PipelineConfig) -> list[RetrainRun]:
    """Every retraining run of a resolved config, seed-major (an interruption leaves whole curves per seed).

    Per setting: the full-data baseline for every seed, then per seed and keep fraction the random subset and
    every (method, rule) pair; windows with ``skip + keep > 1`` are left out.
    """
    runs: list[RetrainRun] = []
    for s in settings(cfg):
        runs += [_retrain_run(cfg, s, "full", "full", 1.0, seed) for seed in cfg.seeds]
        for seed in cfg.seeds:
            for keep in cfg.keep_fractions:
                runs.append(_retrain_run(cfg, s, "random", "random", keep, seed))
                for method in cfg.methods:
                    for rule in cfg.rules:
                        skips = [x for x in cfg.window_skip if x + keep <= 1.0 + 1e-9] if rule == "window" else [None]
                        runs += [_retrain_run(cfg, s, method, rule, keep, seed, x) for x in skips]
    return runs
