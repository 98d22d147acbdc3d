"""The ``datadiet`` study as a package: score, prune + retrain, report; resumable, on any LightningModule and
LightningDataModule (class paths the LightningCLI way) or a built-in preset.

- :mod:`.config`: :class:`PipelineConfig` (every option), its resolution into class-path specs and its checks;
- :mod:`.specs`: class paths with init args (checked, completed and instantiated by jsonargparse);
- :mod:`.plan`: label-noise settings, scoring and retraining runs, and the keys their results are stored under;
- :mod:`.build`: the data of a setting, fresh models and Trainers, the study's own accuracy measurement;
- :mod:`.stages`: :func:`run_scoring`, :func:`run_retraining`, :func:`run_demo`;
- :mod:`.results`, :mod:`.report`, :mod:`.plots`: the tables, rule choice, summary and figures.

The stages are plain functions over one :class:`PipelineConfig`:

- :func:`run_scoring`: for each label-noise setting, ``num_runs`` ordinary training runs with
  :class:`~lightning_datadiet.EL2NCallback`, :class:`~lightning_datadiet.GraNdCallback` and
  :class:`~lightning_datadiet.ForgettingCallback` attached; the callbacks write one score file per run and method,
  then :func:`~lightning_datadiet.average_scores` makes one averaged file per method.
- :func:`run_retraining`: for each setting, keep fraction, selection rule and seed, a fresh model trained on
  :class:`~lightning_datadiet.PrunedDataModule` (plus the full-data and random-subset baselines), measured on the
  validation and test data. Each finished run is written atomically as ``results/runs/<key>.json``.
- :func:`run_report`: rebuilds the results table from those files (CSV + JSON), picks the selection rule on
  validation data, measures how well the top scores catch corrupted labels, plots accuracy against the fraction
  kept and the score histograms, adds TensorBoard histograms and prints a plain-text summary.

:func:`run_demo` runs the three stages; the defaults of :class:`PipelineConfig` are the demo (digits, no
download, a few minutes on 2 CPU cores).
"""

from lightning_datadiet.pipeline.config import (
    BUDGETS,
    DATASETS,
    METHODS,
    MODEL_NAMES,
    NOISE_MODES,
    RULES,
    PipelineConfig,
    PipelineError,
)
from lightning_datadiet.pipeline.plan import (
    RetrainRun,
    ScoringRun,
    Setting,
    mean_score_path,
    plan_retraining,
    plan_scoring,
    result_path,
    score_dir,
    settings,
)
from lightning_datadiet.pipeline.plots import plot_accuracy, plot_histograms
from lightning_datadiet.pipeline.report import format_summary, plot_data_maps, run_report
from lightning_datadiet.pipeline.results import RESULT_COLUMNS, choose_rules_on_validation, load_results
from lightning_datadiet.pipeline.stages import run_demo, run_retraining, run_scoring, window_offset

__all__ = [
    "PipelineConfig",
    "PipelineError",
    "Setting",
    "ScoringRun",
    "RetrainRun",
    "settings",
    "plan_scoring",
    "plan_retraining",
    "score_dir",
    "mean_score_path",
    "result_path",
    "run_scoring",
    "run_retraining",
    "run_report",
    "run_demo",
    "load_results",
    "choose_rules_on_validation",
    "format_summary",
    "plot_accuracy",
    "plot_histograms",
    "plot_data_maps",
    "window_offset",
    "RESULT_COLUMNS",
    "METHODS",
    "RULES",
    "DATASETS",
    "MODEL_NAMES",
    "NOISE_MODES",
    "BUDGETS",
]
