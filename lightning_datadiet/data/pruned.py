"""``PrunedDataModule``: train any LightningDataModule on the subset its scores select.

Swap ``dm`` for ``PrunedDataModule(dm, "el2n_epoch020_seed0.scores", keep_fraction=0.5)``: the training loader yields exactly the kept
examples, rebuilt with the wrapped loader's settings; everything else (validation/test/predict loaders, ``setup``,
``prepare_data``, hyperparameters, batch-transfer hooks, any other attribute) is the wrapped module's.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from lightning_datadiet import selection as sel
from lightning_datadiet.data.loaders import rebuild_loader, single_loader
from lightning_datadiet.data.targets import _fast_targets, dataset_targets
from lightning_datadiet.data.wrapper import DataModuleWrapper
from lightning_datadiet.store import ScoreFile, ScoreFileError, label_fingerprint, scores_from

__all__ = ["PrunedDataModule", "subset_dataloader"]

# ``list[str]`` before ``str``: jsonargparse tries the Union's types in order, and a YAML list would otherwise be
# turned into one string (LightningCLI with a list of score files to average).
ScoreSource = Union[list[str], str, os.PathLike, Tensor, None]


def subset_dataloader(loader: DataLoader, indices: Sequence[int] | Tensor) -> DataLoader:
    """A ``DataLoader`` over ``Subset(loader.dataset, indices)`` with ``loader``'s settings.

    Kept: ``batch_size``, ``num_workers``, ``collate_fn``, ``pin_memory``, ``drop_last``, ``timeout``,
    ``worker_init_fn``, ``multiprocessing_context``, ``generator``, ``prefetch_factor``, ``persistent_workers``,
    ``pin_memory_device`` (and ``in_order`` where torch has it). The sampler semantics carry over: a
    ``RandomSampler`` (``shuffle=True``, with its generator) shuffles the subset, a ``SequentialSampler`` keeps index
    order. Under DDP, Lightning then replaces the sampler by a ``DistributedSampler`` over the subset, as for any
    loader. A ``DataLoader`` subclass comes back as a plain ``DataLoader``.

    Raises:
        TypeError: an iterable-style dataset, a custom sampler or batch sampler, or a ``RandomSampler`` with
            replacement or ``num_samples``: there is no exact way to re-index those; return a plain
            ``DataLoader(dataset, shuffle=..., batch_size=...)`` from ``train_dataloader()`` instead.
    """
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise TypeError(
            f"Pruning needs a map-style training dataset (with __len__ and __getitem__); got {type(dataset).__name__}. "
            "Scores are indexed by dataset position: return a DataLoader over a map-style dataset from "
            "train_dataloader()."
        )
    index_list = indices.tolist() if isinstance(indices, Tensor) else [int(i) for i in indices]
    return rebuild_loader(loader, Subset(dataset, index_list), same_indices=False, owner="PrunedDataModule")


def _digest(indices: Tensor) -> str:
    return hashlib.sha256(indices.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


class PrunedDataModule(DataModuleWrapper):
    """Wrap a ``LightningDataModule`` and train on the subset of its training set that the scores select.

    Args:
        datamodule: any ``LightningDataModule`` whose ``train_dataloader()`` returns one ``DataLoader`` over a
            map-style dataset (the scores are indexed by position in that dataset).
        scores: one score per training example: a ``Tensor[N]``, a score-file path, or a list of score files
            (averaged over runs). ``None`` only with ``selection="random"``.
        keep_fraction: fraction of the training set kept, in ``(0, 1]``; the count is
            :func:`~lightning_datadiet.selection.keep_count` (round half up, at least 1).
        selection: one of :data:`~lightning_datadiet.selection.SELECTION_RULES`: ``"highest"`` (the paper's rule:
            prune the lowest), ``"lowest"``, ``"random"``, ``"window"`` (needs ``offset``), ``"coverage"`` (CCS).
        offset: first kept rank of the ascending order for ``"window"``: an int count or a float fraction of N.
        class_balanced: per-class quotas proportional to class frequency (labels read with ``dataset_targets``).
        seed: seed of ``"random"`` and ``"coverage"``.
        beta: ``"coverage"`` only: the hardest fraction dropped before stratified sampling.
        num_strata: ``"coverage"`` only: number of equal-width score strata (``None``: CCS's 50; an explicit
            value may not exceed the training set's size).
        allow_infinite: accept ``+/-inf`` scores (forgetting gives ``+inf`` to never-learned examples, which then
            rank highest). NaN is always refused.
        check_fingerprint: when the score file records a label fingerprint, refuse a training set whose labels
            differ (scores from another dataset or split).
        tie_break: ``"index"`` (ties among equal scores broken by dataset index) or ``"random"`` (by a permutation
            seeded with ``seed``); prefer ``"random"`` for forgetting scores on a class-ordered dataset.

    The selection is computed once, lazily, when the training set is first needed (the first ``train_dataloader()``
    call, or the first access to :attr:`kept_indices` / :attr:`keep_count`, which calls the wrapped
    ``train_dataloader()``, so the wrapped module must be set up by then). It is deterministic given the scores and
    ``seed``, so every DDP rank computes the same subset (checked by a checksum across ranks); Lightning's
    ``DistributedSampler`` then splits it. ``state_dict()`` stores the kept indices, so a resumed fit trains on the
    same subset even if the score file changed meanwhile (with a warning).

    Raises:
        ValueError: ``keep_fraction`` outside ``(0, 1]``, an unknown ``selection``, a misplaced or missing
            ``offset``, NaN scores (or infinite ones with ``allow_infinite=False``); later, scores whose length is not
            the training set's, or (``ScoreFileError``) a score file from another dataset.

    Example::

        dm = PrunedDataModule(CIFAR10DataModule(batch_size=128), "scores/el2n_epoch020_seed0.scores", keep_fraction=0.5)
        trainer.fit(model, datamodule=dm)  # trains on the 25,000 highest-EL2N examples
    """

    def __init__(
        self,
        datamodule: LightningDataModule,
        scores: ScoreSource,
        keep_fraction: float,
        selection: str = "highest",
        *,
        offset: Optional[Union[int, float]] = None,
        class_balanced: bool = False,
        seed: int = 0,
        beta: float = 0.0,
        num_strata: int | None = None,
        allow_infinite: bool = True,
        check_fingerprint: bool = True,
        tie_break: str = "index",
    ) -> None:
        super().__init__(datamodule)
        keep_fraction = sel._scalar(keep_fraction)
        if isinstance(keep_fraction, bool) or not isinstance(keep_fraction, (int, float)):
            raise TypeError(f"`keep_fraction` must be a number in (0, 1], got {keep_fraction!r}.")
        offset = sel._scalar(offset)
        beta = sel._scalar(beta)
        num_strata = sel._scalar(num_strata)
        sel.keep_count(1, keep_fraction)  # raises on a value outside (0, 1]
        if selection not in sel.SELECTION_RULES:
            raise ValueError(
                f"Unknown selection {selection!r}: choose one of {', '.join(map(repr, sel.SELECTION_RULES))}."
            )
        if selection == "window" and offset is None:
            raise ValueError("selection='window' needs `offset`: the first kept rank (an int count or a fraction of N).")
        if selection != "window" and offset is not None:
            raise ValueError(
                f"`offset` only applies to selection='window' (got selection={selection!r}). To keep the top k but "
                "skip the m highest, use selection='window' with offset = N - m - k."
            )
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"`beta` must lie in [0, 1), got {beta!r}.")
        if num_strata is not None and (isinstance(num_strata, bool) or not isinstance(num_strata, int) or num_strata < 1):
            raise ValueError(f"`num_strata` must be a positive int or None (CCS's 50), got {num_strata!r}.")
        if beta and selection != "coverage":
            raise ValueError(f"`beta` only applies to selection='coverage' (got selection={selection!r}).")
        self.keep_fraction = float(keep_fraction)
        self.selection = selection
        self.offset = offset
        self.class_balanced = bool(class_balanced)
        self.seed = int(seed)
        self.beta = float(beta)
        self.num_strata = None if num_strata is None else int(num_strata)
        self.allow_infinite = bool(allow_infinite)
        self.check_fingerprint = bool(check_fingerprint)
        if tie_break not in ("index", "random"):
            raise ValueError(f"`tie_break` must be 'index' or 'random', got {tie_break!r}.")
        self.tie_break = tie_break
        self.score_source = _describe(scores)
        self._scores, self._fingerprint = self._load_scores(scores)
        self._kept: Tensor | None = None
        self._num_samples: int | None = None
        self._restored: dict[str, Any] | None = None
        self._verified_ranks = False

    def wrapper_hparams(self) -> dict[str, Any]:
        """``datadiet_pruning``: this module's settings (rule, keep fraction, scores, seed, ...), logged with the
        wrapped module's hyperparameters."""
        return {"datadiet_pruning": self.pruning_settings()}

    def pruning_settings(self) -> dict[str, Any]:
        """The settings that decide the subset, as plain values (logged with the hyperparameters)."""
        return {
            "scores": self.score_source,
            "keep_fraction": self.keep_fraction,
            "selection": self.selection,
            "offset": self.offset,
            "class_balanced": self.class_balanced,
            "seed": self.seed,
            "beta": self.beta,
            "num_strata": self.num_strata,
            "tie_break": self.tie_break,
        }

    # ----------------------------------------------------------------------------------------------- scores

    def _load_scores(self, scores: ScoreSource) -> tuple[Tensor | None, str | None]:
        if scores is None:
            if self.selection != "random":
                raise ValueError(f"`scores` is required for selection={self.selection!r} (only 'random' ignores them).")
            return None, None
        if isinstance(scores, Tensor):
            return sel.check_scores(scores, allow_infinite=self.allow_infinite), None
        if not isinstance(scores, (str, os.PathLike, list, tuple)) and not hasattr(scores, "label_fingerprint"):
            raise TypeError(
                "`scores` must be a Tensor[N], a score-file path, or a list of score-file paths (averaged), got "
                f"{type(scores).__name__}."
            )
        loaded: ScoreFile = scores_from(list(scores) if isinstance(scores, tuple) else scores)
        name = f"scores ({self.score_source})"
        return sel.check_scores(loaded.scores, allow_infinite=self.allow_infinite, name=name), loaded.label_fingerprint

    def _check_against(self, dataset: Dataset) -> Tensor | None:
        """Check the scores against the training set; return its labels when they are needed."""
        n = len(dataset)  # type: ignore[arg-type]
        name = type(self.datamodule).__name__
        if self._scores is not None and self._scores.numel() != n:
            raise ValueError(
                f"The scores ({self.score_source}) hold {self._scores.numel()} values but the training set of {name} "
                f"has {n} examples. They were computed on another dataset or split: recompute them on this "
                "datamodule's training set, or pass the score file that belongs to it."
            )
        need_fingerprint = self.check_fingerprint and self._fingerprint is not None
        if not (self.class_balanced or need_fingerprint):
            return None
        try:
            labels = dataset_targets(dataset)
        except (TypeError, ValueError, KeyError) as err:
            why = "class_balanced=True" if self.class_balanced else "checking the score file's label fingerprint"
            fix = "" if self.class_balanced else " or pass `check_fingerprint=False`"
            raise ValueError(
                f"{why} needs the labels of the training set of {name}, which could not be read ({err}). Expose "
                f"`dataset.targets`{fix}."
            ) from err
        if need_fingerprint:
            here = label_fingerprint(labels)
            if here != self._fingerprint:
                raise ScoreFileError(
                    f"The score file ({self.score_source}) was computed on another training set: its label "
                    f"fingerprint {self._fingerprint} differs from {here}, that of the {n} labels of {name}'s training "
                    "set. Recompute the scores on this datamodule, pass the matching score file, or pass "
                    "`check_fingerprint=False` if the labels were changed on purpose."
                )
        return labels

    def _compute(self, dataset: Dataset) -> Tensor:
        labels = self._check_against(dataset)
        n = len(dataset)  # type: ignore[arg-type]
        k = sel.keep_count(n, self.keep_fraction)
        scores = self._scores if self._scores is not None else n
        if self.selection == "random":
            return sel.random_subset(scores, k, seed=self.seed, labels=labels, class_balanced=self.class_balanced)
        kwargs = {"beta": self.beta, "num_strata": self.num_strata} if self.selection == "coverage" else {}
        return sel.select(
            scores,  # type: ignore[arg-type]
            k,
            self.selection,
            offset=self.offset,
            labels=labels,
            class_balanced=self.class_balanced,
            seed=self.seed,
            tie_break=self.tie_break,
            **kwargs,
        )

    def _ensure_selection(self, dataset: Dataset) -> Tensor:
        n = len(dataset)  # type: ignore[arg-type]
        if self._kept is not None and self._num_samples == n:
            return self._kept
        if self._restored is not None:
            restored = self._restored
            if restored["num_samples"] != n:
                raise ValueError(
                    f"The checkpoint's subset was selected from {restored['num_samples']} training examples but the "
                    f"training set now has {n}: resume with the same datamodule configuration."
                )
            kept = restored["kept_indices"]
            try:
                fresh = self._compute(dataset)
            except (ValueError, OSError) as err:
                warnings.warn(f"Resuming on the checkpoint's subset; the scores no longer give a selection ({err}).", stacklevel=3)
            else:
                if not torch.equal(fresh, kept):
                    warnings.warn(
                        f"The scores ({self.score_source}) now select a different subset than the one in the checkpoint "
                        f"({int((~torch.isin(fresh, kept)).sum())} of {kept.numel()} indices differ); resuming on the "
                        "checkpoint's subset so that the fit continues on the same data.",
                        stacklevel=3,
                    )
            self._restored = None
        else:
            kept = self._compute(dataset)
        self._kept, self._num_samples = kept, n
        self._report(dataset, kept)
        return kept

    def _report(self, dataset: Dataset, kept: Tensor) -> None:
        """Say what was kept: the rule, the count and fraction, and (when labels are cheap to read) per class."""
        n = len(dataset)  # type: ignore[arg-type]
        rule = self.selection + (f" (offset {self.offset})" if self.offset is not None else "")
        if self.class_balanced:
            rule += ", class-balanced"
        lines = [
            f"PrunedDataModule: kept {kept.numel()} of {n} training examples ({kept.numel() / max(n, 1):.1%}; "
            f"keep_fraction={self.keep_fraction}) by rule {rule}, scores {self.score_source}."
        ]
        labels = _fast_targets(dataset)
        if labels is not None and labels.numel() == n and n:
            classes, full = torch.unique(labels, return_counts=True)
            kept_counts = torch.bincount(torch.searchsorted(classes, labels[kept]), minlength=classes.numel())
            shown = ", ".join(
                f"{c}: {k}/{f}" for c, k, f in zip(classes.tolist()[:20], kept_counts.tolist()[:20], full.tolist()[:20])
            )
            more = f", ... ({classes.numel() - 20} more classes)" if classes.numel() > 20 else ""
            lines.append(f"  kept per class (class: kept/all): {shown}{more}")
        rank_zero_info("\n".join(lines))

    def _training_dataset(self) -> Dataset:
        try:
            loader = self.datamodule.train_dataloader()
        except Exception as err:
            raise RuntimeError(
                f"Could not get the training set from {type(self.datamodule).__name__}.train_dataloader() ({err!r}). "
                "The selection needs the training set: if the datamodule is not set up yet, call `prepare_data()` and "
                "`setup('fit')` first; if its training set is empty (torch refuses to shuffle 0 samples), there is "
                "nothing to prune."
            ) from err
        return single_loader(loader, "PrunedDataModule").dataset

    def _verify_across_ranks(self, kept: Tensor) -> None:
        """Under DDP, check that every rank selected the same subset (the rule is deterministic, so it should)."""
        trainer = self.trainer
        if self._verified_ranks or trainer is None or trainer.world_size <= 1:
            return
        # Collective: Lightning requests the training loader on every rank. The strategy's collectives are no-ops
        # in a process that has no process group (e.g. the main process of ddp_spawn): nothing differs then.
        mine = _digest(kept)
        reference = trainer.strategy.broadcast(mine, src=0)
        if trainer.strategy.reduce_boolean_decision(mine != reference, all=False):
            raise RuntimeError(
                "The ranks selected different training subsets: the scores or the training set differ between "
                "processes. Make every rank read the same score file and build the same training set."
            )
        self._verified_ranks = True

    # -------------------------------------------------------------------------------------------- public API

    def train_dataloader(self) -> DataLoader:
        """The wrapped module's training loader, rebuilt over exactly the kept examples (see :func:`subset_dataloader`)."""
        loader = self.wrapped_train_loader()
        kept = self._ensure_selection(loader.dataset)
        self._verify_across_ranks(kept)
        return subset_dataloader(loader, kept)

    def _selected(self) -> Tensor:
        if self._kept is None:
            self._ensure_selection(self._training_dataset())
        assert self._kept is not None
        return self._kept

    @property
    def kept_indices(self) -> Tensor:
        """Sorted ``LongTensor`` of the kept indices into the wrapped module's training set (computed on first use)."""
        return self._selected().clone()

    @property
    def keep_count(self) -> int:
        """Number of kept examples."""
        return int(self._selected().numel())

    @property
    def num_samples(self) -> int:
        """Size of the full (unpruned) training set."""
        self._selected()
        assert self._num_samples is not None
        return self._num_samples

    def state_dict(self) -> dict[str, Any]:
        """The kept indices (if selected yet), the pruning settings and the wrapped module's state."""
        state: dict[str, Any] = {
            "keep_fraction": self.keep_fraction,
            "selection": self.selection,
            "offset": self.offset,
            "class_balanced": self.class_balanced,
            "seed": self.seed,
            "beta": self.beta,
            "num_strata": self.num_strata,
            "tie_break": self.tie_break,
            "score_source": self.score_source,
        }
        kept = self._kept if self._kept is not None else (self._restored or {}).get("kept_indices")
        if kept is not None:
            state["kept_indices"] = kept.clone()
            state["num_samples"] = self._num_samples if self._kept is not None else self._restored["num_samples"]  # type: ignore[index]
        wrapped = self.datamodule.state_dict()
        if wrapped:
            state["datamodule"] = wrapped
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the kept indices: the next ``train_dataloader()`` uses them (warning if the scores now differ)."""
        if "datamodule" in state_dict:
            self.datamodule.load_state_dict(state_dict["datamodule"])
        if "kept_indices" not in state_dict:
            return
        changed = [
            key
            for key in ("keep_fraction", "selection", "offset", "class_balanced", "seed", "beta", "num_strata")
            if key in state_dict and state_dict[key] != getattr(self, key)
        ]
        if changed:
            warnings.warn(
                f"The checkpoint's subset was selected with other settings ({', '.join(changed)}); resuming on the "
                "checkpoint's subset. Start a new fit (without `ckpt_path`) to train on the new selection.",
                stacklevel=2,
            )
        kept = torch.as_tensor(state_dict["kept_indices"], dtype=torch.long)
        self._restored = {"kept_indices": kept, "num_samples": int(state_dict["num_samples"])}
        self._kept, self._num_samples = None, None

    def __repr__(self) -> str:
        extra = f", offset={self.offset!r}" if self.offset is not None else ""
        return (
            f"{type(self).__name__}({type(self.datamodule).__name__}, scores={self.score_source}, "
            f"keep_fraction={self.keep_fraction}, selection={self.selection!r}{extra}, "
            f"class_balanced={self.class_balanced}, seed={self.seed})"
        )


def _describe(scores: Any) -> str:
    if scores is None:
        return "none"
    if isinstance(scores, Tensor):
        return f"tensor of {scores.numel()}"
    if isinstance(scores, (str, os.PathLike)):
        return os.fspath(scores)
    if isinstance(scores, (list, tuple)):
        return f"mean of {len(scores)} files: " + ", ".join(os.fspath(s) if isinstance(s, (str, os.PathLike)) else "?" for s in scores)
    path = getattr(scores, "path", None)
    return os.fspath(path) if path is not None else type(scores).__name__
