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

from lightning_datadiet.callbacks._base import ScoreCallback
from lightning_datadiet.callbacks._presentations import PresentationRecorder, adopt_state, epoch_completed
from lightning_datadiet.callbacks._tb import log_full_histogram
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
        self._dirpath_arg, self._seed_arg = self.dirpath, self.seed
        self.state: ForgettingState | None = None
        self.labels: Tensor | None = None  # int32 [N], -1 = never presented
        self._recorder = PresentationRecorder(
            "ForgettingCallback",
            _correctness,
            logits_module=logits_module,
            input_key=input_key,
            target_key=target_key,
        )
        self._finished_epoch: int | None = None
        self._legacy_restore = False

    @property
    def skipped_presentations(self) -> int:
        """Presentations with NaN/inf logits, not counted (this fit)."""
        return self._recorder.skipped_presentations

    @property
    def completed_epochs(self) -> int:
        """Training epochs completed so far and counted (an epoch cut by ``max_steps`` is not completed)."""
        return self._recorder.completed_epochs

    @property
    @override
    def state_key(self) -> str:
        # Neither `epochs` (snapshots only) nor other arguments: a resumed fit finds its counts whatever they are.
        return self._generate_state_key(method=self.method)

    # ------------------------------------------------------------------ setup
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # a new fit starts fresh; a resumed one gets its state back in load_state_dict (after setup)
            self._fresh_fit()
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._recorder.setup(trainer)

    def _fresh_fit(self) -> None:
        self.state, self.labels = None, None
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
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        adopt_state(self, checkpoint)

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
        if self._legacy_restore:  # a checkpoint of an older version: it was saved at an epoch end
            self._recorder.completed_epochs = trainer.current_epoch
            self._legacy_restore = False
        self.num_samples = num_samples
        self._recorder.on_train_start(trainer, pl_module)

    # ------------------------------------------------------------------ per batch
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

    def _finish_epoch(self, trainer: pl.Trainer) -> None:
        """Apply the completed epoch's presentations of every rank, in (position, rank) order. Collective."""
        if self._finished_epoch == trainer.current_epoch:
            return
        self._finished_epoch = trainer.current_epoch
        assert self.state is not None and self.labels is not None
        merged = self._recorder.finish_epoch(trainer)
        if merged is not None:
            self.labels[merged["index"]] = merged["label"]
            forgetting_update(self.state, merged["index"], merged["correct"])
        completed = self._recorder.completed_epochs
        if completed in self.epochs and completed not in self.scores_by_epoch:
            self._record_now(trainer, completed)

    # ------------------------------------------------------------------ epoch / fit end
    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if epoch_completed(trainer):  # e.g. an epoch whose batches all came before a resume
            self._finish_epoch(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.state is None:
            return
        self._recorder.discard_unfinished(trainer, "the forgetting counts")
        completed = self._recorder.completed_epochs
        if completed not in self.scores_by_epoch:
            self._record_now(trainer, completed)
        missed = [e for e in self.epochs if e not in self.scores_by_epoch]
        if missed:
            rank_zero_warn(
                f"ForgettingCallback: the fit completed {completed} epoch(s), so snapshot epoch(s) {missed} were never "
                "reached. Train longer or lower `epochs`."
            )

    def _record_now(self, trainer: pl.Trainer, epoch: int) -> None:
        assert self.state is not None and self.labels is not None
        labels = self.labels.long()
        unseen = int((labels < 0).sum())  # counted before the labels of unseen examples are filled in
        labels = self._fill_unseen_labels(trainer, labels)
        if unseen:
            rank_zero_warn(
                f"ForgettingCallback: {unseen} training example(s) were never presented (limit_train_batches or "
                f"max_steps?); they count as never learned and get {self.never_learned}."
            )
        self._record(trainer, epoch, forgetting_scores(self.state, never_learned=self.never_learned), labels)

    def _log_histogram(self, trainer: pl.Trainer, epoch: int, scores: Tensor) -> None:
        log_full_histogram(trainer, self.method, scores, epoch, inf_name="never-learned")

    def _file_extra(self, trainer: pl.Trainer) -> dict[str, Any]:
        extra = super()._file_extra(trainer)
        extra["never_learned"] = str(self.never_learned)
        extra["completed_epochs"] = self._recorder.completed_epochs
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
        state["presentations"] = self._recorder.state_dict()  # collective under DDP (Lightning calls it on all ranks)
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
        if "presentations" in state_dict:
            self._recorder.load_state_dict(state_dict["presentations"], self._recorder._trainer)
        else:
            self._legacy_restore = True


def _correctness(logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    return {"correct": logits.argmax(dim=1) == targets}  # [B] bool, stays on the device: no sync per batch
