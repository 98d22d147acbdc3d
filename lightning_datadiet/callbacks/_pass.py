"""Callbacks that score the whole training set in a separate pass (EL2N, GraNd)."""

from __future__ import annotations

import os
import random as _pyrandom
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from typing_extensions import override

from lightning_datadiet._utils import eval_mode
from lightning_datadiet.callbacks._base import ScoreCallback, epoch_completed, gather_by_index, resolve_module
from lightning_datadiet.data.loaders import loader_batch_size
from lightning_datadiet.data.targets import batch_inputs_targets
from lightning_datadiet.scores._checks import check_targets

__all__ = ["PassScoreCallback", "random_transforms"]

_RANDOM_NAMES = ("ColorJitter", "AutoAugment", "RandAugment", "TrivialAugmentWide", "AugMix", "ElasticTransform")


def random_transforms(dataset: Any, _depth: int = 0) -> list[str]:
    """Names of random (augmenting) torchvision-style transforms found on ``dataset`` (and wrapped datasets)."""
    found: list[str] = []
    if _depth > 5 or dataset is None:
        return found
    for attr in ("transform", "transforms", "target_transform"):
        t = getattr(dataset, attr, None)
        stack = [t]
        while stack:
            item = stack.pop()
            if item is None:
                continue
            name = type(item).__name__
            if name.startswith("Random") or name in _RANDOM_NAMES:
                found.append(name)
            inner = getattr(item, "transforms", None)
            if isinstance(inner, (list, tuple)):
                stack.extend(inner)
            elif isinstance(item, nn.Sequential):
                stack.extend(item.children())
    for attr in ("dataset", "datasets"):
        inner = getattr(dataset, attr, None)
        if isinstance(inner, (list, tuple)):
            for d in inner:
                found += random_transforms(d, _depth + 1)
        elif inner is not None and inner is not dataset:
            found += random_transforms(inner, _depth + 1)
    return found


def _same_item(a: Any, b: Any) -> bool:
    """Whether two reads of one dataset item are equal (tensors, arrays, PIL images, numbers, nested containers)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))
    if isinstance(a, np.ndarray):
        return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_item(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_item(x, y) for x, y in zip(a, b))
    if hasattr(a, "tobytes") and hasattr(a, "size") and hasattr(a, "mode"):  # PIL image
        return a.size == b.size and a.mode == b.mode and a.tobytes() == b.tobytes()
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an object without a usable ==: cannot tell, assume equal
        return True


def reads_differ(dataset: Any, num_items: int = 4) -> list[int]:
    """Indices among a few items of ``dataset`` (spread over it) whose two consecutive reads differ: the mark of
    random augmentation, whatever its class names or the item's layout. All random number generators (torch,
    NumPy's global one, Python's ``random``) are restored afterwards, so training draws the same numbers."""
    n = len(dataset)
    if n == 0:
        return []
    picks = sorted({int(i) for i in torch.linspace(0, n - 1, min(num_items, n)).round().long().tolist()})
    py_state, np_state = _pyrandom.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            return [i for i in picks if not _same_item(dataset[i], dataset[i])]
    finally:
        _pyrandom.setstate(py_state)
        np.random.set_state(np_state)


def _batch_size(inputs: Any, targets: Tensor) -> int:
    """Rows of the batch: the first input tensor's leading size (the targets' own length if none is found)."""
    for leaf in tree_leaves(inputs):
        if isinstance(leaf, Tensor) and leaf.ndim >= 1:
            return int(leaf.shape[0])
    return int(targets.shape[0]) if targets.ndim else 1


def _rng_states(cuda_devices: list[int]) -> list[Tensor]:
    states = [torch.random.get_rng_state()]
    states += [torch.cuda.get_rng_state(d) for d in cuda_devices]
    return states


def _same_states(a: list[Tensor], b: list[Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def sync_buffers_from_rank_zero(trainer: pl.Trainer, module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics drift apart between DDP ranks after each
    rank's last forward pass; DDP itself re-broadcasts them from rank 0 at the next forward). Scores then use the
    statistics that a checkpoint saves, and all ranks score with the same model. Collective: call on every rank."""
    mine = {name: buffer.detach().cpu() for name, buffer in module.named_buffers()}
    rank_zero = trainer.strategy.broadcast(mine, src=0)
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            buffer.copy_(rank_zero[name])


class PassScoreCallback(ScoreCallback):
    """Scores every training example after the given numbers of completed epochs, in eval mode, in index order.

    Subclasses implement :meth:`score_batch`.
    """

    def __init__(
        self,
        epochs: int | Sequence[int],
        *,
        dirpath: str | os.PathLike | None = None,
        dataset: Dataset | None = None,
        batch_size: int | None = None,
        num_workers: int | None = None,
        logits_module: str | None = None,
        input_key: int | str | None = None,
        target_key: int | str | None = None,
        seed: int | None = None,
        save: bool = True,
        log_histogram: bool = True,
    ) -> None:
        super().__init__(
            epochs,
            dirpath=dirpath,
            logits_module=logits_module,
            input_key=input_key,
            target_key=target_key,
            seed=seed,
            save=save,
            log_histogram=log_histogram,
        )
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}.")
        if num_workers is not None and (not isinstance(num_workers, int) or num_workers < 0):
            raise ValueError(f"num_workers must be a non-negative int or None, got {num_workers!r}.")
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._warned_augmentation = False
        self._warned_randomness = False
        self._partial_epoch: int | None = None

    def score_batch(self, module: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    # ------------------------------------------------------------------ scheduling
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_restored_size(len(self._map_style(self._train_dataset(trainer), "training")))
        if 0 in self.epochs and 0 not in self.scores_by_epoch and trainer.current_epoch == 0:
            self.score_now(trainer, pl_module, epoch=0)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Score at the last batch, before a validation-triggered checkpoint can be written for this epoch.
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._end_of_epoch(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if epoch_completed(trainer):
            self._end_of_epoch(trainer, pl_module)
        elif trainer.current_epoch + 1 in self.epochs and trainer.current_epoch + 1 not in self.scores_by_epoch:
            self._partial_epoch = trainer.current_epoch + 1

    def _end_of_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not epoch_completed(trainer):  # max_steps/should_stop ended the epoch early: it is not `completed`
            return
        completed = trainer.current_epoch + 1
        if completed in self.epochs and completed not in self.scores_by_epoch:
            self.score_now(trainer, pl_module, epoch=completed)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        missed = [e for e in self.epochs if e not in self.scores_by_epoch]
        if missed:
            partial = getattr(self, "_partial_epoch", None)
            why = ""
            if partial is not None:
                why = (
                    f" Epoch {partial} was cut short (max_steps={trainer.max_steps}, a time limit or a stop request "
                    f"ended it after {trainer.fit_loop.epoch_loop.batch_progress.current.ready} of "
                    f"{trainer.num_training_batches} batches), so it is not scored as completed."
                )
            rank_zero_warn(
                f"{type(self).__name__}: the fit ended after {trainer.current_epoch} completed epoch(s), so scoring "
                f"epoch(s) {missed} never ran.{why} Train longer (raise max_epochs / max_steps) or lower `epochs`."
            )
        self._partial_epoch = None

    # ------------------------------------------------------------------ the pass
    def scoring_dataset(self, trainer: pl.Trainer) -> Dataset:
        """The dataset scored: ``dataset=`` if given, else the DataModule's ``score_dataset()``, else the training
        DataLoader's dataset (with a warning when it applies random augmentation)."""
        train_dataset = self._train_dataset(trainer)
        dataset = self.dataset
        if dataset is None:
            dm = trainer.datamodule
            hook = getattr(dm, "score_dataset", None) if dm is not None else None
            if callable(hook):
                dataset = hook()
        source = "the training dataset"
        if dataset is None:
            dataset = train_dataset
        elif self.dataset is not None:
            source = "the `dataset=` given"
        else:
            source = "the DataModule's score_dataset()"
        self._map_style(dataset, "scoring")
        if not self._warned_augmentation:
            differ = reads_differ(dataset)
            if differ:
                self._warned_augmentation = True
                found = sorted(set(random_transforms(dataset)))
                named = f" (random transforms found: {', '.join(found)})" if found else ""
                rank_zero_warn(
                    f"{type(self).__name__}: {source} returns different inputs when the same item is read twice "
                    f"(items {differ}){named}: it applies random augmentation, so the scores would be computed on "
                    "augmented inputs, unlike the paper, and two scorings of the same weights would differ. Pass the "
                    "un-augmented training set as `dataset=` or define `score_dataset()` on your DataModule to return "
                    "it (same items, same order, deterministic transforms)."
                )
        if len(dataset) != len(train_dataset):  # type: ignore[arg-type]
            raise ValueError(
                f"{type(self).__name__}: the scoring dataset has {len(dataset)} items but the training dataset has "  # type: ignore[arg-type]
                f"{len(train_dataset)}. It must be the same items in the same order (only transforms may differ)."  # type: ignore[arg-type]
            )
        return dataset

    def _map_style(self, dataset: Any, what: str) -> Any:
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(
                f"{type(self).__name__} needs a map-style {what} dataset (with __len__ and __getitem__) so that score "
                f"i belongs to item i; got {type(dataset).__name__}, an iterable-style dataset. Fix: train from a "
                "map-style dataset (e.g. a torch.utils.data.Dataset or TensorDataset), or pass the map-style "
                "training set, in its index order, as `dataset=`."
            )
        return dataset

    def _progress(self, trainer: pl.Trainer, total: int, epoch: int) -> Any:
        """A progress bar for the pass (rank zero, when the Trainer shows a tqdm progress bar), else ``None``."""
        bar = trainer.progress_bar_callback
        if not trainer.is_global_zero or not isinstance(bar, TQDMProgressBar) or not bar.is_enabled:
            return None
        return Tqdm(
            total=total,
            desc=f"{type(self).__name__} (epoch {epoch})",
            leave=False,
            dynamic_ncols=True,
            position=2 * bar.process_position + 1,
            unit="batch",
            bar_format=bar.BAR_FORMAT,
        )

    def score_now(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *, epoch: int) -> Tensor:
        """Score the whole training set with the current weights and record it as ``epoch``. Collective."""
        dataset = self.scoring_dataset(trainer)
        num_samples = len(dataset)  # type: ignore[arg-type]
        train_loader = trainer.train_dataloader
        batch_size = self.batch_size or loader_batch_size(train_loader) or 256
        num_workers = self.num_workers if self.num_workers is not None else getattr(train_loader, "num_workers", 0)
        collate_fn = getattr(train_loader, "collate_fn", None)
        world, rank = trainer.world_size, trainer.global_rank
        shard = torch.arange(rank, num_samples, world)  # strided shard of this rank, no padding
        subset = dataset if world == 1 else Subset(dataset, shard.tolist())
        loader = DataLoader(
            subset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate_fn
        )
        module = resolve_module(pl_module, self.logits_module)
        device = pl_module.device
        if world > 1:
            sync_buffers_from_rank_zero(trainer, pl_module)
        values = torch.empty(shard.numel(), dtype=torch.float32, device=device)
        labels = torch.empty(shard.numel(), dtype=torch.long, device=device)
        pos = 0
        where = f"{type(self).__name__} (pass `target_key=`/`input_key=` if the batch holds them elsewhere)"
        # The pass draws from no generator that training uses: building the DataLoader iterator consumes the global
        # RNG, so it is forked (restored afterwards) and a fit with scoring callbacks trains exactly like one without.
        rng_devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        progress = self._progress(trainer, len(loader), epoch)
        with eval_mode(pl_module), torch.random.fork_rng(devices=rng_devices):
            for batch_idx, batch in enumerate(loader):
                batch = trainer.strategy.batch_to_device(batch, device)
                inputs, targets = batch_inputs_targets(batch, input_key=self.input_key, target_key=self.target_key)
                targets = targets.to(device)
                check_targets(targets, _batch_size(inputs, targets), None, what=where)
                if batch_idx == 0:
                    before = _rng_states(rng_devices)
                out = self.score_batch(module, inputs, targets)
                if batch_idx == 0 and not self._warned_randomness and not _same_states(_rng_states(rng_devices), before):
                    self._warned_randomness = True
                    rank_zero_warn(
                        f"{type(self).__name__}: the model drew random numbers in eval mode while scoring (the global "
                        "RNG advanced during its forward pass), so the scores are random too: two scorings of the same "
                        "weights differ. Make the randomness depend on `self.training` (as nn.Dropout does), or score "
                        "a submodule without it via `logits_module=`."
                    )
                n = out.numel()
                if n != targets.shape[0]:
                    raise RuntimeError(f"score_batch returned {n} scores for a batch of {targets.shape[0]} (batch {batch_idx}).")
                values[pos : pos + n] = out.to(torch.float32)
                labels[pos : pos + n] = targets.long()
                pos += n
                if progress is not None:
                    progress.update(1)
        if progress is not None:
            progress.close()  # before the "scored ..." line, so it does not land inside the bar
        if pos != shard.numel():
            raise RuntimeError(f"The scoring pass saw {pos} examples but expected {shard.numel()}.")
        scores = gather_by_index(trainer, values, shard, num_samples, float("nan"))
        all_labels = gather_by_index(trainer, labels, shard, num_samples, -1)
        self._record(trainer, epoch, scores, all_labels)
        return scores
