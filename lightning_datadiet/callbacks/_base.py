"""What the score callbacks share: scheduling by completed epochs, gathering by sample index, score files,
TensorBoard histograms and checkpoint state."""

from __future__ import annotations

import operator
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_datadiet.data.targets import _fast_targets
from lightning_datadiet.store import label_fingerprint, save_scores

__all__ = ["ScoreCallback"]


def _parse_epochs(epochs: int | Iterable[int] | None, *, allow_none: bool) -> list[int]:
    if epochs is None:
        if allow_none:
            return []
        raise ValueError("`epochs` is required: an int or a list of ints (completed training epochs; 0 = at init).")
    values = [epochs] if isinstance(epochs, int) else list(epochs)
    if not values and not allow_none:
        raise ValueError("`epochs` must name at least one epoch (0 = at initialisation).")
    for e in values:
        if isinstance(e, bool) or not isinstance(e, int) or e < 0:
            raise ValueError(f"`epochs` must hold non-negative ints (completed training epochs), got {e!r}.")
    return sorted(set(values))


def resolve_module(pl_module: nn.Module, path: str | None) -> nn.Module:
    """The submodule at dotted ``path`` of ``pl_module`` (``None`` = the LightningModule itself)."""
    if not path:
        return pl_module
    try:
        module = pl_module.get_submodule(path)
    except AttributeError as err:
        names = [n for n, _ in pl_module.named_children()]
        raise ValueError(
            f"logits_module={path!r} is not a submodule of {type(pl_module).__name__}; its children are {names}."
        ) from err
    return module


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*")


def check_method_name(method: Any) -> str:
    """``method`` names the score files (``<method>_epoch<E>_seed<S>.scores``), so it must be a plain name: letters,
    digits, ``_``, ``+``, ``-``. Path separators, ``..`` or dots could write outside ``dirpath``."""
    if not isinstance(method, str) or not _SAFE_NAME.fullmatch(method):
        raise ValueError(
            f"The score method name {method!r} cannot be used in a file name: it must start with a letter or digit "
            "and hold only letters, digits, '_', '+' and '-' (no path separators, dots or spaces), so that score "
            "files stay inside `dirpath`. Rename it, e.g. 'el2n_ema'."
        )
    return method


def _checked_seed(seed: Any) -> int | None:
    """The run seed goes into score file names: an int (or None), never a string that could hold a path."""
    if seed is None:
        return None
    try:
        if isinstance(seed, bool):
            raise TypeError
        return operator.index(seed)
    except TypeError:
        raise ValueError(f"`seed` must be an int or None, got {seed!r} ({type(seed).__name__}).") from None


def default_seed() -> int | None:
    value = os.environ.get("PL_GLOBAL_SEED")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def gather_by_index(trainer: pl.Trainer, values: Tensor, indices: Tensor, num_samples: int, fill: float) -> Tensor:
    """Assemble a dense ``[num_samples]`` tensor from per-rank ``(indices, values)``; positions are set by index,
    never by concatenation order (a ``DistributedSampler`` pads with repeats). Collective: call on every rank."""
    out = torch.full((num_samples,), fill, dtype=values.dtype)
    world = trainer.world_size
    if world == 1:
        out[indices.cpu()] = values.cpu()
        return out
    device = trainer.strategy.root_device
    count = torch.tensor([indices.numel()], device=device)
    max_count = int(trainer.strategy.all_gather(count).max())
    pad_idx = torch.full((max_count,), -1, dtype=torch.long, device=device)
    pad_val = torch.zeros((max_count,), dtype=values.dtype, device=device)
    pad_idx[: indices.numel()] = indices.to(device)
    pad_val[: values.numel()] = values.to(device)
    all_idx = trainer.strategy.all_gather(pad_idx).reshape(-1).cpu()
    all_val = trainer.strategy.all_gather(pad_val).reshape(-1).cpu()
    keep = all_idx >= 0
    out[all_idx[keep]] = all_val[keep]
    return out


def epoch_completed(trainer: pl.Trainer) -> bool:
    """Whether the current training epoch ran all its batches (``False`` when ``max_steps``, a time limit or
    ``should_stop`` ended it early; such an epoch is not labelled as completed)."""
    progress = trainer.fit_loop.epoch_loop.batch_progress
    return bool(progress.is_last_batch) or progress.current.ready >= trainer.num_training_batches


class ScoreCallback(Callback):
    """Base of the score callbacks. Subclasses set ``method`` and compute scores."""

    method: str = "score"

    def __init__(
        self,
        epochs: int | Sequence[int] | None,
        *,
        dirpath: str | os.PathLike | None = None,
        logits_module: str | None = None,
        input_key: int | str | None = None,
        target_key: int | str | None = None,
        seed: int | None = None,
        save: bool = True,
        log_histogram: bool = True,
        allow_no_epochs: bool = False,
    ) -> None:
        self.epochs = _parse_epochs(epochs, allow_none=allow_no_epochs)
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self._dirpath_given = dirpath is not None
        self.logits_module = logits_module
        self.input_key = input_key
        self.target_key = target_key
        self.seed = _checked_seed(seed)
        self._seed_given = self.seed is not None
        self.save = save
        self.log_histogram = log_histogram
        self.scores_by_epoch: dict[int, Tensor] = {}
        self.score_paths: dict[int, Path] = {}
        self.label_fingerprint: str | None = None
        self.num_samples: int | None = None
        self._restored = False
        check_method_name(self.method)

    # ------------------------------------------------------------------ public results
    @property
    def scores(self) -> Tensor | None:
        """Float32 ``Tensor[N]`` of the latest scoring (entry ``i`` is item ``i`` of the training dataset)."""
        if not self.scores_by_epoch:
            return None
        return self.scores_by_epoch[max(self.scores_by_epoch)]

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method, epochs=self.epochs)

    # ------------------------------------------------------------------ shared machinery
    def reset(self) -> None:
        """Forget the results of an earlier fit. Called at the start of every ``fit``: a callback object reused
        for a second fit (new model, new Trainer) starts fresh, and a resumed fit (``ckpt_path=``) gets its state
        back from the checkpoint afterwards (Lightning restores callback state after ``setup``). The default
        ``dirpath`` and ``seed`` are derived again for the new fit unless they were given explicitly."""
        self.scores_by_epoch = {}
        self.score_paths = {}
        self.label_fingerprint = None
        self.num_samples = None
        self._restored = False
        if not self._dirpath_given:
            self.dirpath = None
        if not self._seed_given:
            self.seed = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.reset()
        if self.dirpath is None:
            root = trainer.log_dir or trainer.default_root_dir  # collective under DDP: called on every rank
            self.dirpath = Path(root) / "datadiet"
        if self.seed is None:
            self.seed = default_seed()
        if trainer.max_epochs is not None and trainer.max_epochs >= 0:
            late = [e for e in self.epochs if e > trainer.max_epochs]
            if late:
                rank_zero_warn(
                    f"{type(self).__name__}: scoring epoch(s) {late} lie beyond Trainer(max_epochs={trainer.max_epochs}) "
                    "and will never be reached. Lower `epochs` or raise `max_epochs`."
                )
        resolve_module(pl_module, self.logits_module)  # fail at setup, not after hours of training

    def _train_dataset(self, trainer: pl.Trainer) -> Any:
        loader = trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if dataset is None:
            raise TypeError(
                f"{type(self).__name__} needs a single map-style training DataLoader; got {type(loader).__name__}."
            )
        return dataset

    def _check_restored_size(self, num_samples: int) -> None:
        """After a resume: refuse a training set whose length differs from the one the restored scores cover."""
        if self._restored and self.num_samples is not None and self.num_samples != num_samples:
            raise ValueError(
                f"{type(self).__name__}: the checkpoint's scores cover {self.num_samples} training examples but the "
                f"training set now has {num_samples}. Resume with the same dataset (scores are indexed by position), "
                "or start a new fit without `ckpt_path`."
            )
        self._restored = False

    def _labels_fingerprint(self, labels: Tensor) -> str:
        return label_fingerprint(labels)

    def _record(self, trainer: pl.Trainer, epoch: int, scores: Tensor, labels: Tensor | None) -> None:
        """Keep ``scores`` for ``epoch``, write the score file and the histogram (rank zero)."""
        scores = scores.detach().to(torch.float32).cpu()
        check_method_name(self.method)
        self.num_samples = scores.numel()
        if labels is not None:
            self.label_fingerprint = self._labels_fingerprint(labels)
        self.scores_by_epoch[epoch] = scores
        path = None
        if self.save:
            assert self.dirpath is not None
            name = f"{self.method}_epoch{epoch:03d}" + (f"_seed{self.seed}" if self.seed is not None else "")
            path = self.dirpath / f"{name}.scores"
            if trainer.is_global_zero:
                save_scores(
                    path,
                    scores,
                    method=self.method,
                    epoch=epoch,
                    seed=self.seed,
                    label_fingerprint=self.label_fingerprint,
                    extra=self._file_extra(trainer),
                )
            self.score_paths[epoch] = path
            trainer.strategy.barrier("datadiet-save")
        if self.log_histogram and trainer.is_global_zero:
            self._log_histogram(trainer, epoch, scores)
        rank_zero_info(
            f"{type(self).__name__}: scored {scores.numel()} examples after {epoch} epoch(s)"
            + (f" -> {path}" if path is not None else "")
        )

    def _file_extra(self, trainer: pl.Trainer) -> dict[str, Any]:
        return {"global_step": int(trainer.global_step), "world_size": int(trainer.world_size)}

    def _log_histogram(self, trainer: pl.Trainer, epoch: int, scores: Tensor) -> None:
        finite = scores[torch.isfinite(scores)]
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                writer = logger.experiment
                if finite.numel():
                    writer.add_histogram(f"datadiet/{self.method}", finite, global_step=epoch)
                infinite = int(scores.numel() - finite.numel())
                if infinite:
                    writer.add_scalar(f"datadiet/{self.method}_infinite_count", infinite, global_step=epoch)
                writer.flush()

    def _fill_unseen_labels(self, trainer: pl.Trainer, labels: Tensor) -> Tensor:
        if bool((labels < 0).any()):
            fast = _fast_targets(self._train_dataset(trainer))
            if fast is not None and fast.numel() == labels.numel():
                labels = torch.where(labels < 0, fast, labels)
        return labels

    # ------------------------------------------------------------------ checkpoint state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "epochs": list(self.epochs),
            "scores_by_epoch": {int(k): v for k, v in self.scores_by_epoch.items()},
            "score_paths": {int(k): str(v) for k, v in self.score_paths.items()},
            "label_fingerprint": self.label_fingerprint,
            "num_samples": self.num_samples,
            "seed": self.seed,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scores_by_epoch = {int(k): v for k, v in state_dict.get("scores_by_epoch", {}).items()}
        self.score_paths = {int(k): Path(v) for k, v in state_dict.get("score_paths", {}).items()}
        self.label_fingerprint = state_dict.get("label_fingerprint", self.label_fingerprint)
        self.num_samples = state_dict.get("num_samples", self.num_samples)
        self._restored = True
        if self.seed is None:
            self.seed = _checked_seed(state_dict.get("seed"))
