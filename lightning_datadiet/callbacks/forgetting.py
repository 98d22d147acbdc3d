"""ForgettingCallback: forgetting events counted from the training forward passes, per example."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_datadiet.callbacks._presentations import TrainingPassCallback
from lightning_datadiet.callbacks._tb import log_full_histogram
from lightning_datadiet.scores.forgetting import ForgettingState, forgetting_scores, forgetting_update

__all__ = ["ForgettingCallback"]


class ForgettingCallback(TrainingPassCallback):
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

    Only completed epochs are counted (a fit that ``max_steps`` ends inside an epoch leaves that epoch out and
    warns; files are labelled with the completed epochs). A new ``fit`` starts from zero; a fit with ``ckpt_path``
    continues the saved counts, also from a checkpoint saved inside an epoch (exact when the sampler's order depends
    only on seed and epoch; otherwise a warning). The TensorBoard histogram ``datadiet/forgetting`` counts all N
    examples, never-learned ones drawn at one past the largest finite count.

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
            compute=_correctness,
            dirpath=dirpath,
            logits_module=logits_module,
            input_key=input_key,
            target_key=target_key,
            seed=seed,
            save=save,
            log_histogram=log_histogram,
        )
        never_learned = float(never_learned)
        if never_learned != never_learned:
            raise ValueError("never_learned must not be NaN (use inf, the official semantics, or a number).")
        self.never_learned = never_learned
        self.state: ForgettingState | None = None

    def _init_state(self, num_samples: int) -> None:
        self.state = ForgettingState(num_samples)

    def _state_size(self) -> int | None:
        return None if self.state is None else self.state.num_samples

    def _reset_state(self) -> None:
        self.state = None

    def _apply(self, merged: dict[str, Tensor]) -> None:
        assert self.state is not None
        forgetting_update(self.state, merged["index"], merged["correct"])

    def _record_now(self, trainer: pl.Trainer, epoch: int) -> None:
        assert self.state is not None
        labels, unseen = self._labels_for_record(trainer)
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
        return extra

    def _extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"never_learned": self.never_learned}
        if self.state is not None:
            state["forgetting"] = self.state.state_dict()
        return state

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        if "forgetting" in state_dict:
            n = state_dict["forgetting"]["forgotten"].numel()
            self.state = ForgettingState(n)
            self.state.load_state_dict(state_dict["forgetting"])


def _correctness(logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    return {"correct": logits.argmax(dim=1) == targets}  # [B] bool, stays on the device: no sync per batch
