"""The spawning experiment: error barriers on score-defined subsets as a function of the spawn time t*.

1. Train a parent run with :class:`BarrierSpawnCallback`, which saves a full Lightning checkpoint (weights,
   optimizer, schedulers) after each epoch ``t*`` in ``epochs`` (``t* = 0``: before the first step).
2. From each parent checkpoint, :func:`spawn_children` trains two children to the end with the same weights and
   independent data orders (``lightning.seed_everything(seed)`` per child before ``fit(ckpt_path=...)``).
3. :func:`spawning_barriers` measures :func:`~lightning_datadiet.analysis.barrier.error_barrier` between the two
   children on the lowest-EL2N, highest-EL2N and a random subset (:func:`barrier_subsets`) for every ``t*``.

The paper finds that the barrier on the easiest examples vanishes early, while on the hardest it stays.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor
from typing_extensions import override

from lightning_datadiet import selection
from lightning_datadiet.analysis.barrier import Data, error_barrier

__all__ = [
    "BarrierSpawnCallback",
    "spawn_children",
    "barrier_subsets",
    "spawning_barriers",
    "spawning_experiment",
    "plot_spawning_barriers",
]


class BarrierSpawnCallback(Callback):
    """Save the parent checkpoints of the spawning experiment.

    After epoch ``t`` (that is, after ``t`` full epochs of training) for each ``t`` in ``epochs``, writes
    ``{dirpath}/parent_epoch={t}.ckpt`` with ``trainer.save_checkpoint`` (called on every rank; the strategy
    writes on rank 0). ``t = 0`` is saved at ``on_train_start``, before any optimizer step. A resumed run does
    not save an epoch twice.

    Args:
        dirpath: folder of the checkpoints.
        epochs: spawn times ``t*`` in epochs.

    Example:
        >>> spawn = BarrierSpawnCallback("parents", epochs=[0, 1, 2, 5])
        >>> # Trainer(max_epochs=20, callbacks=[spawn]).fit(model, datamodule); spawn.checkpoints[5]
    """

    def __init__(self, dirpath: str | os.PathLike, epochs: Sequence[int]) -> None:
        epochs = sorted({int(e) for e in epochs})
        if not epochs or epochs[0] < 0:
            raise ValueError(f"`epochs` must be a non-empty list of non-negative epoch counts, got {epochs}.")
        self.dirpath = Path(dirpath)
        self.epochs = epochs
        self.saved: dict[int, str] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(epochs=self.epochs)

    def path_for(self, epoch: int) -> Path:
        """The checkpoint path of spawn time ``epoch``."""
        return self.dirpath / f"parent_epoch={epoch}.ckpt"

    @property
    def checkpoints(self) -> dict[int, Path]:
        """``{t*: checkpoint path}`` of the checkpoints saved so far."""
        return {t: Path(p) for t, p in sorted(self.saved.items())}

    def _save(self, trainer: Trainer, epoch: int) -> None:
        if epoch in self.epochs and epoch not in self.saved:
            path = self.path_for(epoch)
            self.saved[epoch] = str(path)  # recorded before saving, so the checkpoint knows itself
            trainer.save_checkpoint(path)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch == 0 and trainer.global_step == 0:
            self._save(trainer, 0)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save(trainer, trainer.current_epoch + 1)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs), "saved": {int(t): str(p) for t, p in self.saved.items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.saved = {int(t): str(p) for t, p in state_dict.get("saved", {}).items()}


def spawn_children(
    parent_checkpoint: str | os.PathLike,
    make_model: Callable[[], LightningModule],
    make_datamodule: Callable[[], LightningDataModule],
    *,
    seeds: Sequence[int] = (1, 2),
    trainer_kwargs: Mapping[str, Any] | None = None,
) -> list[LightningModule]:
    """Train one child per seed from ``parent_checkpoint`` to the end of the schedule.

    Each child builds ``make_model()`` and ``make_datamodule()``, calls ``lightning.seed_everything(seed)`` and then
    ``Trainer(**trainer_kwargs).fit(model, datamodule, ckpt_path=parent_checkpoint)``: the same weights, optimizer
    and scheduler state, and a data order drawn from the seeded global RNG. A DataLoader with its own fixed ``generator`` would give every child
    the same order: build it from the global RNG (the default) for this experiment.

    Args:
        parent_checkpoint: a checkpoint written by :class:`BarrierSpawnCallback`.
        make_model: builds a fresh LightningModule of the parent's architecture.
        make_datamodule: builds the parent's DataModule.
        seeds: one seed per child.
        trainer_kwargs: ``Trainer`` arguments, including the parent's ``max_epochs``; logging, checkpointing,
            the progress bar and the model summary are off unless given.

    Returns:
        The trained children, in the order of ``seeds``.
    """
    kwargs = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **(trainer_kwargs or {}),
    }
    children = []
    for seed in seeds:
        model, datamodule = make_model(), make_datamodule()
        # Seeded after the constructors, which may seed the global RNG themselves (weights are overwritten by
        # the checkpoint anyway); the data order then comes from `seed`.
        pl.seed_everything(int(seed), workers=True, verbose=False)
        with warnings.catch_warnings():
            # The parent's BarrierSpawnCallback state is in the checkpoint; the children do not need it.
            warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`")
            Trainer(**kwargs).fit(model, datamodule=datamodule, ckpt_path=str(parent_checkpoint))
        children.append(model)
    return children


def barrier_subsets(scores: Tensor, size: int | float, *, seed: int = 0) -> dict[str, Tensor]:
    """The lowest-score, highest-score and a random subset of ``size`` examples (sorted indices).

    Uses the rules of ``lightning_datadiet.selection`` (``lowest``, ``highest``, ``random``); ``size`` is an int
    count or a float fraction of ``N``.
    """
    return {
        "lowest": selection.lowest(scores, size),
        "highest": selection.highest(scores, size),
        "random": selection.random_subset(scores, size, seed=seed),
    }


def spawning_barriers(
    children: Mapping[int, Sequence[torch.nn.Module]],
    subsets: Mapping[str, Data],
    *,
    alphas: Sequence[float] = (0.0, 0.5, 1.0),
    bn_data: Data | None = None,
    **barrier_kwargs: Any,
) -> dict[str, Any]:
    """Error barrier between the two children of each spawn time, on each subset.

    Args:
        children: ``{t*: (child_a, child_b)}``.
        subsets: ``{name: data}``, each a DataLoader or an ``(inputs, targets)`` pair.
        alphas: interpolation weights (``(0, 0.5, 1)``: the usual midpoint approximation).
        bn_data: data for recomputing BatchNorm statistics (e.g. the training set); default each subset itself.
        **barrier_kwargs: passed to :func:`~lightning_datadiet.analysis.barrier.error_barrier`.

    Returns:
        ``{"t": list[int], "barrier": {name: list[float]}, "details": {name: list[dict]}}`` in increasing ``t*``.
    """
    times = sorted(children)
    barrier: dict[str, list[float]] = {name: [] for name in subsets}
    details: dict[str, list[dict[str, Any]]] = {name: [] for name in subsets}
    for t in times:
        pair = children[t]
        if len(pair) != 2:
            raise ValueError(f"Expected two children at t*={t}, got {len(pair)}.")
        for name, data in subsets.items():
            out = error_barrier(pair[0], pair[1], data, alphas, bn_data=bn_data, **barrier_kwargs)
            barrier[name].append(out["barrier"])
            details[name].append(out)
    return {"t": times, "barrier": barrier, "details": details}


def spawning_experiment(
    parent_checkpoints: Mapping[int, str | os.PathLike],
    make_model: Callable[[], LightningModule],
    make_datamodule: Callable[[], LightningDataModule],
    subsets: Mapping[str, Data],
    *,
    seeds: Sequence[int] = (1, 2),
    trainer_kwargs: Mapping[str, Any] | None = None,
    alphas: Sequence[float] = (0.0, 0.5, 1.0),
    bn_data: Data | None = None,
    **barrier_kwargs: Any,
) -> dict[str, Any]:
    """:func:`spawn_children` from each parent checkpoint, then :func:`spawning_barriers`.

    Args:
        parent_checkpoints: ``{t*: path}``, e.g. ``BarrierSpawnCallback.checkpoints``.
        make_model: builds a fresh LightningModule of the parent's architecture.
        make_datamodule: builds the parent's DataModule.
        subsets: ``{name: data}`` on which barriers are measured (see :func:`barrier_subsets`).
        seeds: the two children's seeds.
        trainer_kwargs: ``Trainer`` arguments for the children (the parent's ``max_epochs``).
        alphas: interpolation weights.
        bn_data: data for recomputing BatchNorm statistics.
        **barrier_kwargs: passed to ``error_barrier``.

    Returns:
        The :func:`spawning_barriers` result.
    """
    if len(seeds) != 2:
        raise ValueError(f"The spawning experiment trains two children per t*: got seeds {list(seeds)}.")
    children = {
        int(t): spawn_children(path, make_model, make_datamodule, seeds=seeds, trainer_kwargs=trainer_kwargs)
        for t, path in parent_checkpoints.items()
    }
    return spawning_barriers(children, subsets, alphas=alphas, bn_data=bn_data, **barrier_kwargs)


def plot_spawning_barriers(
    result: Mapping[str, Any], path: str | os.PathLike, *, title: str | None = None
) -> Path:
    """Plot barrier against spawn time ``t*``, one line per subset.

    Args:
        result: a :func:`spawning_barriers` result.
        path: output image; the suffix picks the format.
        title: figure title.

    Returns:
        The path written.
    """
    fig = Figure(figsize=(5.5, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, values in result["barrier"].items():
        ax.plot(result["t"], values, marker="o", markersize=4, label=name)
    ax.set_xlabel("spawn epoch t*")
    ax.set_ylabel("error barrier")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
