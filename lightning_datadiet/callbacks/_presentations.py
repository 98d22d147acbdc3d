"""What the callbacks that learn from the training forward passes share (forgetting, training dynamics, dynamic
pruning): which dataset items each training batch holds, the logits of its forward pass, the presentations of the
current epoch (checkpointed, so a mid-epoch resume is exact), completed-epoch bookkeeping and the DDP merge.

A *presentation* is one appearance of an example in a training batch. :class:`PresentationRecorder` computes per
presentation a few values from ``(logits, targets)`` on the device (``compute``), buffers them for the epoch and, when
the epoch's last batch has been trained, hands the owner all ranks' presentations in (position, rank) order. Only
completed epochs are handed over: a fit that stops inside an epoch (``max_steps``, ``should_stop``) leaves that
epoch's presentations out, with a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_datadiet.callbacks._base import ScoreCallback, epoch_completed, resolve_module
from lightning_datadiet.data.targets import batch_inputs_targets
from lightning_datadiet.data.tracking import SampleIndexTracker, install_tracking, uninstall_tracking
from lightning_datadiet.scores._checks import check_targets

__all__ = ["PresentationRecorder", "TrainingPassCallback", "epoch_completed", "adopt_state"]  # epoch_completed re-exported from _base

Compute = Callable[[Tensor, Tensor], dict[str, Tensor]]


def adopt_state(callback: pl.Callback, checkpoint: dict[str, Any]) -> None:
    """Let a resumed fit find its callback state when the state key changed (older keys held ``epochs`` and other
    arguments that may differ on resume): a single entry of the callback's class is moved under its current key."""
    states = checkpoint.get("callbacks")
    if not isinstance(states, dict) or callback.state_key in states:
        return
    name = type(callback).__qualname__
    candidates = [k for k in states if isinstance(k, str) and (k == name or k.startswith(name + "{"))]
    if len(candidates) == 1:
        states[callback.state_key] = states[candidates[0]]
    elif len(candidates) > 1:
        raise ValueError(
            f"The checkpoint holds {len(candidates)} states of {name} ({candidates}) and none matches this callback's "
            f"key {callback.state_key!r}. Resume with the same callbacks as the interrupted fit."
        )


def _merge_ranks(trainer: pl.Trainer, columns: dict[str, Tensor], length: int) -> dict[str, Tensor]:
    """Gather per-rank columns (each ``[length_r]``) from every rank, in (position, rank) order. Collective."""
    device = trainer.strategy.root_device
    longest = int(trainer.strategy.all_gather(torch.tensor([length], device=device)).max())
    out: dict[str, Tensor] = {}
    present = torch.zeros(longest, dtype=torch.bool, device=device)
    present[:length] = True
    gathered_present = trainer.strategy.all_gather(present).cpu().t().reshape(-1)
    for name, col in columns.items():
        dtype = col.dtype
        wire = col.to(torch.uint8) if dtype == torch.bool else col
        padded = torch.zeros((longest, *col.shape[1:]), dtype=wire.dtype, device=device)
        padded[:length] = wire.to(device)
        got = trainer.strategy.all_gather(padded).cpu()  # [W, L, ...]
        merged = got.transpose(0, 1).reshape(-1, *col.shape[1:])  # position-major, then rank
        out[name] = merged[gathered_present].to(dtype)
    return out


class PresentationRecorder:
    """Per-epoch buffer of the presentations of the training forward passes, with their dataset indices.

    Args:
        owner: the callback's name, used in messages.
        compute: ``(logits [B, K] float, targets [B] long) -> {name: Tensor[B]}``, evaluated on the device.
        logits_module, input_key, target_key: as for the score callbacks.
    """

    def __init__(
        self,
        owner: str,
        compute: Compute,
        *,
        logits_module: str | None = None,
        input_key: int | str | None = None,
        target_key: int | str | None = None,
    ) -> None:
        self.owner = owner
        self.compute = compute
        self.logits_module = logits_module
        self.input_key = input_key
        self.target_key = target_key
        self.tracker = SampleIndexTracker(owner)
        self._hook: Any = None
        self._trainer: pl.Trainer | None = None
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new fit that does not resume from a checkpoint)."""
        self.tracker._pending.clear()
        self.tracker.plan, self.tracker.resume, self.tracker.resume_mismatch = None, None, False
        self.tracker.resume_epoch = None
        self.completed_epochs = 0
        self.batches_done = 0  # batches of the current epoch trained on this rank
        self._chunks: list[tuple[Tensor, dict[str, Tensor]]] = []  # (indices on CPU, values on device) per batch
        self._indices: Tensor | None = None
        self._logits: Tensor | None = None
        self._capturing = False
        self.skipped_presentations = 0
        self._restored_chunk: tuple[Tensor, dict[str, Tensor]] | None = None

    # ------------------------------------------------------------------ fit lifecycle
    def setup(self, trainer: pl.Trainer) -> None:
        self._trainer = trainer
        install_tracking(trainer, self.tracker)

    def teardown(self, trainer: pl.Trainer) -> None:
        """At the end of the fit, or when it fails: the Trainer gets its own data source back, the hook goes."""
        uninstall_tracking(trainer, self.tracker)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self._trainer = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._hook is None:
            self._hook = resolve_module(pl_module, self.logits_module).register_forward_hook(self._capture)

    def _capture(self, module: Any, args: Any, output: Any) -> None:
        if not self._capturing or self._logits is not None or self._indices is None:
            return
        if isinstance(output, Tensor) and output.ndim == 2 and output.is_floating_point():
            if output.shape[0] == self._indices.numel():
                self._logits = output.detach()

    def on_train_batch_start(self) -> Tensor:
        """Pop the dataset indices of the batch about to be trained (returned, ``LongTensor[B]``)."""
        if self.tracker.resume_mismatch:
            self.tracker.resume_mismatch = False
            rank_zero_warn(
                f"{self.owner}: this fit resumed from a mid-epoch checkpoint, but the training sampler did not "
                "reproduce the interrupted epoch's order (e.g. shuffle=True draws a new permutation), so the rest of "
                "this epoch cannot be the presentations the interrupted run would have made: the epoch restarts from "
                "its first batch (as Lightning does) and its scores are not those of an uninterrupted fit. For exact "
                "resumes use a sampler whose order depends only on (seed, epoch), e.g. DistributedSampler or one "
                "with set_epoch(), or checkpoint at epoch ends."
            )
        self._indices = self.tracker.pop()
        self._logits = None
        self._capturing = True
        return self._indices

    def on_train_batch_end(self, outputs: Any, batch: Any) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Record the batch's presentations; returns ``(indices, targets, values)`` of this batch."""
        self._capturing = False
        indices, logits = self._indices, self._logits
        self._indices, self._logits = None, None
        assert indices is not None
        if logits is None and isinstance(outputs, dict) and isinstance(outputs.get("logits"), Tensor):
            logits = outputs["logits"].detach()
        if logits is None:
            raise RuntimeError(
                f"{self.owner} saw no [B, K] logits for this training batch. The logits are read with a forward "
                f"hook on {self.logits_module or 'the LightningModule'}: if training_step calls a submodule directly "
                "(e.g. self.net(x)), pass logits_module='net'; or return {'loss': loss, 'logits': logits}."
            )
        _, targets = batch_inputs_targets(batch, input_key=self.input_key, target_key=self.target_key)
        targets = targets.to(logits.device)
        check_targets(targets, indices.numel(), logits.shape[1], what=self.owner)
        if logits.shape[0] != indices.numel():
            raise RuntimeError(
                f"{self.owner}: the batch holds {indices.numel()} dataset items but the logits have "
                f"{logits.shape[0]} rows."
            )
        values = self.compute(logits, targets)
        values["valid"] = torch.isfinite(logits).all(dim=1)  # NaN/inf rows (a skipped AMP step) are not presentations
        values["label"] = targets.to(torch.int32)
        self._chunks.append((indices, values))
        self.batches_done += 1
        return indices, targets, values

    # ------------------------------------------------------------------ epoch end
    def pending(self, trainer: pl.Trainer) -> bool:
        """Whether any rank holds presentations of an unfinished epoch. Collective under DDP."""
        local = sum(idx.numel() for idx, _ in self._chunks)
        if trainer.world_size == 1:
            return local > 0
        count = torch.tensor([local], device=trainer.strategy.root_device)
        return bool(trainer.strategy.all_gather(count).sum() > 0)

    def _local_columns(self) -> tuple[dict[str, Tensor], int]:
        chunks = self._chunks
        if not chunks:
            return {}, 0
        columns = {"index": torch.cat([idx for idx, _ in chunks]).long()}
        device = chunks[-1][1]["valid"].device  # a restored chunk sits on the CPU
        for name in chunks[0][1]:
            columns[name] = torch.cat([vals[name].to(device) for _, vals in chunks])
        return columns, columns["index"].numel()

    def finish_epoch(self, trainer: pl.Trainer) -> dict[str, Tensor] | None:
        """At the end of a completed epoch: all ranks' presentations of the epoch in (position, rank) order, on the
        CPU (``index``, ``label`` and the computed values; presentations with NaN/inf logits removed, with a
        warning). Collective under DDP: call on every rank at the same point."""
        columns, length = self._local_columns()
        self._chunks = []
        self.batches_done = 0
        self.completed_epochs += 1
        if trainer.world_size > 1:
            if not columns:  # this rank saw no batch: take part in the gather with empty columns of the right types
                columns = self._empty_columns(trainer)
            merged = _merge_ranks(trainer, columns, length)
        else:
            if not columns:
                return None
            merged = {k: v.cpu() for k, v in columns.items()}
        valid = merged.pop("valid").bool()
        skipped = int((~valid).sum())
        if skipped:
            self.skipped_presentations += skipped
            rank_zero_warn(
                f"{self.owner}: {skipped} presentation(s) this epoch had NaN/inf logits (a diverging model, or fp16 "
                "overflow in a step that mixed precision skips); they are not counted. If training diverged, lower "
                "the learning rate or clip gradients: the scores are unreliable."
            )
        return {k: v[valid] for k, v in merged.items()}

    def _empty_columns(self, trainer: pl.Trainer) -> dict[str, Tensor]:
        device = trainer.strategy.root_device
        probe = self.compute(torch.zeros(1, 2, device=device), torch.zeros(1, dtype=torch.long, device=device))
        cols = {"index": torch.empty(0, dtype=torch.long)}
        cols.update({k: v[:0] for k, v in probe.items()})
        cols["valid"] = torch.empty(0, dtype=torch.bool)
        cols["label"] = torch.empty(0, dtype=torch.int32)
        return cols

    def discard_unfinished(self, trainer: pl.Trainer, what: str) -> None:
        """At the end of a fit that stopped inside an epoch: drop that epoch's presentations and say so."""
        batches = self.batches_done
        self._chunks = []
        self.batches_done = 0
        if batches:
            rank_zero_warn(
                f"{self.owner}: the fit stopped inside epoch {self.completed_epochs + 1} after {batches} of its "
                f"batches (max_steps={trainer.max_steps} or should_stop?), so that epoch was not completed: {what} "
                f"cover the {self.completed_epochs} completed epoch(s) and are labelled epoch "
                f"{self.completed_epochs}; the unfinished epoch's presentations are not counted."
            )

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        """Completed epochs and this epoch's presentations so far (every rank's, gathered under DDP: Lightning calls
        ``state_dict`` on every rank when it saves a checkpoint)."""
        state: dict[str, Any] = {"completed_epochs": self.completed_epochs, "batches_done": self.batches_done}
        trainer = self._trainer
        columns, length = self._local_columns()
        world = trainer.world_size if trainer is not None else 1
        if world > 1:
            assert trainer is not None
            device = trainer.strategy.root_device
            longest = int(trainer.strategy.all_gather(torch.tensor([length], device=device)).max())
            if longest == 0:
                return state
            if not columns:
                columns = self._empty_columns(trainer)
            rows: dict[str, Tensor] = {}
            for name, col in columns.items():
                wire = col.to(torch.uint8) if col.dtype == torch.bool else col
                padded = torch.zeros((longest, *col.shape[1:]), dtype=wire.dtype, device=device)
                padded[:length] = wire.to(device)
                rows[name] = trainer.strategy.all_gather(padded).cpu()  # [W, L]
            lengths = trainer.strategy.all_gather(torch.tensor([length], device=device)).cpu().reshape(-1)
            state["epoch_buffer"] = {"world_size": world, "lengths": lengths, "columns": rows,
                                     "dtypes": {k: str(v.dtype) for k, v in columns.items()}}
        elif columns:
            state["epoch_buffer"] = {
                "world_size": 1,
                "lengths": torch.tensor([length]),
                "columns": {k: (v.to(torch.uint8) if v.dtype == torch.bool else v).cpu()[None] for k, v in columns.items()},
                "dtypes": {k: str(v.dtype) for k, v in columns.items()},
            }
        return state

    def load_state_dict(self, state: dict[str, Any], trainer: pl.Trainer | None) -> None:
        self.completed_epochs = int(state.get("completed_epochs", 0))
        self.batches_done = int(state.get("batches_done", 0))
        self._chunks = []
        self.tracker.resume_epoch = self.completed_epochs
        buffer = state.get("epoch_buffer")
        if buffer is None or self.batches_done == 0:
            return
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        if int(buffer["world_size"]) != world:
            raise ValueError(
                f"{self.owner}: the checkpoint was saved inside an epoch by {int(buffer['world_size'])} process(es) "
                f"and this fit runs {world}; the interrupted epoch's presentations belong to the old processes' "
                "shards. Resume with the same number of devices, or from a checkpoint saved at an epoch end."
            )
        length = int(buffer["lengths"][rank])
        dtypes = {k: getattr(torch, str(v).removeprefix("torch.")) for k, v in buffer["dtypes"].items()}
        values = {k: v[rank, :length].to(dtypes[k]) for k, v in buffer["columns"].items()}
        indices = values.pop("index").long()
        self._chunks = [(indices, values)]
        self.tracker.resume = (self.batches_done, indices.clone())


class TrainingPassCallback(ScoreCallback):
    """Base of the score callbacks computed from the training forward passes (forgetting, training dynamics).

    It owns a :class:`PresentationRecorder` and the hook glue: a new fit starts fresh (a resumed one gets its state
    back from the checkpoint), each completed epoch's presentations of all ranks are handed to :meth:`_apply` in
    order, snapshots are recorded after the completed epochs in ``epochs`` and the final scores at the end of the
    fit (labelled with the completed epochs). Subclasses implement ``_init_state``, ``_reset_state``, ``_apply``,
    ``_record_now`` and optionally ``_extra_state`` / ``_load_extra_state``.
    """

    def __init__(self, epochs: Any, *, compute: Compute, **kwargs: Any) -> None:
        super().__init__(epochs, allow_no_epochs=True, **kwargs)
        if 0 in self.epochs:
            raise ValueError(f"{type(self).__name__}: epoch 0 has no presentations to count; use epochs >= 1.")
        self._dirpath_arg, self._seed_arg = self.dirpath, self.seed
        self.labels: Tensor | None = None  # int32 [N], -1 = never presented
        self._recorder = PresentationRecorder(
            type(self).__name__,
            compute,
            logits_module=self.logits_module,
            input_key=self.input_key,
            target_key=self.target_key,
        )
        self._finished_epoch: int | None = None
        self._legacy_restore = False

    # subclass interface ------------------------------------------------------------------------------------
    def _init_state(self, num_samples: int) -> None:
        raise NotImplementedError

    def _state_size(self) -> int | None:
        raise NotImplementedError

    def _reset_state(self) -> None:
        raise NotImplementedError

    def _apply(self, merged: dict[str, Tensor]) -> None:
        raise NotImplementedError

    def _record_now(self, trainer: pl.Trainer, epoch: int) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------------
    @property
    def skipped_presentations(self) -> int:
        """Presentations with NaN/inf logits, not counted (this fit)."""
        return self._recorder.skipped_presentations

    @property
    def completed_epochs(self) -> int:
        """Training epochs completed so far and counted (an epoch cut short by ``max_steps`` is not completed)."""
        return self._recorder.completed_epochs

    @property
    @override
    def state_key(self) -> str:
        # Neither `epochs` (snapshots only) nor other arguments: a resumed fit finds its state whatever they are.
        return self._generate_state_key(method=self.method)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # a new fit starts fresh; a resumed one gets its state back in load_state_dict (after setup)
            self._fresh_fit()
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._recorder.setup(trainer)

    def _fresh_fit(self) -> None:
        self._reset_state()
        self.labels = None
        self.scores_by_epoch, self.score_paths = {}, {}
        self.label_fingerprint, self.num_samples, self._restored = None, None, False
        self.dirpath, self.seed = self._dirpath_arg, self._seed_arg
        self._recorder.reset()
        self._finished_epoch, self._legacy_restore = None, False

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._recorder.teardown(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._recorder.teardown(trainer)  # Lightning calls no teardown hook after a failed fit

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        adopt_state(self, checkpoint)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        num_samples = len(self._train_dataset(trainer))
        size = self._state_size()
        if size is None:
            self._init_state(num_samples)
        elif size != num_samples:
            raise ValueError(
                f"{type(self).__name__}: the restored state covers {size} examples but the training set has "
                f"{num_samples}. Resume with the same dataset."
            )
        if self.labels is None:
            self.labels = torch.full((num_samples,), -1, dtype=torch.int32)
        if self._legacy_restore:  # a checkpoint of an older version: it was saved at an epoch end
            self._recorder.completed_epochs = trainer.current_epoch
            self._legacy_restore = False
        self.num_samples = num_samples
        self._recorder.on_train_start(trainer, pl_module)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._recorder.on_train_batch_start()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._recorder.on_train_batch_end(outputs, batch)
        if epoch_completed(trainer):
            self._finish_epoch(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if epoch_completed(trainer):  # e.g. an epoch whose batches all came before a resume
            self._finish_epoch(trainer)

    def _finish_epoch(self, trainer: pl.Trainer) -> None:
        """Apply the completed epoch's presentations of every rank, in (position, rank) order. Collective."""
        if self._finished_epoch == trainer.current_epoch:
            return
        self._finished_epoch = trainer.current_epoch
        assert self.labels is not None
        merged = self._recorder.finish_epoch(trainer)
        if merged is not None and merged["index"].numel():
            self.labels[merged["index"]] = merged["label"]
            self._apply(merged)
        completed = self._recorder.completed_epochs
        if completed in self.epochs and completed not in self.scores_by_epoch:
            self._record_now(trainer, completed)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._state_size() is None:
            return
        self._recorder.discard_unfinished(trainer, "the scores")
        completed = self._recorder.completed_epochs
        if completed not in self.scores_by_epoch:
            self._record_now(trainer, completed)
        missed = [e for e in self.epochs if e not in self.scores_by_epoch]
        if missed:
            rank_zero_warn(
                f"{type(self).__name__}: the fit completed {completed} epoch(s), so snapshot epoch(s) {missed} were "
                "never reached. Train longer or lower `epochs`."
            )

    def _labels_for_record(self, trainer: pl.Trainer) -> tuple[Tensor, int]:
        """Dense int64 labels (unseen ones filled from the dataset when it can tell) and the number never presented."""
        assert self.labels is not None
        labels = self.labels.long()
        unseen = int((labels < 0).sum())
        return self._fill_unseen_labels(trainer, labels), unseen

    def _file_extra(self, trainer: pl.Trainer) -> dict[str, Any]:
        extra = super()._file_extra(trainer)
        extra["completed_epochs"] = self._recorder.completed_epochs
        return extra

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        pass

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.labels is not None:
            state["labels"] = self.labels.cpu()
        state.update(self._extra_state())
        state["presentations"] = self._recorder.state_dict()  # collective under DDP (Lightning calls it on all ranks)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "labels" in state_dict:
            self.labels = state_dict["labels"].to(torch.int32).clone()
        self._load_extra_state(state_dict)
        if "presentations" in state_dict:
            self._recorder.load_state_dict(state_dict["presentations"], self._recorder._trainer)
        else:
            self._legacy_restore = True
