"""TrainingDynamicsCallback: AUM, data-map confidence/variability/correctness and dynamic uncertainty per example."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_datadiet.analysis.datamap import data_map_figure
from lightning_datadiet.callbacks._base import check_method_name
from lightning_datadiet.callbacks._presentations import TrainingPassCallback
from lightning_datadiet.callbacks._tb import log_full_histogram, tensorboard_writers
from lightning_datadiet.scores.dynamics import (
    DYNAMICS_METRICS,
    HARD_END,
    DynamicsState,
    dynamics_scores,
    dynamics_update,
    presentation_values,
)
from lightning_datadiet.store import save_scores

__all__ = ["TrainingDynamicsCallback"]


class TrainingDynamicsCallback(TrainingPassCallback):
    """Training-dynamics scores per training example, from the training forward passes (no extra pass).

    Metrics (definitions in :mod:`lightning_datadiet.scores.dynamics`): ``aum``, ``confidence``, ``variability``,
    ``correctness``, ``dynamic_uncertainty``. The sample identity is tracked exactly as for
    :class:`ForgettingCallback` (shuffling, workers, DDP padding, mid-epoch resume), and the user's module is unchanged:
    the logits are read with a forward hook on ``logits_module``. Only completed epochs are counted.

    After ``fit``, :attr:`scores` is ``{name: float32 Tensor[N]}`` with the metrics **as defined** (entry ``i`` for
    dataset item ``i``; NaN for items never presented). Each metric is also written as a score file
    ``<name>_epoch<E>_seed<S>.scores`` with ``method=<name>``, **oriented so that higher = harder**, which is what the
    ``highest`` selection rule keeps: ``aum``, ``confidence`` and ``correctness`` (hard end low) are stored negated
    (header ``extra["stored"] == "negated"``), ``variability`` and ``dynamic_uncertainty`` as defined. The same
    oriented values are in :attr:`hardness`.

    Args:
        metrics: names to record (default: all five).
        window: presentations per window of ``dynamic_uncertainty`` (default 10). Memory O(N x window): a float32
            ring buffer of the latest ``window`` values of ``p[y]`` per example.
        epochs: completed epochs after which to also write snapshots (the final scores are always written).
        dirpath, logits_module, input_key, target_key, seed, save, log_histogram: as for :class:`ForgettingCallback`.
            With ``log_histogram`` and a TensorBoard logger, one histogram per metric and the data map (confidence
            vs variability, coloured by correctness) as a figure are logged.

    Example::

        cb = TrainingDynamicsCallback()
        Trainer(max_epochs=20, callbacks=[cb]).fit(model, datamodule=dm)
        cb.scores["aum"]  # float32 [N]
    """

    method = "dynamics"

    def __init__(
        self,
        metrics: Sequence[str] | None = None,
        *,
        window: int = 10,
        epochs: int | Sequence[int] | None = None,
        dirpath: str | os.PathLike | None = None,
        logits_module: str | None = None,
        input_key: int | str | None = None,
        target_key: int | str | None = None,
        seed: int | None = None,
        save: bool = True,
        log_histogram: bool = True,
    ) -> None:
        names = list(DYNAMICS_METRICS) if metrics is None else [metrics] if isinstance(metrics, str) else list(metrics)
        unknown = [m for m in names if m not in DYNAMICS_METRICS]
        if unknown or not names:
            raise ValueError(
                f"TrainingDynamicsCallback: unknown or no metrics {unknown or names}; choose from {list(DYNAMICS_METRICS)}."
            )
        self.metrics = [m for m in DYNAMICS_METRICS if m in names]
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise ValueError(f"`window` must be an int >= 2 (presentations per window), got {window!r}.")
        self.window = window
        super().__init__(
            epochs,
            compute=presentation_values,
            dirpath=dirpath,
            logits_module=logits_module,
            input_key=input_key,
            target_key=target_key,
            seed=seed,
            save=save,
            log_histogram=log_histogram,
        )
        self.state: DynamicsState | None = None
        self.scores_by_epoch: dict[int, dict[str, Tensor]] = {}  # type: ignore[assignment]
        self.score_paths: dict[int, dict[str, Path]] = {}  # type: ignore[assignment]

    # ------------------------------------------------------------------ results
    @property
    @override
    def scores(self) -> dict[str, Tensor] | None:  # type: ignore[override]
        """``{metric: float32 Tensor[N]}`` of the latest recording, values as defined (NaN = never presented)."""
        if not self.scores_by_epoch:
            return None
        return self.scores_by_epoch[max(self.scores_by_epoch)]

    @property
    def hardness(self) -> dict[str, Tensor] | None:
        """The latest scores oriented so that higher = harder (what the score files hold)."""
        scores = self.scores
        return None if scores is None else {k: _oriented(k, v) for k, v in scores.items()}

    # ------------------------------------------------------------------ TrainingPassCallback interface
    def _init_state(self, num_samples: int) -> None:
        self.state = DynamicsState(num_samples, self.window, ring="dynamic_uncertainty" in self.metrics)

    def _state_size(self) -> int | None:
        return None if self.state is None else self.state.num_samples

    def _reset_state(self) -> None:
        self.state = None

    def _apply(self, merged: dict[str, Tensor]) -> None:
        assert self.state is not None
        dynamics_update(self.state, merged["index"], merged["margin"], merged["prob"], merged["correct"])

    def _record_now(self, trainer: pl.Trainer, epoch: int) -> None:
        assert self.state is not None
        labels, unseen = self._labels_for_record(trainer)
        if unseen:
            rank_zero_warn(
                f"TrainingDynamicsCallback: {unseen} training example(s) were never presented (limit_train_batches or "
                "max_steps?); their scores are NaN, which PrunedDataModule refuses: fill them explicitly."
            )
        scores = dynamics_scores(self.state, self.metrics)
        if "dynamic_uncertainty" in scores:
            short = int((self.state.count < self.window).sum()) - unseen
            if short > 0:
                rank_zero_warn(
                    f"TrainingDynamicsCallback: {short} example(s) have fewer than window={self.window} presentations, "
                    "so no full window: their dynamic_uncertainty is NaN. Train at least `window` epochs or lower "
                    "`window`."
                )
        self.num_samples = self.state.num_samples
        self.label_fingerprint = self._labels_fingerprint(labels)
        self.scores_by_epoch[epoch] = scores
        paths: dict[str, Path] = {}
        if self.save:
            assert self.dirpath is not None
            for name, values in scores.items():
                check_method_name(name)
                nan = int(torch.isnan(values).sum())
                if nan:  # score files refuse NaN (it has no rank): say so instead of writing a partial file
                    rank_zero_warn(
                        f"TrainingDynamicsCallback: {name} after {epoch} epoch(s) is NaN for {nan} example(s) (never "
                        "presented, or fewer presentations than `window`), and score files cannot hold NaN, so no "
                        f"{name} file is written for this epoch; `scores[{name!r}]` holds the values with NaN."
                    )
                    continue
                stem = f"{name}_epoch{epoch:03d}" + (f"_seed{self.seed}" if self.seed is not None else "")
                paths[name] = self.dirpath / f"{stem}.scores"
                if trainer.is_global_zero:
                    save_scores(
                        paths[name],
                        _oriented(name, values),
                        method=name,
                        epoch=epoch,
                        seed=self.seed,
                        label_fingerprint=self.label_fingerprint,
                        extra={**self._file_extra(trainer), **_orientation_extra(name, self.window)},
                    )
            self.score_paths[epoch] = paths
            trainer.strategy.barrier("datadiet-save")
        if self.log_histogram and trainer.is_global_zero:
            for name, values in scores.items():
                log_full_histogram(trainer, name, values, epoch)
            self._log_data_map(trainer, epoch, scores)
        rank_zero_info(
            f"TrainingDynamicsCallback: scored {self.state.num_samples} examples after {epoch} epoch(s) ({', '.join(scores)})"
            + (f" -> {self.dirpath}" if paths else "")
        )

    def _log_data_map(self, trainer: pl.Trainer, epoch: int, scores: dict[str, Tensor]) -> None:
        if not {"confidence", "variability"} <= set(scores):
            return
        writers = tensorboard_writers(trainer)
        if not writers:
            return
        fig = data_map_figure(scores["confidence"], scores["variability"], scores.get("correctness"))
        for writer in writers:
            writer.add_figure("datadiet/data_map", fig, global_step=epoch, close=False)
            writer.flush()

    # ------------------------------------------------------------------ checkpoint state
    def _extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"metrics": list(self.metrics), "window": self.window}
        if self.state is not None:
            state["dynamics"] = self.state.state_dict()
        return state

    def _load_extra_state(self, state_dict: dict[str, Any]) -> None:
        if list(state_dict.get("metrics", self.metrics)) != self.metrics or state_dict.get("window") != self.window:
            raise ValueError(
                f"TrainingDynamicsCallback: the checkpoint was recorded with metrics={state_dict.get('metrics')} and "
                f"window={state_dict.get('window')}; this callback has metrics={self.metrics}, window={self.window}. "
                "Resume with the same `metrics` and `window` (or start a new fit without `ckpt_path`)."
            )
        if "dynamics" in state_dict:
            n = state_dict["dynamics"]["count"].numel()
            self.state = DynamicsState(n, self.window, ring="dynamic_uncertainty" in self.metrics)
            self.state.load_state_dict(state_dict["dynamics"])

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["scores_by_epoch"] = {int(e): dict(v) for e, v in self.scores_by_epoch.items()}
        state["score_paths"] = {int(e): {k: str(p) for k, p in v.items()} for e, v in self.score_paths.items()}
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({**state_dict, "score_paths": {}})
        self.scores_by_epoch = {int(e): dict(v) for e, v in state_dict.get("scores_by_epoch", {}).items()}
        self.score_paths = {
            int(e): {k: Path(p) for k, p in v.items()} for e, v in state_dict.get("score_paths", {}).items()
        }


def _oriented(name: str, values: Tensor) -> Tensor:
    return -values if HARD_END[name] == "low" else values.clone()


def _orientation_extra(name: str, window: int) -> dict[str, Any]:
    extra: dict[str, Any] = {
        "metric": name,
        "hard_end": HARD_END[name],
        "stored": "negated" if HARD_END[name] == "low" else "as defined",
    }
    if name == "dynamic_uncertainty":
        extra["window"] = window
    return extra
