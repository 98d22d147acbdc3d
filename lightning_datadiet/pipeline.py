"""The ``datadiet`` pipeline: score, prune + retrain, report; resumable, built on the public API only.

The stages are plain functions over one :class:`PipelineConfig`:

- :func:`run_scoring`: for each label-noise setting, ``num_runs`` ordinary training runs with
  :class:`~lightning_datadiet.EL2NCallback`, :class:`~lightning_datadiet.GraNdCallback` and
  :class:`~lightning_datadiet.ForgettingCallback` attached; the callbacks write one score file per run and method,
  then :func:`~lightning_datadiet.average_scores` makes one averaged file per method.
- :func:`run_retraining`: for each setting, keep fraction, selection rule and seed, a fresh model trained on
  :class:`~lightning_datadiet.PrunedDataModule` (plus the full-data and random-subset baselines), tested on the
  test split. Each finished run is written atomically as ``results/runs/<key>.json``, ``key`` a hash of everything
  that determines the run (a content fingerprint of the data, label noise, model and recipe, scores, rule, keep
  fraction, seed), so rerunning skips finished runs and an interruption loses at most the run in progress.
- :func:`run_report`: rebuilds the results table from those files (CSV + JSON), picks the selection rule on
  validation data, measures how well the top scores catch corrupted labels, plots accuracy against the fraction
  kept and the score histograms, adds TensorBoard histograms and prints a plain-text summary.

:func:`run_demo` runs the three stages; the defaults of :class:`PipelineConfig` are the demo (digits, no
download, a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from lightning_datadiet._utils import atomic_write_bytes

# torch and lightning are imported inside the functions that train: `datadiet --help` and option errors must not
# pay for them (they take seconds to import).

__all__ = [
    "PipelineConfig",
    "Setting",
    "ScoringRun",
    "RetrainRun",
    "PipelineError",
    "settings",
    "plan_scoring",
    "plan_retraining",
    "run_scoring",
    "run_retraining",
    "run_report",
    "run_demo",
    "load_results",
    "choose_rules_on_validation",
]

METHODS = ("el2n", "grand", "forgetting")
RULES = ("highest", "lowest", "window", "coverage")
DATASETS = ("digits", "cifar10")
NOISE_MODES = ("uniform", "permute", "uniform_other")
BUDGETS = ("same_steps", "same_epochs")
PROGRESS_REFRESH_RATE = 10  # progress bars redraw every 10 steps

# per-dataset defaults for the options left at None
_DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "digits": {
        "batch_size": 64,
        "num_workers": 0,
        "epochs": 10,
        "lr": 0.05,
        "el2n_epoch": 3,
        "val_size": 300,
    },
    "cifar10": {
        "batch_size": 128,
        "num_workers": 4,
        "epochs": 200,
        "lr": 0.1,
        "el2n_epoch": 20,
        "val_size": 5000,
    },
}
_INPUT_SHAPE = {"digits": (1, 8), "cifar10": (3, 32)}  # (channels, side)
# per-model defaults, applied before the dataset's (the airbench recipe: lightning_datadiet/recipes/airbench.py)
_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "airbench": {"batch_size": 512, "num_workers": 0, "epochs": 10, "lr": 0.2, "el2n_epoch": 1},
}
MODELS = ("digits_cnn", "mlp", "small_cnn", "resnet18", "airbench")


class PipelineError(ValueError):
    """A bad option or a missing prerequisite, found before any training starts."""


@dataclass
class PipelineConfig:
    """Options of every ``datadiet`` stage (the defaults are the demo: digits, a few minutes on 2 CPU cores).

    Args:
        output_dir: Folder for everything the pipeline writes (scores, results, plots, TensorBoard logs).
            Rerunning with the same folder skips finished runs.
        dataset: ``digits`` (scikit-learn's bundled handwritten digits, 1000 train / 300 val / 497 test, no
            download) or ``cifar10`` (needs ``data_dir``).
        data_dir: CIFAR-10 location: ``cifar10-jpeg.zip``, a folder extracted from it, or torchvision's CIFAR10
            root (holding ``cifar-10-batches-py``); any ``train/<class>/`` + ``test/<class>/`` image folder works.
            Refused for digits (bundled with scikit-learn, reads no files).
        batch_size: Mini-batch size (default: 64 for digits, 128 for cifar10).
        num_workers: DataLoader workers (default: 0 for digits, 4 for cifar10).
        val_size: Validation examples held out from the training data (class-stratified, seeded by
            ``split_seed``), used by ``select_on_val`` (default: 300 for digits; for cifar10 5000 when
            ``select_on_val`` is on, else 0).
        train_subset: cifar10 only: keep this many training images (class-stratified) for quick runs.
        split_seed: Seed of the train/validation(/test) split.
        label_noise: Fractions of training labels to corrupt, one experiment ("setting") per value; 0 = clean.
            Validation and test labels are never corrupted.
        noise_mode: ``uniform`` (new uniform random labels; some keep theirs by chance; Zhang et al.),
            ``permute`` (the drawn labels permuted among themselves; the official code) or ``uniform_other``
            (always a different label).
        noise_seed: Seed of the label corruption.
        model: Network: ``digits_cnn``, ``mlp``, ``small_cnn`` (fast CNN for CPU), ``resnet18`` (torchvision
            ResNet18 with a CIFAR stem, for GPU runs) or ``auto`` (digits_cnn for digits; for cifar10 resnet18
            when a GPU is used, else small_cnn); ``airbench`` is the fast CIFAR-10 recipe (patch-whitened BN conv net,
            label smoothing, flip/translate on the batch, uint8 data on the device; ``width`` = first-group width,
            default 64; its own defaults: batch 512, lr 0.2, 10 epochs, EL2N at epoch 1; see
            :mod:`lightning_datadiet.recipes.airbench`).
        width: Base width of digits_cnn / small_cnn, hidden width of mlp (model default when unset).
        epochs: Epochs of full-data training; scoring runs follow the same recipe (default: 10 for digits, 200
            for cifar10, as in the paper).
        lr: Peak learning rate of SGD (Nesterov momentum 0.9), cosine-decayed per step to 0 over the fit
            (default: 0.05 for digits, 0.1 for cifar10).
        weight_decay: SGD weight decay.
        methods: Scores to compute and prune with: ``el2n``, ``grand``, ``forgetting`` (an empty list runs only the
            full-data and random baselines).
        el2n_epoch: EL2N is computed after this many completed epochs of each scoring run (0 = at initialisation;
            default: 3 for digits, 20 for cifar10, as in the paper).
        grand_epoch: GraNd is computed after this many completed epochs (0 = at initialisation, the paper's
            "GraNd at init").
        forgetting_epochs: Forgetting events are counted over this many epochs of each scoring run (default: all
            ``epochs``). Never-learned examples score +inf (kept first, as in the official code).
        num_runs: Independent scoring runs (seeds ``score_seed``, ``score_seed + 1``, ...) whose scores are averaged.
        score_seed: Seed of the first scoring run.
        keep_fractions: Fractions of the training set kept, each in (0, 1).
        rules: Selection rules applied to every method: ``highest`` (the paper: keep the highest scores),
            ``window`` (drop the ``window_skip`` highest-ranked fraction, keep the next ``keep_fraction``),
            ``coverage`` (CCS: drop the ``coverage_beta`` hardest, sample evenly over score strata), ``lowest``.
            The random-subset and full-data baselines always run.
        window_skip: For ``window``: fractions of the training set skipped at the top of the ranking (one window
            per value; the paper's offset is ``N - skip*N - keep*N``). Windows that do not fit are left out.
        coverage_beta: For ``coverage``: the hardest fraction dropped before sampling.
        coverage_strata: For ``coverage``: number of equal-width score strata (``None``: CCS's 50, for any N; an
            explicit value may not exceed the training set's size).
        class_balanced: Split every subset (random included) into per-class quotas proportional to class size.
        seeds: Retraining seeds; each subset/baseline is trained once per seed (random subsets also differ by seed).
        budget: Retraining budget of a pruned subset: ``same_steps`` (as many optimizer steps as full-data
            training, so a 50% subset trains twice the epochs; the official protocol) or ``same_epochs``.
        select_on_val: Pick, per method and keep fraction, the rule (among the configured rules and random) with
            the best validation accuracy, and report it (and say when random wins).
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``, ...); ``auto`` means cpu for digits.
        devices: One device per run: ``1``, or a one-element list naming the device, e.g. ``[1]``.
        precision: Lightning precision, e.g. ``bf16-mixed`` on GPUs (default: Lightning's).
        num_threads: CPU threads of torch (default: 1 for digits on CPU, the fastest for a tiny model; torch's
            default otherwise).
        progress_bar: Show Lightning's progress bars during every fit. Off by default: each finished fit prints
            one line instead (running count, time, estimated time left).
        tensorboard: Write TensorBoard logs (score histograms, training curves) under ``output_dir/tensorboard``.
    """

    output_dir: str = "datadiet_output"
    # data
    dataset: Literal["digits", "cifar10"] = "digits"
    data_dir: str | None = None
    batch_size: int | None = None
    num_workers: int | None = None
    val_size: int | None = None
    train_subset: int | None = None
    split_seed: int = 0
    # label noise
    label_noise: list[float] = field(default_factory=lambda: [0.0, 0.2])
    noise_mode: Literal["uniform", "permute", "uniform_other"] = "uniform"
    noise_seed: int = 0
    # model and training recipe
    model: Literal["auto", "digits_cnn", "mlp", "small_cnn", "resnet18", "airbench"] = "auto"
    width: int | None = None
    epochs: int | None = None
    lr: float | None = None
    weight_decay: float = 5e-4
    # scoring
    methods: list[Literal["el2n", "grand", "forgetting"]] = field(default_factory=lambda: list(METHODS))
    el2n_epoch: int | None = None
    grand_epoch: int = 0
    forgetting_epochs: int | None = None
    num_runs: int = 3
    score_seed: int = 1000
    # pruning and retraining
    keep_fractions: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])
    rules: list[Literal["highest", "lowest", "window", "coverage"]] = field(
        default_factory=lambda: ["highest", "window", "coverage"]
    )
    window_skip: list[float] = field(default_factory=lambda: [0.2])
    coverage_beta: float = 0.1
    coverage_strata: Optional[int] = None
    class_balanced: bool = False
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    budget: Literal["same_steps", "same_epochs"] = "same_steps"
    select_on_val: bool = True
    # hardware and output
    accelerator: str = "auto"
    devices: int | list[int] = 1
    precision: str | None = None
    num_threads: int | None = None
    progress_bar: bool = False
    tensorboard: bool = True

    # ------------------------------------------------------------------------------------------------ resolve
    def resolved(self) -> PipelineConfig:
        """A copy with every ``None``/``auto`` default replaced by the dataset's value (what the runs use)."""
        if self.dataset not in _DATASET_DEFAULTS:
            raise PipelineError(f"Unknown dataset {self.dataset!r}: choose one of {', '.join(DATASETS)}.")
        d = {**_DATASET_DEFAULTS[self.dataset], **_MODEL_DEFAULTS.get(self.model, {})}
        r = dataclasses.replace(self)
        for name in ("batch_size", "num_workers", "epochs", "lr", "el2n_epoch"):
            if getattr(r, name) is None:
                setattr(r, name, d[name])
        if r.val_size is None:
            r.val_size = d["val_size"] if (self.dataset == "digits" or self.select_on_val) else 0
        if r.forgetting_epochs is None:
            r.forgetting_epochs = r.epochs
        if r.accelerator == "auto" and r.dataset == "digits":
            r.accelerator = "cpu"
        if r.model == "auto":
            if r.dataset == "digits":
                r.model = "digits_cnn"
            else:
                gpu = r.accelerator in ("gpu", "cuda") or (r.accelerator == "auto" and _cuda_available())
                r.model = "resnet18" if gpu else "small_cnn"
        if r.num_threads is None and r.dataset == "digits" and r.accelerator == "cpu":
            r.num_threads = 1
        r.label_noise = [float(f) for f in r.label_noise]
        r.keep_fractions = [float(f) for f in r.keep_fractions]
        r.window_skip = [float(f) for f in r.window_skip]
        return r

    # ------------------------------------------------------------------------------------------------ validate
    def validate(self) -> PipelineConfig:
        """Check every option (data location included) and return the resolved config.

        Raises:
            PipelineError: with a message naming the option and the fix; nothing has been trained yet.
        """
        problems: list[str] = []
        _CONTENT_KEYS.clear()  # the data is fingerprinted again for this stage

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(
            self.dataset in DATASETS, f"--dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}."
        )
        if problems:
            raise PipelineError(problems[0])
        r = self.resolved()
        need(
            r.model in MODELS,
            f"--model must be auto, digits_cnn, mlp, small_cnn, resnet18 or airbench, got {r.model!r}.",
        )
        need(
            r.model != "airbench" or r.dataset == "cifar10",
            "--model airbench needs colour images (--dataset cifar10 with any ImageFolder folder); not digits.",
        )
        if r.dataset == "digits":
            need(
                r.model != "resnet18",
                "--model resnet18 needs 32x32 images; use digits_cnn or mlp for digits.",
            )
            need(r.train_subset is None, "--train_subset applies to cifar10 only.")
            need(
                r.data_dir is None,
                f"--data_dir applies to --dataset cifar10 (an image folder, zip or torchvision root); digits is "
                f"bundled with scikit-learn and reads no files. Drop --data_dir {r.data_dir!r}, or pass "
                "--dataset cifar10 to train on that data.",
            )
            need(0 <= r.val_size <= 400, f"--val_size for digits must be in [0, 400], got {r.val_size}.")
        else:
            if not r.data_dir:
                problems.append(
                    "--dataset cifar10 needs --data_dir: pass --data-dir pointing at cifar10-jpeg.zip or an extracted "
                    "folder (train/<class>/*.jpg, test/<class>/*.jpg), or at torchvision's CIFAR10 root."
                )
            else:
                from lightning_datadiet.datasets import _detect_layout

                try:
                    _detect_layout(Path(r.data_dir).expanduser())
                except FileNotFoundError as err:
                    problems.append(str(err))
            need(r.val_size >= 0, f"--val_size must be >= 0, got {r.val_size}.")
            need(
                r.train_subset is None or r.train_subset >= 100, "--train_subset must be at least 100 images."
            )
        need(r.batch_size >= 1, f"--batch_size must be positive, got {r.batch_size}.")
        need(r.num_workers >= 0, f"--num_workers must be >= 0, got {r.num_workers}.")
        need(len(r.label_noise) >= 1, "--label_noise needs at least one value (0 = clean).")
        need(
            all(0.0 <= f < 1.0 for f in r.label_noise),
            f"--label_noise values must be fractions in [0, 1), got {r.label_noise}.",
        )
        need(len(set(r.label_noise)) == len(r.label_noise), f"--label_noise has duplicates: {r.label_noise}.")
        need(
            r.noise_mode in NOISE_MODES,
            f"--noise_mode must be one of {', '.join(NOISE_MODES)}, got {r.noise_mode!r}.",
        )
        need(r.width is None or r.width >= 1, f"--width must be positive, got {r.width}.")
        need(r.epochs >= 1, f"--epochs must be at least 1, got {r.epochs}.")
        need(r.lr > 0, f"--lr must be positive, got {r.lr}.")
        need(r.weight_decay >= 0, f"--weight_decay must be >= 0, got {r.weight_decay}.")
        unknown = [m for m in r.methods if m not in METHODS]
        need(not unknown, f"--methods: unknown method(s) {unknown}; choose from {', '.join(METHODS)}.")
        need(len(set(r.methods)) == len(r.methods), f"--methods has duplicates: {r.methods}.")
        need(
            0 <= r.el2n_epoch <= r.epochs,
            f"--el2n_epoch must be in [0, epochs={r.epochs}], got {r.el2n_epoch}.",
        )
        need(
            0 <= r.grand_epoch <= r.epochs,
            f"--grand_epoch must be in [0, epochs={r.epochs}], got {r.grand_epoch}.",
        )
        need(
            1 <= r.forgetting_epochs <= r.epochs,
            f"--forgetting_epochs must be in [1, epochs={r.epochs}], got {r.forgetting_epochs}.",
        )
        need(r.num_runs >= 1, f"--num_runs must be at least 1, got {r.num_runs}.")
        need(len(r.keep_fractions) >= 1, "--keep_fractions needs at least one value.")
        bad = [f for f in r.keep_fractions if not 0.0 < f < 1.0]
        valid_keeps = [f for f in r.keep_fractions if 0.0 < f < 1.0]
        need(
            not bad,
            f"--keep_fractions must lie strictly between 0 and 1 (the fraction of the training set kept; the full-data "
            f"baseline always runs), got {bad}.",
        )
        need(
            len(set(r.keep_fractions)) == len(r.keep_fractions),
            f"--keep_fractions has duplicates: {r.keep_fractions}.",
        )
        unknown = [x for x in r.rules if x not in RULES]
        need(
            not unknown,
            f"--rules: unknown rule(s) {unknown}; choose from {', '.join(RULES)} (random always runs).",
        )
        need(len(set(r.rules)) == len(r.rules), f"--rules has duplicates: {r.rules}.")
        if "window" in r.rules:
            need(len(r.window_skip) >= 1, "--rules includes window: give --window_skip, e.g. [0.1,0.2].")
            skips_ok = all(0.0 < s < 1.0 for s in r.window_skip)
            need(skips_ok, f"--window_skip values must be in (0, 1), got {r.window_skip}.")
            if skips_ok and r.window_skip and valid_keeps and not bad:  # only once the keep fractions are valid
                need(
                    any(s + f <= 1.0 for s in r.window_skip for f in valid_keeps),
                    "--window_skip: no window fits (skip + keep fraction must be at most 1).",
                )
        need(0.0 <= r.coverage_beta < 1.0, f"--coverage_beta must be in [0, 1), got {r.coverage_beta}.")
        need(r.coverage_strata is None or r.coverage_strata >= 1, f"--coverage_strata must be positive, got {r.coverage_strata}.")
        need(len(r.seeds) >= 1, "--seeds needs at least one retraining seed.")
        need(len(set(r.seeds)) == len(r.seeds), f"--seeds has duplicates: {r.seeds}.")
        need(r.budget in BUDGETS, f"--budget must be one of {', '.join(BUDGETS)}, got {r.budget!r}.")
        need(
            not r.select_on_val or r.val_size > 0,
            "--select_on_val needs validation data: set --val_size > 0 (or --select_on_val false).",
        )
        devices = r.devices if isinstance(r.devices, list) else None
        need(
            (devices is None and r.devices == 1) or (devices is not None and len(devices) == 1),
            f"--devices: the pipeline trains one run per device; use 1 or a one-element list such as [1], got "
            f"{r.devices!r}.",
        )
        need(
            r.num_threads is None or r.num_threads >= 1,
            f"--num_threads must be positive, got {r.num_threads}.",
        )
        problems += _output_dir_problems(r.output_dir)
        problems += _hardware_problems(r)
        if problems:
            raise PipelineError("\n".join(problems))
        return r


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _output_dir_problems(output_dir: str) -> list[str]:
    """``--output_dir`` must be a folder or creatable as one: not an existing file, not below a file."""
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        return [
            f"--output_dir {output_dir!r} is an existing file, not a folder: pass a folder (a new path or an "
            "existing directory) for the scores, results and plots."
        ]
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return [
                    f"--output_dir {output_dir!r} lies under {str(parent)!r}, which is a file, not a folder: pass "
                    "a folder path whose parents are folders."
                ]
            if not os.access(parent, os.W_OK | os.X_OK):
                return [f"--output_dir {output_dir!r}: cannot create it in {str(parent)!r} (not writable)."]
            break
    return []


_ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


def _precision_values() -> tuple[str, ...]:
    """The precision strings Lightning accepts (read from Lightning; a fixed list if that moves)."""
    from typing import get_args

    try:
        from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

        values = {str(v) for t in (_PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS) for v in get_args(t)}
    except ImportError:  # pragma: no cover - another Lightning layout
        values = set()
    if not values:  # pragma: no cover
        values = {"transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true",
                  "bf16-mixed", "32-true", "64-true", "64", "32", "16", "bf16"}  # fmt: skip
    return tuple(sorted(values))


def _hardware_problems(r: PipelineConfig) -> list[str]:
    """``--accelerator`` must name an accelerator that is there, ``--precision`` one Lightning knows."""
    problems = []
    acc = str(r.accelerator).lower()
    if acc not in _ACCELERATORS:
        problems.append(f"--accelerator must be one of {', '.join(_ACCELERATORS)}, got {r.accelerator!r}.")
    elif acc in ("gpu", "cuda") and not _cuda_available():
        import torch

        mps = getattr(torch.backends, "mps", None)
        if not (acc == "gpu" and mps is not None and mps.is_available()):
            problems.append(
                f"--accelerator {r.accelerator}: no GPU is visible to torch (torch.cuda.is_available() is False; "
                f"torch {torch.__version__}). Use --accelerator cpu (or auto), or install a CUDA build of torch "
                "and check CUDA_VISIBLE_DEVICES / nvidia-smi."
            )
    elif acc == "mps":
        import torch

        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            problems.append("--accelerator mps: Apple's MPS is not available here. Use --accelerator cpu (or auto).")
    if r.precision is not None:
        allowed = _precision_values()
        if str(r.precision) not in allowed:
            problems.append(
                f"--precision {r.precision!r} is not a Lightning precision: use one of {', '.join(allowed)} (e.g. "
                "bf16-mixed on recent GPUs, 32-true on CPU), or leave it unset for Lightning's default."
            )
    return problems


# ------------------------------------------------------------------------------------------------- the plan


def _digest(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


@dataclass(frozen=True)
class Setting:
    """One label-noise level: its own data, scores and runs."""

    name: str
    label_noise: float


def settings(cfg: PipelineConfig) -> list[Setting]:
    """The label-noise settings of a resolved config, e.g. ``clean`` and ``noise20-uniform``."""
    out = []
    for f in cfg.label_noise:
        name = "clean" if f == 0 else f"noise{f * 100:g}-{cfg.noise_mode}"
        out.append(Setting(name, f))
    return out


_CONTENT_KEYS: dict[tuple[str, str | None], dict[str, Any]] = {}  # per stage; cleared by validate()


def _content_key(cfg: PipelineConfig) -> dict[str, Any]:
    """What the data *is*: a content fingerprint of every training and test image and label, the class names and
    the split sizes (:func:`lightning_datadiet.datasets.data_fingerprint`), never where it is stored. Looked up
    once per stage (every :meth:`PipelineConfig.validate` looks again, so changed files are noticed)."""
    from lightning_datadiet.datasets import data_fingerprint

    memo = (cfg.dataset, cfg.data_dir)
    if memo not in _CONTENT_KEYS:
        try:
            _CONTENT_KEYS[memo] = data_fingerprint(cfg.dataset, cfg.data_dir)
        except (FileNotFoundError, OSError, ValueError) as err:
            raise PipelineError(f"Cannot read the data of --dataset {cfg.dataset}: {err}") from err
    return _CONTENT_KEYS[memo]


def _data_key(cfg: PipelineConfig, setting: Setting) -> dict[str, Any]:
    key: dict[str, Any] = {
        "dataset": cfg.dataset,
        "content": _content_key(cfg),
        "val_size": cfg.val_size,
        "split_seed": cfg.split_seed,
        "label_noise": setting.label_noise,
    }
    if setting.label_noise > 0:
        key.update(noise_mode=cfg.noise_mode, noise_seed=cfg.noise_seed)
    if cfg.dataset == "cifar10":
        key["train_subset"] = cfg.train_subset
    return key


def _recipe_key(cfg: PipelineConfig) -> dict[str, Any]:
    return {
        "model": cfg.model,
        "width": cfg.width,
        "epochs": cfg.epochs,
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "batch_size": cfg.batch_size,
    }


def _scoring_key(cfg: PipelineConfig, setting: Setting) -> dict[str, Any]:
    return {
        "data": _data_key(cfg, setting),
        "recipe": _recipe_key(cfg),
        "el2n_epoch": cfg.el2n_epoch,
        "grand_epoch": cfg.grand_epoch,
        "forgetting_epochs": cfg.forgetting_epochs,
    }


def _method_epoch(cfg: PipelineConfig, method: str) -> int:
    return {"el2n": cfg.el2n_epoch, "grand": cfg.grand_epoch, "forgetting": cfg.forgetting_epochs}[method]


def score_dir(cfg: PipelineConfig, setting: Setting) -> Path:
    """Folder of a setting's score files: ``output_dir/scores/<setting>-<hash of data, recipe, scoring epochs>``."""
    return Path(cfg.output_dir) / "scores" / f"{setting.name}-{_digest(_scoring_key(cfg, setting), 8)}"


def mean_score_path(cfg: PipelineConfig, setting: Setting, method: str) -> Path:
    """The averaged score file of ``method`` (over ``num_runs`` runs)."""
    return score_dir(cfg, setting) / f"{method}_mean{cfg.num_runs}runs.scores"


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
    return [
        ScoringRun(s, cfg.score_seed + r, score_dir(cfg, s))
        for s in settings(cfg)
        for r in range(cfg.num_runs)
    ]


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
        return _rule_label(self.rule, self.window_skip, self.config.get("coverage_beta"))

    def describe(self) -> str:
        what = (
            "full data"
            if self.method == "full"
            else f"{self.method} {self.rule_label} keep={self.keep_fraction:g}"
        )
        return f"{self.setting.name}: {what} seed={self.seed}"


def _rule_label(rule: str, window_skip: float | None = None, beta: float | None = None) -> str:
    if rule == "window":
        return f"window(skip={window_skip:g})"
    if rule == "coverage" and beta is not None:
        return f"coverage(beta={beta:g})"
    return rule


def _retrain_run(
    cfg: PipelineConfig, s: Setting, method: str, rule: str, keep: float, seed: int, skip: float | None = None
) -> RetrainRun:
    conf: dict[str, Any] = {
        "data": _data_key(cfg, s),
        "recipe": _recipe_key(cfg),
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
            "key": _scoring_key(cfg, s),
            "method_epoch": _method_epoch(cfg, method),
            "num_runs": cfg.num_runs,
            "score_seed": cfg.score_seed,
        }
    if rule == "window":
        conf["window_skip"] = skip
    if rule == "coverage":
        conf.update(coverage_beta=cfg.coverage_beta, coverage_strata=cfg.coverage_strata)
    return RetrainRun(s, method, rule, keep, seed, skip, _digest(conf), conf)


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
                        skips = (
                            [x for x in cfg.window_skip if x + keep <= 1.0 + 1e-9]
                            if rule == "window"
                            else [None]
                        )
                        runs += [_retrain_run(cfg, s, method, rule, keep, seed, x) for x in skips]
    return runs


# ------------------------------------------------------------------------------------------------ building blocks


def make_datamodule(cfg: PipelineConfig, setting: Setting):
    """The setting's DataModule (labels corrupted on the training split only)."""
    from lightning_datadiet.datasets import CIFAR10DataModule, DigitsDataModule

    noise = {"label_noise": setting.label_noise, "noise_mode": cfg.noise_mode, "noise_seed": cfg.noise_seed}
    if cfg.model == "airbench":
        from lightning_datadiet.recipes.airbench import AirbenchDataModule

        return AirbenchDataModule(
            cfg.data_dir,
            batch_size=cfg.batch_size,
            val_size=cfg.val_size,
            train_subset=cfg.train_subset,
            split_seed=cfg.split_seed,
            **noise,
        )
    if cfg.dataset == "digits":
        return DigitsDataModule(
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            split_seed=cfg.split_seed,
            val_size=cfg.val_size,
            **noise,
        )
    return CIFAR10DataModule(
        cfg.data_dir,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        val_size=cfg.val_size,
        train_subset=cfg.train_subset,
        split_seed=cfg.split_seed,
        **noise,
    )


def make_module(cfg: PipelineConfig, num_classes: int):
    """A fresh ``ClassifierModule`` with the configured network and recipe (seed the RNG first)."""
    from lightning_datadiet.models import ClassifierModule, build_model

    if cfg.model == "airbench":
        from lightning_datadiet.recipes.airbench import AirbenchModule

        return AirbenchModule(
            num_classes=num_classes, width=cfg.width or 64, lr=cfg.lr, weight_decay=cfg.weight_decay
        )
    channels, side = _INPUT_SHAPE[cfg.dataset]
    net = build_model(cfg.model, num_classes, in_channels=channels, width=cfg.width, input_size=side)
    return ClassifierModule(net, num_classes=num_classes, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _make_trainer(
    cfg: PipelineConfig, max_epochs: int, *, logger: Any, callbacks: list | None = None, val: bool
):
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import TQDMProgressBar

    callbacks = list(callbacks or [])
    if cfg.progress_bar:  # redrawing the bar on every step costs more than a tiny model's step
        callbacks.append(TQDMProgressBar(refresh_rate=PROGRESS_REFRESH_RATE))
    return Trainer(
        max_epochs=max_epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        precision=cfg.precision,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=max_epochs if val else 1,  # validate once, at the end
        limit_val_batches=None if val else 0,
    )


def _tb_logger(cfg: PipelineConfig, name: str, version: str):
    if not cfg.tensorboard:
        return False
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(
        Path(cfg.output_dir) / "tensorboard", name=name, version=version, default_hp_metric=False
    )


def _atomic_write(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # missing or unreadable: treat as not finished


@contextlib.contextmanager
def _quiet_lightning(cfg: PipelineConfig) -> Iterator[None]:
    """Fewer messages from Lightning (its info lines repeat for every run) and the configured torch threads."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning_datadiet")]
    levels = [lg.level for lg in loggers]
    import torch

    threads = torch.get_num_threads()
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    with warnings.catch_warnings():
        for pattern in (
            ".*does not have many workers.*",
            ".*LeafSpec.*",
            ".*is smaller than the logging interval.*",
            ".*Checkpoint directory.*",
        ):
            warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
            torch.set_num_threads(threads)


def _say(message: str) -> None:
    print(message, flush=True)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class _ETA:
    """Running count and estimated time left of a stage's fits (mean time per finished fit x fits left)."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def tick(self) -> str:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        left = elapsed / self.done * (self.total - self.done)
        return f"stage {_duration(elapsed)}, eta {_duration(left)}"


# ------------------------------------------------------------------------------------------------ stage: score


def _stop_after_epoch(epoch: int) -> Any:
    """A callback that stops a scoring run once every requested scoring epoch is done (the LR schedule still
    spans ``epochs``); built here so that importing this module does not import Lightning."""
    from lightning.pytorch.callbacks import Callback
    from typing_extensions import override

    class _StopAfterEpoch(Callback):
        def __init__(self, epoch: int) -> None:
            self.epoch = epoch

        @override
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.current_epoch + 1 >= self.epoch:
                trainer.should_stop = True

    return _StopAfterEpoch(epoch)


def _scoring_done(run: ScoringRun, methods: list[str]) -> dict | None:
    marker = _read_json(run.marker)
    if not marker or not set(methods) <= set(marker.get("paths", {})):
        return None
    if not all((run.directory / marker["paths"][m]).exists() for m in methods):
        return None
    return marker


def run_scoring(cfg: PipelineConfig) -> dict[str, dict[str, Path]]:
    """Scoring stage: ``num_runs`` training runs per setting with the score callbacks, then one averaged file per
    method. Finished runs (a ``run_seed<S>.json`` marker next to their score files) are skipped.

    Returns:
        ``{setting name: {method: averaged score file}}``.
    """
    from lightning.pytorch import seed_everything

    from lightning_datadiet import (
        EL2NCallback,
        ForgettingCallback,
        GraNdCallback,
        average_scores,
        save_scores,
    )

    cfg = cfg.validate()
    plan = plan_scoring(cfg)
    averaged: dict[str, dict[str, Path]] = {}
    if not plan:
        _say("scoring: no methods configured, nothing to score")
        return averaged
    stop = max(max(_method_epoch(cfg, m) for m in cfg.methods), 1)
    datamodules: dict[str, Any] = {}
    todo = [run for run in plan if not _scoring_done(run, cfg.methods)]
    for i, run in enumerate(plan, 1):
        if run not in todo:
            _say(f"[score {i}/{len(plan)}] {run.setting.name} seed={run.seed}: done before, skipped")
    eta = _ETA(len(todo))
    with _quiet_lightning(cfg):
        for i, run in enumerate(todo, 1):
            tag = f"[score {i}/{len(todo)}] {run.setting.name} seed={run.seed}"
            dm = datamodules.setdefault(run.setting.name, make_datamodule(cfg, run.setting))
            dm.setup("fit")
            seed_everything(run.seed, workers=True, verbose=False)
            module = make_module(cfg, dm.num_classes)
            callbacks: dict[str, Any] = {}
            d = run.directory
            if "el2n" in cfg.methods:
                callbacks["el2n"] = EL2NCallback(cfg.el2n_epoch, dirpath=d, seed=run.seed)
            if "grand" in cfg.methods:
                callbacks["grand"] = GraNdCallback(cfg.grand_epoch, dirpath=d, seed=run.seed)
            if "forgetting" in cfg.methods:
                callbacks["forgetting"] = ForgettingCallback(epochs=None, dirpath=d, seed=run.seed)
            if cfg.progress_bar:
                _say(f"{tag}: training {stop} of {cfg.epochs} epochs with {', '.join(callbacks)} scoring")
            start = time.perf_counter()
            trainer = _make_trainer(
                cfg,
                cfg.epochs,
                logger=_tb_logger(cfg, f"{run.setting.name}/score", f"seed{run.seed}"),
                callbacks=[*callbacks.values(), _data_map_callback(d, run.seed), _stop_after_epoch(stop)],
                val=False,
            )
            trainer.fit(module, datamodule=dm)
            if trainer.interrupted:
                raise KeyboardInterrupt
            paths = {}
            for method, cb in callbacks.items():
                epoch = _method_epoch(cfg, method) if method != "forgetting" else max(cb.score_paths)
                paths[method] = Path(cb.score_paths[epoch]).name
            _write_json(
                run.marker,
                {
                    "seed": run.seed,
                    "setting": run.setting.name,
                    "paths": paths,
                    "epochs_trained": trainer.current_epoch,
                    "wall_time_s": round(time.perf_counter() - start, 3),
                    "config": _scoring_key(cfg, run.setting),
                    "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                },
            )
            _say(
                f"{tag}: {', '.join(callbacks)} scored after {trainer.current_epoch} of {cfg.epochs} epochs in "
                f"{time.perf_counter() - start:.1f} s -> {d} ({eta.tick()})"
            )
    for s in settings(cfg):
        runs = [r for r in plan if r.setting == s]
        averaged[s.name] = {}
        for method in cfg.methods:
            files = [r.directory / _read_json(r.marker)["paths"][method] for r in runs]
            avg = average_scores(files)
            path = mean_score_path(cfg, s, method)
            extra = {"runs": len(files), "seeds": [r.seed for r in runs], "sources": [f.name for f in files]}
            save_scores(
                path,
                avg.scores,
                method=method,
                epoch=avg.epoch,
                label_fingerprint=avg.label_fingerprint,
                extra=extra,
            )
            averaged[s.name][method] = path
    _say(
        f"scoring: averaged scores of {cfg.num_runs} run(s) per method written under {Path(cfg.output_dir) / 'scores'}"
    )
    return averaged


# ------------------------------------------------------------------------------------------------ stage: train


def result_path(cfg: PipelineConfig, key: str) -> Path:
    """Where the result of the run with ``key`` is stored."""
    return Path(cfg.output_dir) / "results" / "runs" / f"{key}.json"


def _check_scores_present(cfg: PipelineConfig) -> None:
    missing = [
        str(mean_score_path(cfg, s, m))
        for s in settings(cfg)
        for m in cfg.methods
        if not mean_score_path(cfg, s, m).exists()
    ]
    if missing:
        raise PipelineError(
            f"No averaged scores for this configuration ({len(missing)} file(s) missing, e.g. {missing[0]}). "
            "Run `datadiet score` with the same options (and --output_dir) first, or `datadiet demo` for all stages."
        )


def _train_one(cfg: PipelineConfig, run: RetrainRun, dm: Any) -> dict[str, Any]:
    from lightning.pytorch import seed_everything

    from lightning_datadiet import PrunedDataModule
    from lightning_datadiet.data.budget import retrain_epochs

    n = len(dm.score_dataset())
    if run.method == "full":
        data, kept = dm, n
    else:
        kwargs: dict[str, Any] = {"class_balanced": cfg.class_balanced, "seed": run.seed}
        if run.rule == "window":
            k = int(math.floor(n * run.keep_fraction + 0.5))
            skip = int(math.floor(n * run.window_skip + 0.5))
            kwargs["offset"] = max(0, n - skip - k)
        if run.rule == "coverage":
            kwargs.update(beta=cfg.coverage_beta, num_strata=cfg.coverage_strata)
        scores = None if run.method == "random" else str(mean_score_path(cfg, run.setting, run.method))
        data = PrunedDataModule(dm, scores, run.keep_fraction, selection=run.rule, **kwargs)
        kept = data.keep_count
    epochs = retrain_epochs(cfg.epochs, n, kept, cfg.budget, batch_size=cfg.batch_size)
    seed_everything(run.seed, workers=True, verbose=False)
    module = make_module(cfg, dm.num_classes)
    has_val = getattr(dm, "val_dataset", None) is not None
    version = f"{run.method}-{run.rule_label}-keep{run.keep_fraction:g}-seed{run.seed}-{run.key[:8]}"
    trainer = _make_trainer(
        cfg, epochs, logger=_tb_logger(cfg, f"{run.setting.name}/train", version), val=has_val
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    if trainer.interrupted:
        raise KeyboardInterrupt
    val_acc = (
        float(trainer.callback_metrics["val/acc"])
        if has_val and "val/acc" in trainer.callback_metrics
        else None
    )
    test = trainer.test(module, datamodule=data, verbose=False)[0]
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
        "test_acc": float(test["test/acc"]),
        "val_acc": val_acc,
        "wall_time_s": round(time.perf_counter() - start, 3),
        "config": run.config,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_retraining(cfg: PipelineConfig) -> list[dict[str, Any]]:
    """Retraining stage: every planned run whose result file is missing is trained and tested, then written
    atomically to ``results/runs/<key>.json``. Needs the averaged scores of :func:`run_scoring`.

    Returns:
        The results of all planned runs (finished before or now).
    """
    cfg = cfg.validate()
    _check_scores_present(cfg)
    plan = plan_retraining(cfg)
    todo = [r for r in plan if _read_json(result_path(cfg, r.key)) is None]
    _say(f"retraining: {len(plan)} runs planned, {len(plan) - len(todo)} done before, {len(todo)} to train")
    datamodules: dict[str, Any] = {}
    eta = _ETA(len(todo))
    with _quiet_lightning(cfg):
        for i, run in enumerate(todo, 1):
            dm = datamodules.setdefault(run.setting.name, make_datamodule(cfg, run.setting))
            dm.setup("fit")
            result = _train_one(cfg, run, dm)
            _write_json(result_path(cfg, run.key), result)
            _say(
                f"[train {i}/{len(todo)}] {run.describe()}: {result['kept']} examples, {result['epochs_trained']} epochs,"
                f" test acc {result['test_acc']:.4f} ({result['wall_time_s']:.1f} s; {eta.tick()})"
            )
    return load_results(cfg)[0]


# ------------------------------------------------------------------------------------------------ stage: report


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
        result = _read_json(result_path(cfg, run.key))
        (found.append(result) if result is not None else missing.append(run))
    return found, missing


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: tuple[str, ...] | list[str]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    _atomic_write(path, buf.getvalue())


def _group(results: list[dict[str, Any]], field_name: str = "test_acc") -> dict[tuple, list[float]]:
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in results:
        if r.get(field_name) is not None:
            groups[(r["setting"], r["method"], r["rule"], r["keep_fraction"])].append(float(r[field_name]))
    return groups


def choose_rules_on_validation(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting, score method and keep fraction, the rule (any configured rule of that method, or random) with
    the best mean validation accuracy over seeds. Ties go to random (no evidence that the scores help).

    Returns:
        One row per (setting, method, keep fraction): ``chosen_rule``, its validation and test accuracy, random's,
        ``random_wins`` and all candidates' validation accuracies.
    """
    val = _group(results, "val_acc")
    test = _group(results, "test_acc")
    rows = []
    keys = sorted({(s, m, f) for (s, m, _, f) in val if m in METHODS})
    for setting, method, keep in keys:
        candidates = {
            rule: float(np.mean(v))
            for (s, m, rule, f), v in val.items()
            if (s, m, f) == (setting, method, keep)
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


def _noise_rows(cfg: PipelineConfig, masks: dict[str, Any]) -> list[dict[str, Any]]:
    from lightning_datadiet import load_scores
    from lightning_datadiet.analysis import noise_detection

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


def _summary_stats(values: list[float]) -> tuple[float, float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(np.percentile(a, 16)), float(np.percentile(a, 84))


def plot_accuracy(cfg: PipelineConfig, results: list[dict[str, Any]], path: Path) -> Path:
    """Test accuracy against the fraction of the training set kept, one panel per setting (see
    :func:`lightning_datadiet.pipeline_plots.plot_accuracy`)."""
    from lightning_datadiet.pipeline_plots import plot_accuracy as plot

    return plot(cfg, results, path)


def plot_histograms(cfg: PipelineConfig, masks: dict[str, Any], path: Path) -> Path | None:
    """Histograms of the averaged scores, every example counted, ``+inf`` at the tick ``never learned (inf)``
    (see :func:`lightning_datadiet.pipeline_plots.plot_histograms`)."""
    from lightning_datadiet.pipeline_plots import plot_histograms as plot

    return plot(cfg, masks, path)


def _tensorboard_report(cfg: PipelineConfig, results: list[dict[str, Any]]) -> Path | None:
    if not cfg.tensorboard:
        return None
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from lightning_datadiet import load_scores

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
    for (setting, method, rule, keep), values in sorted(_group(results).items()):
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
    groups = _group(results)
    fractions = sorted(cfg.keep_fractions)
    lines = [
        f"datadiet: {cfg.dataset}, model {cfg.model}, {cfg.epochs} epochs full-data, budget {cfg.budget}, "
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
    _write_csv(out / "results.csv", rows, RESULT_COLUMNS)
    _write_json(out / "results.json", [{c: r.get(c) for c in RESULT_COLUMNS} for r in rows])
    written.update(results_csv=out / "results.csv", results_json=out / "results.json")
    chosen = choose_rules_on_validation(rows) if cfg.select_on_val else []
    if chosen:
        _write_json(out / "rule_selection.json", chosen)
        _write_csv(out / "rule_selection.csv", chosen, [k for k in chosen[0] if k != "candidates_val_acc"])
        written["rule_selection"] = out / "rule_selection.json"
    masks: dict[str, Any] = {}
    for s in settings(cfg):
        if s.label_noise > 0:
            dm = make_datamodule(cfg, s)
            dm.setup("fit")
            masks[s.name] = dm.train_corrupted_mask
    noise = _noise_rows(cfg, masks)
    if noise:
        _write_json(out / "noise_detection.json", noise)
        _write_csv(out / "noise_detection.csv", noise, list(noise[0]))
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
    _atomic_write(out / "summary.txt", summary + "\n")
    written["summary"] = out / "summary.txt"
    _say("")
    _say(summary)
    _say("")
    _say(
        f"results: {out / 'results.csv'}; plot: {written.get('plot', '-')}; TensorBoard: tensorboard --logdir {out / 'tensorboard'}"
    )
    return {"paths": written, "summary": summary, "results": rows, "missing": len(missing)}


def _data_map_callback(directory: Path, seed: int) -> Any:
    """Training dynamics of each scoring run, for the report's data maps (no extra pass; three dense [N] metrics)."""
    from lightning_datadiet import TrainingDynamicsCallback

    return TrainingDynamicsCallback(
        ["confidence", "variability", "correctness"], dirpath=directory, seed=seed, log_histogram=False
    )


def plot_data_maps(cfg: PipelineConfig, masks: dict[str, Any], out: Path) -> dict[str, Path]:
    """One data map PNG per setting (``data_map_<setting>.png``) from its first scoring run's training dynamics,
    corrupted examples marked when labels were corrupted."""
    from lightning_datadiet.analysis.datamap import data_map_from_files

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


def run_demo(cfg: PipelineConfig) -> dict[str, Any]:
    """All stages: score, retrain, report (skipping whatever is already finished in ``output_dir``)."""
    resolved = cfg.validate()
    out = Path(resolved.output_dir)
    _write_json(out / "config.resolved.json", dataclasses.asdict(resolved))
    start = time.perf_counter()
    run_scoring(resolved)
    run_retraining(resolved)
    report = run_report(resolved)
    _say(f"datadiet: all stages done in {time.perf_counter() - start:.1f} s")
    return report
