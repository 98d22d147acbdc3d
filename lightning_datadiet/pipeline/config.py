"""The study's options (:class:`PipelineConfig`), how they resolve into a model, data and Trainer, and their checks.

A study runs on any LightningModule and LightningDataModule given the LightningCLI way (``model`` / ``data`` as
``{"class_path", "init_args"}``, ``trainer`` as Trainer arguments), or on a built-in preset
(:mod:`lightning_datadiet.presets`) picked by the shorthands ``dataset``, ``model`` (a name), ``data_dir``...
:meth:`PipelineConfig.resolved` turns the shorthands into the preset's class paths, so that every later stage
sees one form: explicit ``model``, ``data`` and ``trainer``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args

import torch
from lightning.fabric.connector import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

from lightning_datadiet._utils import plain
from lightning_datadiet.demo.data import _detect_layout
from lightning_datadiet.pipeline.specs import (
    SpecError,
    accepts,
    import_class,
    normalize_spec,
    trainer_defaults,
)
from lightning_datadiet.presets import load_preset

__all__ = [
    "PipelineConfig",
    "PipelineError",
    "METHODS",
    "RULES",
    "DATASETS",
    "MODEL_NAMES",
    "NOISE_MODES",
    "BUDGETS",
    "output_dir_problems",
]

METHODS = ("el2n", "grand", "forgetting")
RULES = ("highest", "lowest", "window", "coverage")
DATASETS = ("digits", "cifar10")
NOISE_MODES = ("uniform", "permute", "uniform_other")
BUDGETS = ("same_steps", "same_epochs")
#: ``--model`` names of the built-in networks (``auto``: digits_cnn for digits; for cifar10 resnet18 on a GPU,
#: else small_cnn); ``airbench`` is the fast CIFAR-10 recipe (its own preset, model and data)
MODEL_NAMES = ("auto", "digits_cnn", "mlp", "small_cnn", "resnet18", "airbench")
_NETS = ("digits_cnn", "mlp", "small_cnn", "resnet18")
#: shorthands that set an init arg of the data class / of the model class
_DATA_SHORTHANDS = ("data_dir", "batch_size", "num_workers", "train_subset")
_MODEL_SHORTHANDS = ("width", "lr", "weight_decay")
#: Trainer arguments the study sets itself for every fit, with the study option to use instead
_STUDY_OWNED = {
    "max_epochs": "--epochs (scoring runs and full-data training; pruned subsets get the --budget)",
    "min_epochs": "--epochs",
    "max_steps": "--epochs",
    "min_steps": "--epochs",
    "logger": "--tensorboard (logs under output_dir/tensorboard)",
    "enable_progress_bar": "--progress_bar",
    "limit_val_batches": "nothing: the study measures validation and test accuracy itself after each fit",
    "check_val_every_n_epoch": "nothing: the study measures validation and test accuracy itself after each fit",
    "num_sanity_val_steps": "nothing: the study runs no Lightning validation loop",
    "val_check_interval": "nothing: the study runs no Lightning validation loop",
    "strategy": "nothing: the study trains one run per device (it uses the default single-device strategy)",
    "num_nodes": "nothing: the study trains one run per device",
    "default_root_dir": "--output_dir",
}
#: the data's content keys (:func:`lightning_datadiet.pipeline.plan.data_key`), looked up once per stage: every
#: :meth:`PipelineConfig.validate` forgets them, so data changed between stages is noticed
CONTENT_KEYS: dict[str, dict[str, Any]] = {}


class PipelineError(ValueError):
    """A bad option or a missing prerequisite, found before any training starts."""


@dataclass
class PipelineConfig:
    """Options of every ``datadiet`` stage (the defaults are the demo: digits, a few minutes on 2 CPU cores).

    Args:
        output_dir: Folder for everything the pipeline writes (scores, results, plots, TensorBoard logs).
            Rerunning with the same folder skips finished runs.
        model: The LightningModule: a class path with init args, ``{"class_path": "my_pkg.MyNet", "init_args":
            {...}}`` (on the command line ``--model my_pkg.MyNet --model.width 64``), or the name of a built-in
            network for the built-in datasets: ``digits_cnn``, ``mlp``, ``small_cnn`` (fast CNN for CPU),
            ``resnet18`` (torchvision ResNet18 with a CIFAR stem), ``auto`` (default: digits_cnn for digits; for
            cifar10 resnet18 when a GPU is used, else small_cnn) or ``airbench`` (the fast CIFAR-10 recipe:
            patch-whitened BN conv net, label smoothing, flip/translate on the batch, uint8 data on the device; its
            own preset with batch 512, lr 0.2, 10 epochs, EL2N at epoch 1). Your module needs no change: the study
            reads inputs, labels and logits the way the score callbacks do, and measures accuracy itself.
        data: The LightningDataModule as a class path with init args (``--data my_pkg.MyData``). It needs
            ``train_dataloader()`` (one map-style DataLoader) and ``test_dataloader()``; ``val_dataloader()`` is
            used by ``select_on_val`` when present, else a class-stratified validation split is carved from the
            training set (``val_size``, seeded by ``split_seed``). Optional: ``score_dataset()`` (the training set
            without augmentation, for EL2N/GraNd) and ``content_fingerprint()`` (a string or dict that identifies
            the data; default: a hash of the length, all labels and a sample of 256 items of the training and test
            sets). Unset: the preset of ``dataset``.
        trainer: Trainer arguments applied to every fit (``--trainer.precision bf16-mixed``,
            ``--trainer.callbacks+=...``), as LightningCLI takes them. The study sets the epochs, logger, progress
            bar and validation itself (use ``epochs``, ``tensorboard``, ``progress_bar``).
        dataset: Built-in preset: ``digits`` (scikit-learn's bundled handwritten digits, 1000 train / 300 val /
            497 test, no download) or ``cifar10`` (needs ``data_dir``); default digits when ``data`` is unset.
        data_dir: Sets ``data_dir`` of the data class (the built-in CIFAR-10: ``cifar10-jpeg.zip``, a folder
            extracted from it, or torchvision's CIFAR10 root; any ``train/<class>/`` + ``test/<class>/`` image
            folder works).
        batch_size: Sets ``batch_size`` of the data class (preset default: 64 digits, 128 cifar10).
        num_workers: Sets ``num_workers`` of the data class (preset default: 0 digits, 4 cifar10).
        val_size: Validation examples held out from the training data (class-stratified, seeded by
            ``split_seed``) for ``select_on_val``: the data class's ``val_size`` when it takes one (preset default:
            300 for digits; 5000 for cifar10 when ``select_on_val`` is on, else 0), else the size of the split the
            study carves when the DataModule has no validation loader (a count, or a fraction in (0, 1); default
            10% of the training set).
        train_subset: Sets ``train_subset`` of the data class (cifar10: keep this many training images,
            class-stratified, for quick runs).
        split_seed: Seed of the validation split (also sets the data class's ``split_seed`` when it takes one).
        label_noise: Fractions of training labels to corrupt, one experiment ("setting") per value; 0 = clean.
            Validation and test labels are never corrupted.
        noise_mode: ``uniform`` (new uniform random labels; some keep theirs by chance; Zhang et al.),
            ``permute`` (the drawn labels permuted among themselves; the official code) or ``uniform_other``
            (always a different label).
        noise_seed: Seed of the label corruption.
        width: Sets ``width`` of the model class (base width of digits_cnn / small_cnn / resnet18, hidden width
            of mlp, first-group width of airbench; model default when unset).
        epochs: Epochs of full-data training; scoring runs follow the same recipe (preset default: 10 for
            digits, 200 for cifar10 as in the paper, 10 for airbench; 10 for your own model and data).
        lr: Sets ``lr`` of the model class (peak learning rate; preset default: 0.05 digits, 0.1 cifar10).
        weight_decay: Sets ``weight_decay`` of the model class (preset default 5e-4).
        methods: Scores to compute and prune with: ``el2n``, ``grand``, ``forgetting`` (an empty list runs only the
            full-data and random baselines).
        el2n_epoch: EL2N is computed after this many completed epochs of each scoring run (0 = at initialisation;
            preset default: 3 for digits, 20 for cifar10 as in the paper, 1 for airbench; else ``epochs / 10``,
            at least 1).
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
        accelerator: Lightning accelerator (``auto``, ``cpu``, ``gpu``, ...; same as ``--trainer.accelerator``);
            ``auto`` means cpu for digits.
        devices: One device per run: ``1``, or a one-element list naming the device, e.g. ``[1]``.
        precision: Lightning precision, e.g. ``bf16-mixed`` on GPUs (default: Lightning's).
        num_threads: CPU threads of torch (default: 1 for digits on CPU, the fastest for a tiny model; torch's
            default otherwise).
        progress_bar: Show Lightning's progress bars during every fit. Off by default: each finished fit prints
            one line instead (running count, time, estimated time left).
        tensorboard: Write TensorBoard logs (score histograms, training curves) under ``output_dir/tensorboard``.
        preset: Set by resolution: the built-in preset the model and data came from (``None`` for your own).
    """

    output_dir: str = "datadiet_output"
    # the model and the data: class paths the LightningCLI way, or the built-in presets' shorthands
    model: Union[str, dict, None] = None
    data: Optional[dict] = None
    trainer: dict = field(default_factory=dict)
    dataset: Optional[Literal["digits", "cifar10"]] = None
    data_dir: Optional[str] = None
    batch_size: Optional[int] = None
    num_workers: Optional[int] = None
    val_size: Union[int, float, None] = None
    train_subset: Optional[int] = None
    split_seed: Optional[int] = None
    # label noise
    label_noise: list[float] = field(default_factory=lambda: [0.0, 0.2])
    noise_mode: Literal["uniform", "permute", "uniform_other"] = "uniform"
    noise_seed: int = 0
    # model and training recipe
    width: Optional[int] = None
    epochs: Optional[int] = None
    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    # scoring
    methods: list[Literal["el2n", "grand", "forgetting"]] = field(default_factory=lambda: list(METHODS))
    el2n_epoch: Optional[int] = None
    grand_epoch: int = 0
    forgetting_epochs: Optional[int] = None
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
    devices: Union[int, list[int]] = 1
    precision: Optional[str] = None
    num_threads: Optional[int] = None
    progress_bar: bool = False
    tensorboard: bool = True
    preset: Optional[str] = None

    # ------------------------------------------------------------------------------------------------ resolve
    def resolved(self) -> PipelineConfig:
        """A copy in the one form the stages use: ``model`` and ``data`` as complete class-path specs (a preset's
        when the shorthands pick one, with the shorthands applied to its init args), ``trainer`` holding the
        Trainer arguments given, and the study's defaults filled in. Resolving a resolved config changes nothing.

        Raises:
            PipelineError: a shorthand that does not fit the model or data, a bad class path or init arg.
        """
        try:
            return _resolve(self)
        except SpecError as err:
            raise PipelineError(str(err)) from err

    # ------------------------------------------------------------------------------------------------ validate
    def validate(self) -> PipelineConfig:
        """Check every option (data location included) and return the resolved config.

        Raises:
            PipelineError: with a message naming the option and the fix; nothing has been trained yet.
        """
        CONTENT_KEYS.clear()  # the data is fingerprinted again for this stage
        problems = _early_problems(self)
        if problems:
            raise PipelineError("\n".join(problems))
        r = self.resolved()
        problems = _study_problems(r) + output_dir_problems(r.output_dir) + _hardware_problems(r)
        if problems:
            raise PipelineError("\n".join(problems))
        return r


# ------------------------------------------------------------------------------------------------ resolution


def _set_init_arg(kind: str, spec: dict[str, Any], name: str, value: Any) -> None:
    """``--width 32`` sets ``width`` of the model class: refused with the fix when the class takes no such arg."""
    cls = import_class(spec["class_path"])
    if not accepts(cls, name):
        raise PipelineError(
            f"--{name} sets the `{name}` argument of the {kind} class, but {spec['class_path']} takes no `{name}`. "
            f"Set that class's own arguments with --{kind}.init_args.<name> (or --{kind}.<name>), or drop --{name}."
        )
    spec.setdefault("init_args", {})[name] = value


def _preset_name(cfg: PipelineConfig, model_name: str | None) -> str:
    if model_name == "airbench":
        if cfg.dataset not in (None, "cifar10"):
            raise PipelineError(
                "--model airbench needs colour images (--dataset cifar10 with any ImageFolder folder); not digits."
            )
        return "airbench"
    return cfg.dataset or "digits"


def _resolve(cfg: PipelineConfig) -> PipelineConfig:
    r = dataclasses.replace(cfg, trainer=copy.deepcopy(dict(cfg.trainer or {})))
    user_model = isinstance(cfg.model, dict) or (isinstance(cfg.model, str) and "." in cfg.model)
    model_name = None if user_model else (cfg.model or "auto")
    if model_name is not None and model_name not in MODEL_NAMES:
        raise PipelineError(
            f"--model must be a LightningModule class path (my_pkg.MyNet) or one of {', '.join(MODEL_NAMES)}, "
            f"got {model_name!r}."
        )
    defaults: dict[str, Any] = {}
    if cfg.data is None:  # a built-in preset
        r.preset = _preset_name(cfg, model_name)
        preset = load_preset(r.preset)
        data_spec = copy.deepcopy(preset["data"])
        model_spec = copy.deepcopy(cfg.model if user_model else preset["model"])
        defaults = {k: v for k, v in preset.items() if k not in ("model", "data")}
        if model_name in _NETS or (model_name == "auto" and r.preset == "cifar10"):
            net = model_name
            if net == "auto":
                acc = str(cfg.accelerator or defaults.get("accelerator", "auto")).lower()
                gpu = acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())
                net = "resnet18" if gpu else "small_cnn"
            if net == "resnet18" and r.preset == "digits":
                raise PipelineError("--model resnet18 needs 32x32 images; use digits_cnn or mlp for digits.")
            model_spec["init_args"]["net"] = net
        if r.preset == "digits" and cfg.data_dir is not None:
            raise PipelineError(
                f"--data_dir applies to --dataset cifar10 (an image folder, zip or torchvision root); digits is "
                f"bundled with scikit-learn and reads no files. Drop --data_dir {cfg.data_dir!r}, or pass "
                "--dataset cifar10 to train on that data."
            )
        if r.preset in ("cifar10", "airbench") and not cfg.data_dir and not data_spec["init_args"].get("data_dir"):
            raise PipelineError(
                "--dataset cifar10 needs --data_dir: pass --data-dir pointing at cifar10-jpeg.zip or an extracted "
                "folder (train/<class>/*.jpg, test/<class>/*.jpg), or at torchvision's CIFAR10 root."
            )
        if cfg.val_size is None and "val_size" in data_spec["init_args"] and r.preset != "digits":
            if not cfg.select_on_val:
                data_spec["init_args"]["val_size"] = 0  # no validation split is needed: train on all of it
    else:
        if cfg.dataset is not None:
            raise PipelineError(
                f"--dataset {cfg.dataset} picks a built-in dataset, but --data names your DataModule "
                f"({_class_path(cfg.data)}): drop one of them."
            )
        if not user_model:
            raise PipelineError(
                "--data names your DataModule, so --model must name your LightningModule too (a class path, e.g. "
                "--model my_pkg.MyNet --model.width 64); the built-in network names apply to the built-in datasets."
            )
        data_spec = copy.deepcopy(plain(cfg.data))
        model_spec = copy.deepcopy(plain(cfg.model))
    if isinstance(model_spec, str):
        model_spec = {"class_path": model_spec}
    model_spec.setdefault("init_args", {})
    data_spec.setdefault("init_args", {})
    for name in _DATA_SHORTHANDS:
        if getattr(cfg, name) is not None:
            _set_init_arg("data", data_spec, name, getattr(cfg, name))
            setattr(r, name, None)
    data_cls = import_class(data_spec["class_path"])
    if cfg.split_seed is not None and accepts(data_cls, "split_seed"):
        data_spec["init_args"]["split_seed"] = cfg.split_seed
    if cfg.val_size is not None and accepts(data_cls, "val_size"):
        data_spec["init_args"]["val_size"] = cfg.val_size
        r.val_size = None
    for name in _MODEL_SHORTHANDS:
        if getattr(cfg, name) is not None:
            _set_init_arg("model", model_spec, name, getattr(cfg, name))
            setattr(r, name, None)
    r.model = normalize_spec("model", model_spec)
    r.data = normalize_spec("data", data_spec)
    r.dataset = None
    _resolve_trainer(r, defaults)
    _resolve_study_defaults(r, defaults)
    return r


def _class_path(spec: Any) -> str:
    spec = plain(spec)
    return str(spec.get("class_path")) if isinstance(spec, dict) else str(spec)


def _resolve_trainer(r: PipelineConfig, defaults: dict[str, Any]) -> None:
    """``accelerator``/``devices``/``precision`` may be given as study options or as ``--trainer.*``; they are
    kept as study options. Trainer arguments equal to Trainer's defaults are dropped (they change nothing)."""
    trainer = {k: plain(v) for k, v in r.trainer.items()}
    for name, default in (("accelerator", "auto"), ("devices", 1), ("precision", None)):
        if name in trainer:
            value = trainer.pop(name)
            own = getattr(r, name)
            if own != default and own != value:
                raise PipelineError(
                    f"--{name} {own!r} and --trainer.{name} {value!r} disagree: give one of them."
                )
            setattr(r, name, value if value is not None else own)
    if r.accelerator == "auto" and "accelerator" in defaults:
        r.accelerator = defaults["accelerator"]
    if r.precision is None and defaults.get("precision") is not None:
        r.precision = defaults["precision"]
    if r.accelerator == "auto" and r.preset == "digits":
        r.accelerator = "cpu"
    if trainer:
        base = trainer_defaults()
        trainer = {k: v for k, v in trainer.items() if k not in base or base[k] != v}
    r.trainer = trainer


def _resolve_study_defaults(r: PipelineConfig, defaults: dict[str, Any]) -> None:
    if r.epochs is None:
        r.epochs = int(defaults.get("epochs", 10))
    if r.el2n_epoch is None:
        r.el2n_epoch = int(defaults.get("el2n_epoch", max(1, round(r.epochs / 10))))
    if r.forgetting_epochs is None:
        r.forgetting_epochs = r.epochs
    if r.split_seed is None:
        r.split_seed = 0
    if r.num_threads is None and r.preset == "digits" and r.accelerator == "cpu":
        r.num_threads = 1
    r.label_noise = [float(f) for f in r.label_noise]
    r.keep_fractions = [float(f) for f in r.keep_fractions]
    r.window_skip = [float(f) for f in r.window_skip]


# ------------------------------------------------------------------------------------------------ checks


def _early_problems(cfg: PipelineConfig) -> list[str]:
    """Checks that need no import of the model or data (and must come first: a bad dataset name, say)."""
    problems = []
    if cfg.dataset is not None and cfg.dataset not in DATASETS:
        problems.append(f"--dataset must be one of {', '.join(DATASETS)}, got {cfg.dataset!r}.")
    for name, hint in _STUDY_OWNED.items():
        if name in (cfg.trainer or {}):
            problems.append(f"--trainer.{name} is set by the study for every fit; use {hint}.")
    return problems


def _study_problems(r: PipelineConfig) -> list[str]:  # noqa: C901 - a flat list of independent checks
    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    data_args = r.data["init_args"]
    if r.preset in ("cifar10", "airbench"):
        try:
            _detect_layout(Path(str(data_args["data_dir"])).expanduser())
        except FileNotFoundError as err:
            problems.append(str(err))
        subset = data_args.get("train_subset")
        need(subset is None or subset >= 100, "--train_subset must be at least 100 images.")
    if r.preset == "digits":
        need(0 <= data_args.get("val_size", 0) <= 400, f"--val_size for digits must be in [0, 400], got {data_args.get('val_size')}.")
    for name in ("batch_size", "num_workers"):
        value = data_args.get(name)
        low = 1 if name == "batch_size" else 0
        if isinstance(value, int) and value < low:
            problems.append(f"--{name} must be {'positive' if low else '>= 0'}, got {value}.")
    width = r.model["init_args"].get("width")
    need(not isinstance(width, int) or width >= 1, f"--width must be positive, got {width}.")
    lr = r.model["init_args"].get("lr")
    need(not isinstance(lr, (int, float)) or lr > 0, f"--lr must be positive, got {lr}.")
    need(
        r.val_size is None or (isinstance(r.val_size, int) and r.val_size >= 0) or 0 < float(r.val_size) < 1,
        f"--val_size must be a count >= 0 or a fraction in (0, 1), got {r.val_size}.",
    )
    need(len(r.label_noise) >= 1, "--label_noise needs at least one value (0 = clean).")
    need(
        all(0.0 <= f < 1.0 for f in r.label_noise),
        f"--label_noise values must be fractions in [0, 1), got {r.label_noise}.",
    )
    need(len(set(r.label_noise)) == len(r.label_noise), f"--label_noise has duplicates: {r.label_noise}.")
    need(r.noise_mode in NOISE_MODES, f"--noise_mode must be one of {', '.join(NOISE_MODES)}, got {r.noise_mode!r}.")
    need(r.epochs >= 1, f"--epochs must be at least 1, got {r.epochs}.")
    unknown = [m for m in r.methods if m not in METHODS]
    need(not unknown, f"--methods: unknown method(s) {unknown}; choose from {', '.join(METHODS)}.")
    need(len(set(r.methods)) == len(r.methods), f"--methods has duplicates: {r.methods}.")
    for name, low in (("el2n_epoch", 0), ("grand_epoch", 0), ("forgetting_epochs", 1)):
        value = getattr(r, name)
        need(low <= value <= r.epochs, f"--{name} must be in [{low}, epochs={r.epochs}], got {value}.")
    need(r.num_runs >= 1, f"--num_runs must be at least 1, got {r.num_runs}.")
    need(len(r.keep_fractions) >= 1, "--keep_fractions needs at least one value.")
    bad = [f for f in r.keep_fractions if not 0.0 < f < 1.0]
    need(
        not bad,
        f"--keep_fractions must lie strictly between 0 and 1 (the fraction of the training set kept; the full-data "
        f"baseline always runs), got {bad}.",
    )
    need(len(set(r.keep_fractions)) == len(r.keep_fractions), f"--keep_fractions has duplicates: {r.keep_fractions}.")
    unknown = [x for x in r.rules if x not in RULES]
    need(not unknown, f"--rules: unknown rule(s) {unknown}; choose from {', '.join(RULES)} (random always runs).")
    need(len(set(r.rules)) == len(r.rules), f"--rules has duplicates: {r.rules}.")
    if "window" in r.rules:
        need(len(r.window_skip) >= 1, "--rules includes window: give --window_skip, e.g. [0.1,0.2].")
        skips_ok = all(0.0 < s < 1.0 for s in r.window_skip)
        need(skips_ok, f"--window_skip values must be in (0, 1), got {r.window_skip}.")
        if skips_ok and r.window_skip and not bad and r.keep_fractions:
            need(
                any(s + f <= 1.0 for s in r.window_skip for f in r.keep_fractions),
                "--window_skip: no window fits (skip + keep fraction must be at most 1).",
            )
    need(0.0 <= r.coverage_beta < 1.0, f"--coverage_beta must be in [0, 1), got {r.coverage_beta}.")
    need(r.coverage_strata is None or r.coverage_strata >= 1, f"--coverage_strata must be positive, got {r.coverage_strata}.")
    need(len(r.seeds) >= 1, "--seeds needs at least one retraining seed.")
    need(len(set(r.seeds)) == len(r.seeds), f"--seeds has duplicates: {r.seeds}.")
    need(r.budget in BUDGETS, f"--budget must be one of {', '.join(BUDGETS)}, got {r.budget!r}.")
    if r.select_on_val and "val_size" in data_args:
        need(
            data_args["val_size"] > 0,
            "--select_on_val needs validation data: set --val_size > 0 (or --select_on_val false).",
        )
    if r.select_on_val and r.val_size is not None:
        need(float(r.val_size) > 0, "--select_on_val needs validation data: set --val_size > 0 (or --select_on_val false).")
    devices = r.devices if isinstance(r.devices, list) else None
    need(
        (devices is None and r.devices == 1) or (devices is not None and len(devices) == 1),
        f"--devices: the pipeline trains one run per device; use 1 or a one-element list such as [1], got "
        f"{r.devices!r}.",
    )
    need(r.num_threads is None or r.num_threads >= 1, f"--num_threads must be positive, got {r.num_threads}.")
    return problems


def output_dir_problems(output_dir: str) -> list[str]:
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
    """The precision strings Lightning accepts (read from Lightning's own type hints)."""
    return tuple(sorted({str(v) for t in (_PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS) for v in get_args(t)}))


def _hardware_problems(r: PipelineConfig) -> list[str]:
    """``--accelerator`` must name an accelerator that is there, ``--precision`` one Lightning knows."""
    problems = []
    acc = str(r.accelerator).lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = mps is not None and mps.is_available()
    if acc not in _ACCELERATORS:
        problems.append(f"--accelerator must be one of {', '.join(_ACCELERATORS)}, got {r.accelerator!r}.")
    elif acc in ("gpu", "cuda") and not torch.cuda.is_available() and not (acc == "gpu" and mps_ok):
        problems.append(
            f"--accelerator {r.accelerator}: no GPU is visible to torch (torch.cuda.is_available() is False; "
            f"torch {torch.__version__}). Use --accelerator cpu (or auto), or install a CUDA build of torch "
            "and check CUDA_VISIBLE_DEVICES / nvidia-smi."
        )
    elif acc == "mps" and not mps_ok:
        problems.append("--accelerator mps: Apple's MPS is not available here. Use --accelerator cpu (or auto).")
    if r.precision is not None:
        allowed = _precision_values()
        if str(r.precision) not in allowed:
            problems.append(
                f"--precision {r.precision!r} is not a Lightning precision: use one of {', '.join(allowed)} (e.g. "
                "bf16-mixed on recent GPUs, 32-true on CPU), or leave it unset for Lightning's default."
            )
    return problems
