"""ForgettingCallback: forgetting events counted from the training forward passes, per example."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_datadiet.callbacks._base import ScoreCallback, resolve_module
from lightning_datadiet.data.targets import batch_inputs_targets
from lightning_datadiet.data.tracking import SampleIndexTracker, install_tracking, uninstall_tracking
from lightning_datadiet.scores._checks import check_targets
from lightning_datadiet.scores.forgetting import ForgettingState, forgetting_scores, forgetting_update

__all__ = ["ForgettingCallback"]


class ForgettingCallback(ScoreCallback):
    """Count forgetting events (Toneva et al. 2019) per training example over the whole fit.

    A forgetting event is a presentation of an example in a training mini-batch whose prediction (argmax of the
    logits of the training forward pass: train mode, augmented inputs, the pass the optimizer step uses) is wrong
    while the previous presentation of the same example was right. Learning an example is not an event. Examples
    never classified correctly get ``never_learned`` (default ``+inf``, the official semantics: kept first).

    Nothing in the LightningModule changes: the logits are captured with a forward hook on ``logits_module``
    (default: the LightningModule, i.e. ``self(x)`` inside ``training_step``; name a submodule such as ``"net"``
    if ``training_step`` calls it directly), and each batch's dataset indices are tracked on the training
    DataLoader's batch sampler (exact under shuffling, workers, persistent workers and DDP). Under DDP the
    presentations of all ranks are gathered by sample index at the end of each epoch, so every rank holds the same
    counts. Requires a map-style dataset and a DataLoader with ``batch_size`` (torch's ``BatchSampler``).
    Presentations whose logits hold NaN/inf are skipped (neither correct nor incorrect), with a warning per epoch.

    Args:
        epochs: completed epochs after which to also write a snapshot (the final counts are always written at the end
            of the fit).
        never_learned: score of never-learned examples (``float("inf")``; other libraries used 0 or 1000).
        dirpath, logits_module, input_key, target_key, seed, save, log_histogram: as for :class:`EL2NCallback`.

    Example::

        cb = ForgettingCallback()
        Trainer(max_epochs=30, callbacks=[cb]).fit(model, datamodule=dm)
        cb.scores  # float32 [N]
    """

    method = "forgetting"

    def __init__(
        self,
        *,
        epochs: int | Sequence[int] | None = None,
        never_learned: float = float("inf"),
        dirpath: str | os.PathLike | None = None,
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
            allow_no_epochs=True,
        )
        if 0 in self.epochs:
            raise ValueError("ForgettingCallback: epoch 0 has no presentations to count; use epochs >= 1.")
        never_learned = float(never_learned)
        if never_learned != never_learned:
            raise ValueError("never_learned must not be NaN (use inf, the official semantics, or a number).")
        self.never_learned = never_learned
        self.state: ForgettingState | None = None
        self.labels: Tensor | None = None  # int32 [N], -1 = never presented
        self._tracker = SampleIndexTracker()
        self._hook: Any = None
        self._indices: Tensor | None = None
        self._logits: Tensor | None = None
        self._capturing = False
        # presentations of the current epoch on this rank, in order (dense, reused)
        self._buf_idx = torch.empty(0, dtype=torch.int64)
        self._buf_correct: Tensor | None = None
        self._buf_valid = torch.empty(0, dtype=torch.bool)
        self._buf_len = 0
        self.skipped_presentations = 0  # presentations with NaN/inf logits, not counted (this process)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method, epochs=self.epochs)

    # ------------------------------------------------------------------ setup
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            install_tracking(trainer, self._tracker)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            uninstall_tracking(trainer)
            if self._hook is not None:
                self._hook.remove()
                self._hook = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        num_samples = len(self._train_dataset(trainer))
        if self.state is None:
            self.state = ForgettingState(num_samples)
        elif self.state.num_samples != num_samples:
            raise ValueError(
                f"ForgettingCallback: the restored state covers {self.state.num_samples} examples but the training set "
                f"has {num_samples}. Resume with the same dataset."
            )
        if self.labels is None:
            self.labels = torch.full((num_samples,), -1, dtype=torch.int32)
        self.labels = self.labels.to(pl_module.device)
        self.num_samples = num_samples
        module = resolve_module(pl_module, self.logits_module)
        if self._hook is None:
            self._hook = module.register_forward_hook(self._capture)

    def _capture(self, module: Any, args: Any, output: Any) -> None:
        if not self._capturing or self._logits is not None or self._indices is None:
            return
        if isinstance(output, Tensor) and output.ndim == 2 and output.is_floating_point():
            if output.shape[0] == self._indices.numel():
                self._logits = output.detach()

    # ------------------------------------------------------------------ per batch
    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._indices = self._tracker.pop()
        self._logits = None
        self._capturing = True

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._capturing = False
        indices, logits = self._indices, self._logits
        self._indices, self._logits = None, None
        assert indices is not None and self.labels is not None
        if logits is None and isinstance(outputs, dict) and isinstance(outputs.get("logits"), Tensor):
            logits = outputs["logits"].detach()
        if logits is None:
            raise RuntimeError(
                "ForgettingCallback saw no [B, K] logits for this training batch. The logits are read with a forward "
                f"hook on {self.logits_module or 'the LightningModule'}: if training_step calls a submodule directly "
                "(e.g. self.net(x)), pass logits_module='net'; or return {'loss': loss, 'logits': logits}."
            )
        _, targets = batch_inputs_targets(batch, input_key=self.input_key, target_key=self.target_key)
        targets = targets.to(logits.device)
        check_targets(targets, indices.numel(), logits.shape[1], what="ForgettingCallback")
        if logits.shape[0] != indices.numel():
            raise RuntimeError(
                f"ForgettingCallback: the batch holds {indices.numel()} dataset items but the logits have "
                f"{logits.shape[0]} rows."
            )
        correct = logits.argmax(dim=1) == targets  # [B] bool, stays on device: no sync per batch
        valid = torch.isfinite(logits).all(dim=1)  # NaN/inf rows (e.g. a skipped AMP step) are not presentations
        self._append(indices, correct, valid)
        self.labels[indices.to(self.labels.device, non_blocking=True)] = targets.to(torch.int32)
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._flush(trainer)

    def _append(self, indices: Tensor, correct: Tensor, valid: Tensor) -> None:
        n = indices.numel()
        need = self._buf_len + n
        if self._buf_correct is None or self._buf_correct.device != correct.device:
            self._buf_correct = torch.empty(0, dtype=torch.bool, device=correct.device)
            self._buf_valid = torch.empty(0, dtype=torch.bool, device=correct.device)
        if need > self._buf_idx.numel() or need > self._buf_correct.numel():
            capacity = max(need, 2 * self._buf_idx.numel(), 1024)
            # int32 indices (4 bytes per presentation) unless the dataset is too large for them
            idx_dtype = torch.int32 if (self.num_samples or 0) < 2**31 else torch.int64
            grown_idx = torch.empty(capacity, dtype=idx_dtype)
            grown_idx[: self._buf_len] = self._buf_idx[: self._buf_len]
            grown_c = torch.empty(capacity, dtype=torch.bool, device=correct.device)
            grown_c[: self._buf_len] = self._buf_correct[: self._buf_len]
            grown_v = torch.empty(capacity, dtype=torch.bool, device=correct.device)
            grown_v[: self._buf_len] = self._buf_valid[: self._buf_len]
            self._buf_idx, self._buf_correct, self._buf_valid = grown_idx, grown_c, grown_v
        self._buf_idx[self._buf_len : need] = indices
        self._buf_correct[self._buf_len : need] = correct
        self._buf_valid[self._buf_len : need] = valid
        self._buf_len = need

    def _flush(self, trainer: pl.Trainer) -> None:
        """Apply this epoch's presentations of every rank, in (position, rank) order. Collective."""
        assert self.state is not None
        idx = self._buf_idx[: self._buf_len].long()
        empty = torch.empty(0, dtype=torch.bool)
        correct = self._buf_correct[: self._buf_len].cpu() if self._buf_correct is not None else empty
        valid = self._buf_valid[: self._buf_len].cpu() if self._buf_correct is not None else empty
        self._buf_len = 0
        skipped = int((~valid).sum())
        if skipped:
            self.skipped_presentations += skipped
            rank_zero_warn(
                f"ForgettingCallback: {skipped} presentation(s) this epoch had NaN/inf logits (a diverging model, or "
                "fp16 overflow in a step that mixed precision skips); they are not counted as correct or incorrect. "
                "If training diverged, lower the learning rate or clip gradients: the forgetting counts are unreliable."
            )
        if trainer.world_size > 1:
            device = trainer.strategy.root_device
            code = torch.where(valid, idx * 2 + correct.long(), -1).to(device)  # index and correctness in one gather
            count = torch.tensor([code.numel()], device=device)
            longest = int(trainer.strategy.all_gather(count).max())
            padded = torch.full((longest,), -1, dtype=torch.int64, device=device)
            padded[: code.numel()] = code
            gathered = trainer.strategy.all_gather(padded).cpu()  # [W, L]
            merged = gathered.t().reshape(-1)  # position-major, then rank
            merged = merged[merged >= 0]
            idx, correct = merged // 2, (merged % 2).bool()
        else:
            idx, correct = idx[valid], correct[valid]
        forgetting_update(self.state, idx, correct)

    # ------------------------------------------------------------------ epoch / fit end
    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._buf_len or trainer.world_size > 1 and self._needs_flush(trainer):
            self._flush(trainer)
        completed = trainer.current_epoch + 1
        if completed in self.epochs and completed not in self.scores_by_epoch:
            self._record_now(trainer, completed)

    def _needs_flush(self, trainer: pl.Trainer) -> bool:
        # every rank must take part in the gather when any rank has pending presentations
        pending = torch.tensor([self._buf_len], device=trainer.strategy.root_device)
        return bool(trainer.strategy.all_gather(pending).sum() > 0)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.state is None:
            return
        completed = trainer.current_epoch
        if completed not in self.scores_by_epoch:
            self._record_now(trainer, completed)

    def _record_now(self, trainer: pl.Trainer, epoch: int) -> None:
        assert self.state is not None and self.labels is not None
        labels = self.labels
        if trainer.world_size > 1:
            labels = trainer.strategy.all_gather(labels).max(dim=0).values
        labels = labels.cpu().long()
        unseen = int((labels < 0).sum())  # counted before the labels of unseen examples are filled in
        labels = self._fill_unseen_labels(trainer, labels)
        if unseen:
            rank_zero_warn(
                f"ForgettingCallback: {unseen} training example(s) were never presented (limit_train_batches or "
                f"max_steps?); they count as never learned and get {self.never_learned}."
            )
        self._record(trainer, epoch, forgetting_scores(self.state, never_learned=self.never_learned), labels)

    def _file_extra(self, trainer: pl.Trainer) -> dict[str, Any]:
        extra = super()._file_extra(trainer)
        extra["never_learned"] = str(self.never_learned)
        return extra

    # ------------------------------------------------------------------ checkpoint state
    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.state is not None:
            state["forgetting"] = self.state.state_dict()
        if self.labels is not None:
            state["labels"] = self.labels.cpu()
        state["never_learned"] = self.never_learned
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "forgetting" in state_dict:
            n = state_dict["forgetting"]["forgotten"].numel()
            self.state = ForgettingState(n)
            self.state.load_state_dict(state_dict["forgetting"])
        if "labels" in state_dict:
            self.labels = state_dict["labels"].to(torch.int32).clone()
