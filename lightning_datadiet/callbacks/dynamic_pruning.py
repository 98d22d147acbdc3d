"""DynamicPruningCallback: InfoBatch-style pruning during training (Qin et al., ICLR 2024), without global patching.

At the start of each epoch after the first, among the examples whose latest training loss is below the mean latest
loss, a random ``prune_ratio`` of them is skipped for that epoch; the last ``ceil(anneal x max_epochs)`` epochs use
all data. The kept low-loss examples' losses should be scaled by ``1 / (1 - prune_ratio)`` so that the expected
gradient is unchanged: the LightningModule opts in with one call, :func:`loss_weights`.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import DistributedSampler
from typing_extensions import override

from lightning_datadiet._utils import fraction_count
from lightning_datadiet.callbacks._base import default_seed
from lightning_datadiet.callbacks._presentations import PresentationRecorder, adopt_state, epoch_completed
from lightning_datadiet.scores.forgetting import occurrence_rounds

__all__ = ["DynamicPruningCallback", "loss_weights"]


def _per_example_loss(logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
    return {"loss": F.cross_entropy(logits.detach().float(), targets.long(), reduction="none")}


def loss_weights(pl_module: pl.LightningModule, batch: Any = None) -> Tensor | float:
    """Per-example loss weights of the current training batch for :class:`DynamicPruningCallback`'s rescaling.

    ``1 / (1 - prune_ratio)`` for the examples that were pruning candidates this epoch (latest loss below the mean)
    and were kept, ``1`` for the others: multiply them into the per-example loss before the mean::

        loss = F.cross_entropy(logits, y, reduction="none")
        return (loss * loss_weights(self)).mean()

    Returns ``1.0`` (a float) when the trainer has no :class:`DynamicPruningCallback`, so the module works without it.
    ``batch`` is accepted for symmetry and ignored (the callback knows the batch's dataset indices).
    """
    trainer = getattr(pl_module, "_trainer", None)
    callbacks = getattr(trainer, "callbacks", None) or []
    found = [cb for cb in callbacks if isinstance(cb, DynamicPruningCallback)]
    if not found:
        return 1.0
    return found[0].weights()


class DynamicPruningCallback(Callback):
    """Skip part of the well-learned training examples in each epoch (InfoBatch), exactly and resumably.

    Per example the callback keeps its **latest training loss**: the cross-entropy of the logits of its latest
    training forward pass (read with a forward hook, as for :class:`ForgettingCallback`; the module is unchanged)
    and its label, computed by the callback in float32. At the start of epoch ``e``:

    - ``e == 0``, or ``e`` among the last ``ceil(anneal x max_epochs)`` epochs: every example is used;
    - otherwise the *candidates* are the examples whose latest loss is below the mean latest loss (over examples
      presented so far), and ``prune_ratio x candidates`` of them (rounded half up, as every count in the package),
      drawn at random with a generator seeded by ``(seed, e)``, are skipped for the epoch.

    Skipping happens in the training DataLoader's batch sampler (the seam the sample tracking uses): skipped indices
    are omitted from the sampler's stream, the rest is batched as usual, and the epoch has fewer batches (Lightning's
    batch count, validation check and epoch-end schedulers follow the shorter epoch). Under DDP every rank decides the
    same skipped set (the losses are gathered by index) and the kept global order of the ``DistributedSampler`` is
    re-sharded so every rank gets the same number of batches.

    **Rescaling** (opt-in, one line in ``training_step``): ``loss = (per_example_loss * loss_weights(self)).mean()``,
    see :func:`loss_weights`. Without it pruning still works, unrescaled, and the callback warns once.

    Results, per epoch index: :attr:`skipped_by_epoch` (``BoolTensor[N]``), :attr:`realised_fraction` (skipped / N),
    :attr:`candidate_fraction`, :attr:`steps_saved` (optimizer steps saved on each rank) and
    :attr:`latest_loss` (``float32[N]``, NaN = never presented); logged to the trainer's loggers as
    ``datadiet/pruned_fraction``, ``datadiet/pruning_candidates`` and ``datadiet/steps_saved``.
    ``state_dict``/``load_state_dict`` make a resumed fit (also from a mid-epoch checkpoint) prune exactly as an
    uninterrupted one. Only the epochs' completed presentations update the losses.

    Args:
        prune_ratio: fraction of the below-mean examples skipped per epoch, in ``[0, 1)``.
        anneal: fraction of ``max_epochs`` at the end that uses all data, in ``[0, 1]``.
        seed: seeds the random choice (default: ``PL_GLOBAL_SEED``, else 0).
        logits_module, input_key, target_key: as for :class:`ForgettingCallback`.
    """

    def __init__(
        self,
        prune_ratio: float = 0.5,
        anneal: float = 0.125,
        *,
        seed: int | None = None,
        logits_module: str | None = None,
        input_key: int | str | None = None,
        target_key: int | str | None = None,
    ) -> None:
        if isinstance(prune_ratio, bool) or not isinstance(prune_ratio, (int, float)) or not 0 <= prune_ratio < 1:
            raise ValueError(f"prune_ratio must be a number in [0, 1), got {prune_ratio!r}.")
        if isinstance(anneal, bool) or not isinstance(anneal, (int, float)) or not 0 <= anneal <= 1:
            raise ValueError(f"anneal must be a number in [0, 1] (fraction of max_epochs), got {anneal!r}.")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None, got {seed!r}.")
        self.prune_ratio = float(prune_ratio)
        self.anneal = float(anneal)
        self._seed_arg = seed
        self.seed = seed
        self._recorder = PresentationRecorder(
            "DynamicPruningCallback",
            _per_example_loss,
            logits_module=logits_module,
            input_key=input_key,
            target_key=target_key,
        )
        self._recorder.tracker.plan = self._plan
        self._reset()

    def _reset(self) -> None:
        self.latest_loss: Tensor | None = None
        self.skipped_by_epoch: dict[int, Tensor] = {}
        self.candidates_by_epoch: dict[int, Tensor] = {}
        self.realised_fraction: dict[int, float] = {}
        self.candidate_fraction: dict[int, float] = {}
        self.steps_saved: dict[int, int] = {}
        self.num_samples: int | None = None
        self.max_epochs: int | None = None
        self._plan_cache: tuple[int, int, list[int]] | None = None
        self._batch_weights: Tensor | None = None
        self._weights_called = False
        self._warned_unscaled = False
        self._finished_epoch: int | None = None
        self._trainer: pl.Trainer | None = None
        self._recorder.reset()
        self._recorder.tracker.plan = self._plan

    # ------------------------------------------------------------------ public helpers
    @property
    def total_steps_saved(self) -> int:
        return sum(self.steps_saved.values())

    def weights(self) -> Tensor | float:
        """Loss weights of the current training batch (see :func:`loss_weights`)."""
        self._weights_called = True
        return 1.0 if self._batch_weights is None else self._batch_weights

    def annealed_from(self) -> int:
        """First epoch index of the annealing phase (all data)."""
        assert self.max_epochs is not None
        return self.max_epochs - math.ceil(self.anneal * self.max_epochs)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key()

    # ------------------------------------------------------------------ lifecycle
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._reset()  # a new fit starts fresh; a resumed one gets its state back in load_state_dict (after setup)
        self.seed = self._seed_arg if self._seed_arg is not None else (default_seed() or 0)
        if trainer.max_epochs is None or trainer.max_epochs < 1:
            raise ValueError(
                "DynamicPruningCallback needs Trainer(max_epochs=...) (a positive number): the annealing phase is the "
                "last ceil(anneal x max_epochs) epochs."
            )
        self.max_epochs = int(trainer.max_epochs)
        self._trainer = trainer
        self._recorder.setup(trainer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._recorder.teardown(trainer)
            self._trainer = None

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._recorder.teardown(trainer)  # Lightning calls no teardown hook after a failed fit
        self._trainer = None

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        adopt_state(self, checkpoint)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = len(trainer.train_dataloader.dataset)  # type: ignore[union-attr, arg-type]
        if self.latest_loss is None:
            self.latest_loss = torch.full((n,), float("nan"))
        elif self.latest_loss.numel() != n:
            raise ValueError(
                f"DynamicPruningCallback: the checkpoint's losses cover {self.latest_loss.numel()} examples but the "
                f"training set has {n}. Resume with the same dataset."
            )
        self.num_samples = n
        self._recorder.on_train_start(trainer, pl_module)

    # ------------------------------------------------------------------ the decision
    def _decide(self, epoch: int) -> Tensor | None:
        """The skipped mask of ``epoch`` (decided once, from the latest losses at its start); None = no pruning."""
        if epoch in self.skipped_by_epoch:
            mask = self.skipped_by_epoch[epoch]
            return mask if bool(mask.any()) else None
        assert self.latest_loss is not None and self.max_epochs is not None
        n = self.latest_loss.numel()
        mask = torch.zeros(n, dtype=torch.bool)
        candidates = torch.zeros(n, dtype=torch.bool)
        seen = ~torch.isnan(self.latest_loss)
        if epoch > 0 and epoch < self.annealed_from() and self.prune_ratio > 0 and bool(seen.any()):
            losses = self.latest_loss.double()
            candidates = seen & (losses < losses[seen].mean())
            idx = candidates.nonzero().flatten()
            k = fraction_count(idx.numel(), self.prune_ratio)
            g = torch.Generator().manual_seed(int(self.seed or 0) * 1_000_003 + epoch)
            mask[idx[torch.randperm(idx.numel(), generator=g)[:k]]] = True
        self.skipped_by_epoch[epoch] = mask
        self.candidates_by_epoch[epoch] = candidates
        self.realised_fraction[epoch] = float(mask.sum()) / max(n, 1)
        self.candidate_fraction[epoch] = float(candidates.sum()) / max(n, 1)
        return mask if bool(mask.any()) else None

    def _plan(self, sampler: Any) -> list[int] | None:
        """This rank's index stream for the epoch in progress with the skipped items omitted (None: no pruning)."""
        trainer = self._trainer
        if trainer is None or self.latest_loss is None:
            return None
        epoch = trainer.current_epoch
        if self.max_epochs is not None and epoch >= self.max_epochs:  # asked for len() after the last epoch
            return None
        mask = self._decide(epoch)
        if mask is None:
            return None
        set_epoch = getattr(sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)  # Lightning sets it too; `len()` may come before (a resumed fit's first epoch)
        key = (epoch, id(sampler))
        if self._plan_cache is not None and self._plan_cache[:2] == key:
            return self._plan_cache[2]
        world = trainer.world_size
        if world > 1:
            if type(sampler) is not DistributedSampler:
                raise TypeError(
                    "DynamicPruningCallback under DDP needs the DistributedSampler that Lightning installs for a "
                    f"DataLoader with shuffle=True/False, got {type(sampler).__name__}: every rank must be able to "
                    "replay the other ranks' order so that all ranks skip the same examples and get the same number "
                    "of batches. Use shuffle= instead of a custom sampler."
                )
            streams = []
            for rank in range(sampler.num_replicas):
                other = copy.copy(sampler)
                other.rank = rank
                streams.append(list(iter(other)))
            world = sampler.num_replicas
            order = [streams[r][j] for j in range(len(streams[0])) for r in range(world)]  # the global order
            if not sampler.drop_last:  # without the sampler's padding: it repeats the first indices at the end
                order = order[: len(sampler.dataset)]  # type: ignore[arg-type]
            kept = [i for i in order if not mask[i]]
            if sampler.drop_last:  # even out the ranks as DistributedSampler does: drop the tail, or pad with repeats
                kept = kept[: len(kept) - len(kept) % world]
            else:
                kept += (kept * world)[: (-len(kept)) % world]
            plan = kept[sampler.rank :: world]
        else:
            plan = [int(i) for i in iter(sampler) if not mask[int(i)]]
        self._plan_cache = (epoch, id(sampler), plan)
        return plan

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Decide this epoch's skipped set and make Lightning's batch count (validation check, epoch-end schedulers)
        follow the epoch's length; log the realised fraction and the steps saved."""
        epoch = trainer.current_epoch
        loader = trainer.train_dataloader
        batch_sampler = getattr(loader, "batch_sampler", None)
        full = len(batch_sampler.sampler) if batch_sampler is not None else 0  # type: ignore[union-attr]
        per_rank = len(batch_sampler) if batch_sampler is not None else 0  # type: ignore[arg-type]
        bs, drop = getattr(batch_sampler, "batch_size", 1) or 1, getattr(batch_sampler, "drop_last", False)
        full_batches = full // bs if drop else -(-full // bs)
        limit = trainer.limit_train_batches
        if isinstance(limit, int) and not isinstance(limit, bool):
            full_batches, per_rank = min(full_batches, limit), min(per_rank, limit)
        elif isinstance(limit, float) and limit != 1.0:
            full_batches, per_rank = int(full_batches * limit), int(per_rank * limit)  # Lightning's own rounding (floor)
        # Lightning computed the batch count (and the combined loader's limit) once, when the loader was built: make
        # them this epoch's, so the epoch ends, validates and steps epoch-interval schedulers at its real last batch.
        fit_loop = trainer.fit_loop
        combined = getattr(fit_loop, "_combined_loader", None)
        if per_rank > 0 and isinstance(fit_loop.max_batches, int):
            if combined is not None and len(getattr(combined, "limits", None) or []) == 1:
                combined.limits = [per_rank]
            if fit_loop.max_batches != per_rank:
                fit_loop.max_batches = per_rank
                if isinstance(trainer.val_check_interval, float) and trainer.val_check_batch not in (None, float("inf")):
                    trainer.val_check_batch = max(1, int(per_rank * trainer.val_check_interval))  # as Lightning
        acc = max(1, int(trainer.accumulate_grad_batches))
        self.steps_saved[epoch] = -(-full_batches // acc) - (-(-per_rank // acc))
        self._decide(epoch)
        metrics = {
            "datadiet/pruned_fraction": self.realised_fraction[epoch],
            "datadiet/pruning_candidates": self.candidate_fraction[epoch],
            "datadiet/steps_saved": float(self.steps_saved[epoch]),
        }
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        if self.realised_fraction[epoch] > 0:
            rank_zero_info(
                f"DynamicPruningCallback: epoch {epoch} skips {int(self.skipped_by_epoch[epoch].sum())} of "
                f"{self.num_samples} examples ({self.realised_fraction[epoch]:.1%}; {self.steps_saved[epoch]} steps saved)"
            )

    # ------------------------------------------------------------------ per batch
    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        indices = self._recorder.on_train_batch_start()
        epoch = trainer.current_epoch
        candidates = self.candidates_by_epoch.get(epoch)
        self._weights_called = False
        if candidates is None or not bool(self.skipped_by_epoch[epoch].any()):
            self._batch_weights = None
            return
        kept_candidate = candidates[indices] & ~self.skipped_by_epoch[epoch][indices]
        scale = 1.0 / (1.0 - self.prune_ratio)
        weights = torch.where(kept_candidate, scale, 1.0).to(torch.float32)
        self._batch_weights = weights.to(pl_module.device, non_blocking=True)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._recorder.on_train_batch_end(outputs, batch)
        if self._batch_weights is not None and not self._weights_called and not self._warned_unscaled:
            self._warned_unscaled = True
            rank_zero_warn(
                "DynamicPruningCallback prunes this epoch but the training_step did not call "
                "`lightning_datadiet.loss_weights(self)`, so the kept low-loss examples are not rescaled by "
                f"1/(1 - prune_ratio) = {1 / (1 - self.prune_ratio):.3g} and the expected gradient is biased towards "
                "the high-loss examples. Opt in with: loss = (F.cross_entropy(logits, y, reduction='none') * "
                "loss_weights(self)).mean()."
            )
        self._batch_weights = None
        if epoch_completed(trainer):
            self._finish_epoch(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if epoch_completed(trainer):
            self._finish_epoch(trainer)

    def _finish_epoch(self, trainer: pl.Trainer) -> None:
        if self._finished_epoch == trainer.current_epoch:
            return
        self._finished_epoch = trainer.current_epoch
        merged = self._recorder.finish_epoch(trainer)  # collective under DDP: losses gathered by index
        if merged is None or self.latest_loss is None:
            return
        idx, loss = merged["index"], merged["loss"].float()
        for pick in occurrence_rounds(idx):  # a repeated index (DDP padding) keeps its latest presentation
            self.latest_loss[idx[pick]] = loss[pick]

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._recorder.discard_unfinished(trainer, "the losses used for pruning")
        if self.steps_saved:
            rank_zero_info(
                f"DynamicPruningCallback: {self.total_steps_saved} optimizer steps saved over {len(self.steps_saved)} "
                "epoch(s)."
            )

    # ------------------------------------------------------------------ checkpoint state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "prune_ratio": self.prune_ratio,
            "anneal": self.anneal,
            "seed": self.seed,
            "latest_loss": None if self.latest_loss is None else self.latest_loss.clone(),
            "skipped_by_epoch": {int(e): m.clone() for e, m in self.skipped_by_epoch.items()},
            "candidates_by_epoch": {int(e): m.clone() for e, m in self.candidates_by_epoch.items()},
            "realised_fraction": dict(self.realised_fraction),
            "candidate_fraction": dict(self.candidate_fraction),
            "steps_saved": dict(self.steps_saved),
            "presentations": self._recorder.state_dict(),  # collective under DDP (Lightning calls it on all ranks)
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for name in ("prune_ratio", "anneal"):
            if float(state_dict[name]) != getattr(self, name):
                raise ValueError(
                    f"DynamicPruningCallback: the checkpoint was pruned with {name}={state_dict[name]}, this callback "
                    f"has {name}={getattr(self, name)}. Resume with the same settings (or start a new fit)."
                )
        if self._seed_arg is None:
            self.seed = state_dict.get("seed", self.seed)
        self.latest_loss = state_dict["latest_loss"]
        self.skipped_by_epoch = {int(e): m for e, m in state_dict["skipped_by_epoch"].items()}
        self.candidates_by_epoch = {int(e): m for e, m in state_dict["candidates_by_epoch"].items()}
        self.realised_fraction = {int(e): float(v) for e, v in state_dict["realised_fraction"].items()}
        self.candidate_fraction = {int(e): float(v) for e, v in state_dict["candidate_fraction"].items()}
        self.steps_saved = {int(e): int(v) for e, v in state_dict["steps_saved"].items()}
        self._recorder.load_state_dict(state_dict["presentations"], self._trainer)
