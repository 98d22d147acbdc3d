"""The finished runs' results: reading them back, grouping them, and choosing a rule on validation data."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from lightning_datadiet.pipeline._io import read_json
from lightning_datadiet.pipeline.config import METHODS, PipelineConfig
from lightning_datadiet.pipeline.plan import RetrainRun, plan_retraining, result_path

__all__ = ["RESULT_COLUMNS", "load_results", "group", "summary_stats", "choose_rules_on_validation"]

RESULT_COLUMNS = (
    "setting",
    "label_noise",
    "noise_mode",
    "method",
    "rule",
    "keep_fraction",
    "fraction_pruned",
    "kept",
    "seed",
    "budget",
    "epochs_trained",
    "test_acc",
    "val_acc",
    "wall_time_s",
    "key",
)


def load_results(cfg: PipelineConfig) -> tuple[list[dict[str, Any]], list[RetrainRun]]:
    """``(results of the planned runs found on disk, planned runs still missing)`` for a resolved config."""
    found, missing = [], []
    for run in plan_retraining(cfg):
        result = read_json(result_path(cfg, run.key))
        (found.append(result) if result is not None else missing.append(run))
    return found, missing


def group(results: list[dict[str, Any]], field_name: str = "test_acc") -> dict[tuple, list[float]]:
    """``{(setting, method, rule, keep_fraction): [value per seed]}``."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in results:
        if r.get(field_name) is not None:
            groups[(r["setting"], r["method"], r["rule"], r["keep_fraction"])].append(float(r[field_name]))
    return groups


def summary_stats(values: list[float]) -> tuple[float, float, float]:
    """Mean, 16th and 84th percentile."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(np.percentile(a, 16)), float(np.percentile(a, 84))


def choose_rules_on_validation(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting, score method and keep fraction, the rule (any configured rule of that method, or random) with
    the best mean validation accuracy over seeds. Ties go to random (no evidence that the scores help).

    Returns:
        One row per (setting, method, keep fraction): ``chosen_rule``, its validation and test accuracy, random's,
        ``random_wins`` and all candidates' validation accuracies.
    """
    val = group(results, "val_acc")
    test = group(results, "test_acc")
    rows = []
    keys = sorted({(s, m, f) for (s, m, _, f) in val if m in METHODS})
    for setting, method, keep in keys:
        candidates = {
            rule: float(np.mean(v)) for (s, m, rule, f), v in val.items() if (s, m, f) == (setting, method, keep)
        }
        random_val = val.get((setting, "random", "random", keep))
        if random_val:
            candidates = {"random": float(np.mean(random_val)), **candidates}
        best = max(candidates.values())
        chosen = next(rule for rule, v in candidates.items() if v == best)  # random first: it wins ties
        chosen_key = (setting, "random" if chosen == "random" else method, chosen, keep)
        random_test = test.get((setting, "random", "random", keep))
        rows.append(
            {
                "setting": setting,
                "method": method,
                "keep_fraction": keep,
                "chosen_rule": chosen,
                "chosen_val_acc": best,
                "chosen_test_acc": float(np.mean(test[chosen_key])) if chosen_key in test else None,
                "random_val_acc": candidates.get("random"),
                "random_test_acc": float(np.mean(random_test)) if random_test else None,
                "random_wins": chosen == "random",
                "candidates_val_acc": candidates,
            }
        )
    return rows
