"""``ValidationSplitDataModule``: carve a class-stratified validation split out of a DataModule's training set.

The ``datadiet`` study chooses the selection rule on validation data (``select_on_val``). A DataModule without a
validation loader gets one this way: ``val_size`` training examples, drawn class-stratified with a seeded
generator, become the validation set (read from ``score_dataset()`` when the DataModule has it, so without
augmentation), and the training loader is rebuilt over the rest with its own settings. Training index ``i`` of
the wrapper is ``train_indices[i]`` of the wrapped training set (scores and pruning refer to the wrapper's).
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_datadiet._utils import fraction_count
from lightning_datadiet.data.loaders import loader_batch_size, loader_settings, rebuild_loader
from lightning_datadiet.data.targets import dataset_targets
from lightning_datadiet.data.wrapper import DataModuleWrapper

__all__ = ["ValidationSplitDataModule", "stratified_split"]


def stratified_split(targets: Tensor, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """``(rest, held_out)`` index tensors (sorted): ``size`` items held out, in every class in proportion to its
    size (largest remainders; every class with at least 2 items keeps one for training), drawn with a seeded
    generator. Deterministic across machines.

    Example:
        >>> rest, held = stratified_split(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 4, seed=0)
        >>> held.numel(), sorted(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])[held].tolist())
        (4, [0, 0, 1, 1])
    """
    n = int(targets.numel())
    if not 0 <= size < n:
        raise ValueError(f"The validation split needs 0 <= val_size < {n} (the training set's size), got {size}.")
    classes, counts = torch.unique(targets, return_counts=True)
    exact = counts.double() * size / n
    quota = exact.floor().long()
    left = size - int(quota.sum())
    if left > 0:  # largest remainders, ties to the larger class then the smaller class id
        order = sorted(range(len(classes)), key=lambda c: (-(exact[c] - quota[c]).item(), -int(counts[c]), c))
        for c in order[:left]:
            quota[c] += 1
    quota = torch.minimum(quota, (counts - 1).clamp(min=0))  # leave each class one training example
    generator = torch.Generator().manual_seed(int(seed))
    held = []
    for c, q in zip(classes.tolist(), quota.tolist()):
        members = torch.nonzero(targets == c).flatten()
        held.append(members[torch.randperm(members.numel(), generator=generator)[:q]])
    held_t = torch.cat(held).sort().values if held else torch.empty(0, dtype=torch.long)
    mask = torch.ones(n, dtype=torch.bool)
    mask[held_t] = False
    return torch.nonzero(mask).flatten(), held_t


class ValidationSplitDataModule(DataModuleWrapper):
    """Wrap a LightningDataModule: ``val_size`` training examples (class-stratified, seeded) become its
    validation set, the training loader serves the rest.

    Args:
        datamodule: the module to wrap (its ``train_dataloader()`` returns one DataLoader over a map-style dataset).
        val_size: examples held out (an int), or a fraction of the training set in (0, 1)
            (:func:`~lightning_datadiet._utils.fraction_count`).
        seed: seed of the split.

    Everything else (``prepare_data``, ``setup``, the test/predict loaders, batch-transfer hooks, any attribute) is
    the wrapped module's (:class:`~lightning_datadiet.data.wrapper.DataModuleWrapper`). ``score_dataset()`` is the
    wrapped module's (or its training set) restricted to the kept training indices, so scores refer to the
    wrapper's training set.

    Example:
        >>> # trainer.fit(model, datamodule=ValidationSplitDataModule(MyData(), val_size=0.1, seed=0))
    """

    def __init__(self, datamodule: LightningDataModule, val_size: int | float, seed: int = 0) -> None:
        super().__init__(datamodule)
        if isinstance(val_size, bool) or not isinstance(val_size, (int, float)) or val_size <= 0:
            raise ValueError(f"`val_size` must be a positive count or a fraction in (0, 1), got {val_size!r}.")
        if isinstance(val_size, float) and not val_size < 1:
            raise ValueError(f"A fractional `val_size` must be in (0, 1), got {val_size}.")
        self.val_size = val_size
        self.seed = int(seed)
        self._split: tuple[Tensor, Tensor] | None = None
        self._source: Any = None

    def wrapper_hparams(self) -> dict[str, Any]:
        """``datadiet_val_split``: the split's settings, logged with the wrapped module's hyperparameters."""
        return {"datadiet_val_split": {"val_size": self.val_size, "seed": self.seed}}

    def _scoring_view(self, train: Dataset) -> Dataset:
        hook = getattr(self.datamodule, "score_dataset", None)
        view = hook() if callable(hook) else train
        if len(view) != len(train):  # type: ignore[arg-type]
            raise ValueError(
                f"{type(self.datamodule).__name__}.score_dataset() has {len(view)} items but the training set has "  # type: ignore[arg-type]
                f"{len(train)}: it must be the training set itself without augmentation (same items, same order)."  # type: ignore[arg-type]
            )
        return view

    def split(self) -> tuple[Tensor, Tensor]:
        """``(train_indices, val_indices)`` into the wrapped training set (computed once per training set)."""
        return self._split_of(self.wrapped_train_loader().dataset)

    def _split_of(self, train: Dataset) -> tuple[Tensor, Tensor]:
        if self._split is None or self._source is not train:
            n = len(train)  # type: ignore[arg-type]
            size = self.val_size if isinstance(self.val_size, int) else fraction_count(n, self.val_size)
            targets = dataset_targets(self._scoring_view(train))
            self._split = stratified_split(targets, size, self.seed)
            self._source = train
        return self._split

    @property
    def train_indices(self) -> Tensor:
        return self.split()[0]

    @property
    def val_indices(self) -> Tensor:
        return self.split()[1]

    def train_dataloader(self) -> DataLoader:
        loader = self.wrapped_train_loader()
        kept = self._split_of(loader.dataset)[0]
        return rebuild_loader(loader, Subset(loader.dataset, kept.tolist()), same_indices=False,
                              owner="ValidationSplitDataModule")  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        loader = self.wrapped_train_loader()
        view = Subset(self._scoring_view(loader.dataset), self._split_of(loader.dataset)[1].tolist())
        settings = loader_settings(loader)
        settings.update(persistent_workers=False, generator=None)
        if settings["num_workers"] == 0:
            settings.pop("prefetch_factor", None)
        return DataLoader(view, batch_size=loader_batch_size(loader) or 1, shuffle=False, **settings)

    def score_dataset(self) -> Dataset:
        """The wrapped module's scoring view (``score_dataset()`` or its training set) at the kept indices."""
        train = self.wrapped_train_loader().dataset
        return Subset(self._scoring_view(train), self._split_of(train)[0].tolist())
