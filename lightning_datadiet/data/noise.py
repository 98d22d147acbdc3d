"""Label noise: corrupt a fraction of the training labels (the analyses of how well a score finds them are in
:mod:`lightning_datadiet.analysis.noise`).

Two ways of corrupting labels are in use (see ``docs/analysis_noise.md``):

* ``"uniform"`` (Zhang et al. 2017): each drawn example gets a label drawn uniformly over all ``num_classes``
  classes, so about ``1 / num_classes`` of the drawn examples keep their label by chance.
* ``"permute"`` (the official data_diet code): the labels of the drawn examples are permuted among themselves,
  so the multiset of labels is unchanged and some drawn examples keep their label (a fixed point of the
  permutation, or a swap between two examples of the same class).
* ``"uniform_other"``: a label drawn uniformly over the ``num_classes - 1`` *other* classes; every drawn
  example changes label.

In all modes exactly ``fraction x N`` indices (rounded half up, :func:`~lightning_datadiet._utils.fraction_count`)
are drawn without replacement with a seeded ``torch.Generator``. ``corrupted_mask`` marks the examples whose label **actually changed**
(``new_targets != targets``); the drawn set is available from :func:`label_noise` as ``LabelNoise.drawn``.
"""

from __future__ import annotations

import copy
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lightning_datadiet._utils import fraction_count
from lightning_datadiet.data.loaders import rebuild_loader
from lightning_datadiet.data.targets import dataset_targets
from lightning_datadiet.data.wrapper import DataModuleWrapper

__all__ = ["LabelNoise", "label_noise", "corrupt_labels", "NoisyLabelDataset", "NoisyLabelDataModule"]

NoiseMode = Literal["uniform", "permute", "uniform_other"]
_MODES = ("uniform", "permute", "uniform_other")
# The dict keys tried for the label of a dict item, as in ``lightning_datadiet.data.targets``.
_TARGET_KEYS = ("y", "target", "targets", "label", "labels", "class", "classes")


@dataclass(frozen=True)
class LabelNoise:
    """The outcome of :func:`label_noise`.

    Attributes:
        targets: ``LongTensor[N]``, the noisy labels.
        original_targets: ``LongTensor[N]``, the labels before corruption.
        drawn: ``BoolTensor[N]``, the ``fraction x N`` examples (rounded half up) drawn for corruption.
        corrupted_mask: ``BoolTensor[N]``, the examples whose label changed (``targets != original_targets``);
            a subset of ``drawn``.
        fraction: the requested fraction.
        mode: ``"uniform"``, ``"permute"`` or ``"uniform_other"``.
        seed: the generator seed.
    """

    targets: Tensor
    original_targets: Tensor
    drawn: Tensor
    corrupted_mask: Tensor
    fraction: float
    mode: str
    seed: int

    @property
    def num_drawn(self) -> int:
        """How many examples were drawn: ``fraction x N``, rounded half up."""
        return int(self.drawn.sum())

    @property
    def num_corrupted(self) -> int:
        """How many labels actually changed (at most :attr:`num_drawn`)."""
        return int(self.corrupted_mask.sum())


def _generator_seed(seed: int) -> int:
    # Salted, so that the draw never coincides with another rule seeded with the same number (a random subset
    # from ``torch.randperm`` with seed 0 would otherwise be exactly the first corrupted indices).
    return zlib.crc32(f"lightning_datadiet.label_noise:{seed}".encode())


def label_noise(
    targets: Tensor | Sequence[int],
    fraction: float,
    mode: NoiseMode = "uniform",
    seed: int = 0,
    *,
    num_classes: int | None = None,
) -> LabelNoise:
    """Corrupt a fraction of ``targets`` and return everything about it; see :func:`corrupt_labels`.

    Args:
        targets: ``[N]`` integer class ids.
        fraction: in ``[0, 1]``; exactly ``fraction x N`` indices are drawn (rounded half up on the decimal
            written, :func:`~lightning_datadiet._utils.fraction_count`).
        mode: ``"uniform"``, ``"permute"`` or ``"uniform_other"`` (see the module docstring).
        seed: seeds the ``torch.Generator`` that draws indices and labels (through a salted hash, so that the
            draw is unrelated to other draws with the same seed, e.g. a random subset); the result depends only
            on ``(targets, fraction, mode, seed, num_classes)``.
        num_classes: number of classes for the uniform modes; default ``max(targets) + 1``.

    Returns:
        A :class:`LabelNoise`.

    Raises:
        ValueError: for a fraction outside ``[0, 1]``, an unknown mode, non-1-D targets, labels outside
            ``[0, num_classes)``, or ``num_classes < 2`` in ``"uniform_other"`` mode.
    """
    old = torch.as_tensor(targets)
    if old.ndim != 1 or old.is_floating_point() or old.is_complex() or old.dtype == torch.bool:
        raise ValueError(
            f"`targets` must be a 1-D tensor of integer class ids, got dtype {old.dtype}, shape {tuple(old.shape)}."
        )
    old = old.detach().to(device="cpu", dtype=torch.long)
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"`fraction` must be in [0, 1], got {fraction}.")
    if mode not in _MODES:
        raise ValueError(f"`mode` must be one of {_MODES}, got {mode!r}.")
    n = old.numel()
    if num_classes is None:
        num_classes = int(old.max()) + 1 if n else 0
    if n and (int(old.min()) < 0 or int(old.max()) >= num_classes):
        raise ValueError(
            f"Labels must lie in [0, num_classes={num_classes}); got range [{int(old.min())}, {int(old.max())}]."
        )
    if mode == "uniform_other" and num_classes < 2 and n:
        raise ValueError("`mode='uniform_other'` needs at least 2 classes.")

    generator = torch.Generator().manual_seed(_generator_seed(int(seed)))
    k = fraction_count(n, float(fraction))  # round half up on the decimal written: 0.5 x 5 -> 3
    idx = torch.randperm(n, generator=generator)[:k]  # [k]
    new = old.clone()
    if k == 0:
        pass
    elif mode == "uniform":
        new[idx] = torch.randint(num_classes, (k,), generator=generator)
    elif mode == "uniform_other":
        shift = torch.randint(1, num_classes, (k,), generator=generator)  # never 0: the label changes
        new[idx] = (old[idx] + shift) % num_classes
    else:  # permute
        new[idx] = old[idx[torch.randperm(k, generator=generator)]]
    drawn = torch.zeros(n, dtype=torch.bool)
    drawn[idx] = True
    return LabelNoise(
        targets=new,
        original_targets=old,
        drawn=drawn,
        corrupted_mask=new != old,
        fraction=float(fraction),
        mode=mode,
        seed=int(seed),
    )


def corrupt_labels(
    targets: Tensor | Sequence[int],
    fraction: float,
    mode: NoiseMode = "uniform",
    seed: int = 0,
    *,
    num_classes: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Replace the labels of a random ``fraction`` of the examples.

    Exactly ``fraction x N`` indices are drawn without replacement (rounded half up). In ``"uniform"``
    mode each drawn example gets a uniformly random label over ``num_classes`` classes, so it **keeps its label
    with probability 1 / num_classes**; in ``"permute"`` mode the drawn labels are permuted among themselves
    (some keep their label); in ``"uniform_other"`` mode every drawn label changes. The same arguments always
    give the same result; different seeds give different draws.

    Args:
        targets: ``[N]`` integer class ids.
        fraction: fraction of examples to draw, in ``[0, 1]``.
        mode: ``"uniform"`` (Zhang et al.), ``"permute"`` (official data_diet code) or ``"uniform_other"``.
        seed: generator seed.
        num_classes: number of classes for the uniform modes; default ``max(targets) + 1``.

    Returns:
        ``(new_targets, corrupted_mask)``: ``LongTensor[N]`` and ``BoolTensor[N]``, where ``corrupted_mask`` is
        ``new_targets != targets`` (the labels that actually changed; the drawn set, which also holds the
        drawn examples that kept their label, is ``label_noise(...).drawn``).

    Example:
        >>> new, mask = corrupt_labels(torch.arange(10) % 3, 0.5, mode="uniform_other", seed=0)
        >>> int(mask.sum())
        5
    """
    noise = label_noise(targets, fraction, mode, seed, num_classes=num_classes)
    return noise.targets, noise.corrupted_mask


def _replace_label(item: Any, label: int, target_key: int | str | None) -> Any:
    def convert(old: Any) -> Any:
        if isinstance(old, Tensor):
            return torch.tensor(label, dtype=old.dtype, device=old.device).reshape(old.shape)
        return type(old)(label) if isinstance(old, int) else label

    if isinstance(item, Mapping):
        key = target_key
        if key is None:
            key = next((k for k in _TARGET_KEYS if k in item), None)
            if key is None:
                raise KeyError(
                    f"No label key among {_TARGET_KEYS} in a dict item with keys {sorted(map(str, item))}; pass `target_key=`."
                )
        out = dict(item)
        out[key] = convert(item[key])
        return type(item)(out) if type(item) is not dict else out
    if isinstance(item, (tuple, list)):
        pos = 1 if target_key is None else target_key
        if not isinstance(pos, int) or len(item) <= pos:
            raise TypeError(
                f"Cannot find the label at position {pos!r} of a {type(item).__name__} of length {len(item)}."
            )
        out = list(item)
        out[pos] = convert(item[pos])
        return tuple(out) if isinstance(item, tuple) else out
    raise TypeError(
        f"Unsupported item type {type(item).__name__}: expected a tuple/list (x, y, ...) or a dict."
    )


class NoisyLabelDataset(Dataset):
    """A map-style dataset whose labels are corrupted by :func:`label_noise`.

    Items keep their form (a tuple ``(x, y, *extra)`` or a dict); only the label is replaced, with the type of
    the original label (``int`` or a tensor of the same dtype). The labels are read once from ``dataset`` with
    ``lightning_datadiet.data.targets.dataset_targets`` (cheap when the dataset exposes ``.targets``).

    Args:
        dataset: a map-style dataset.
        fraction: fraction of examples drawn for corruption.
        mode: ``"uniform"``, ``"permute"`` or ``"uniform_other"``.
        seed: generator seed.
        num_classes: number of classes for the uniform modes; default ``max(label) + 1``.
        target_key: position (tuple items) or key (dict items) of the label; default position 1 or a common
            key name (``y``, ``target``, ``label``...).

    Attributes:
        targets: ``LongTensor[N]``, the noisy labels.
        original_targets: ``LongTensor[N]``, the clean labels.
        corrupted_mask: ``BoolTensor[N]``, labels that changed.
        noise: the full :class:`LabelNoise` (with ``drawn``).
    """

    def __init__(
        self,
        dataset: Dataset,
        fraction: float,
        mode: NoiseMode = "uniform",
        seed: int = 0,
        *,
        num_classes: int | None = None,
        target_key: int | str | None = None,
    ) -> None:
        if isinstance(dataset, IterableDataset):
            raise TypeError("NoisyLabelDataset needs a map-style dataset, got an IterableDataset.")
        self.dataset = dataset
        self.target_key = target_key
        self.noise = label_noise(
            dataset_targets(dataset, target_key=target_key), fraction, mode, seed, num_classes=num_classes
        )
        self.targets = self.noise.targets
        self.original_targets = self.noise.original_targets
        self.corrupted_mask = self.noise.corrupted_mask

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Any:
        index = int(index)
        return _replace_label(self.dataset[index], int(self.targets[index]), self.target_key)


class NoisyLabelDataModule(DataModuleWrapper):
    """Wrap a LightningDataModule so that its **training** labels are corrupted by :func:`label_noise`.

    Only the dataset of ``train_dataloader()`` gets noisy labels; the loader is rebuilt with the same settings
    (batch size, shuffle for a ``RandomSampler``, a custom sampler or batch sampler reused as is, ``drop_last``,
    workers, collate function, ``pin_memory``, ``persistent_workers``...). Everything else is the wrapped module's
    (see :class:`~lightning_datadiet.data.wrapper.DataModuleWrapper`); the logged hyperparameters add
    ``datadiet_label_noise``. The noise is drawn once per train dataset and reused when ``train_dataloader()`` is
    called again, so it is the same in every epoch.

    Args:
        datamodule: the module to wrap.
        fraction: fraction of training examples drawn for corruption.
        mode: ``"uniform"``, ``"permute"`` or ``"uniform_other"``.
        seed: generator seed.
        num_classes: number of classes for the uniform modes; default ``max(label) + 1``.
        target_key: position or dict key of the label in a dataset item.

    Example:
        >>> # trainer.fit(model, datamodule=NoisyLabelDataModule(CIFAR10DataModule(), 0.2, mode="permute"))
    """

    def __init__(
        self,
        datamodule: LightningDataModule,
        fraction: float,
        mode: NoiseMode = "uniform",
        seed: int = 0,
        *,
        num_classes: int | None = None,
        target_key: int | str | None = None,
    ) -> None:
        super().__init__(datamodule)
        if not 0.0 <= float(fraction) <= 1.0:
            raise ValueError(f"`fraction` must be in [0, 1], got {fraction}.")
        if mode not in _MODES:
            raise ValueError(f"`mode` must be one of {_MODES}, got {mode!r}.")
        self.fraction = float(fraction)
        self.mode = mode
        self.seed = int(seed)
        self.num_classes = num_classes
        self.target_key = target_key
        self.noisy_dataset: NoisyLabelDataset | None = None

    def wrapper_hparams(self) -> dict[str, Any]:
        """``datadiet_label_noise``: the corruption settings, logged with the wrapped module's hyperparameters."""
        settings = {"fraction": self.fraction, "mode": self.mode, "seed": self.seed, "num_classes": self.num_classes}
        return {"datadiet_label_noise": settings}

    def train_dataloader(self) -> DataLoader:
        loader = self.wrapped_train_loader()
        if self.noisy_dataset is None or self.noisy_dataset.dataset is not loader.dataset:
            self.noisy_dataset = NoisyLabelDataset(
                loader.dataset,
                self.fraction,
                self.mode,
                self.seed,
                num_classes=self.num_classes,
                target_key=self.target_key,
            )
        return rebuild_loader(loader, self.noisy_dataset, same_indices=True, owner="NoisyLabelDataModule")

    def score_dataset(self) -> Dataset:
        """What the score callbacks read: the wrapped module's ``score_dataset()`` (its training set without
        augmentation) with the same noisy labels as the training loader, or the noisy training set itself. (Passing
        the wrapped module's through would score clean labels while training sees noisy ones.)"""
        self.train_dataloader()  # the noise is drawn with the train dataset
        noisy = self._noise()
        hook = getattr(self.datamodule, "score_dataset", None)
        if not callable(hook):
            return noisy
        items = hook()
        if not torch.equal(dataset_targets(items, target_key=self.target_key), noisy.original_targets):
            raise ValueError(
                f"{type(self.datamodule).__name__}.score_dataset() holds other labels than its training set: it must "
                "be the training set itself without augmentation (same items, labels and order)."
            )
        view = copy.copy(noisy)  # the noise already drawn, over the un-augmented items
        view.dataset = items
        return view

    def _noise(self) -> NoisyLabelDataset:
        if self.noisy_dataset is None:
            raise RuntimeError(
                "The noise is drawn with the train dataset: call setup('fit') and train_dataloader() first."
            )
        return self.noisy_dataset

    @property
    def corrupted_mask(self) -> Tensor:
        """``BoolTensor[N]``: training examples whose label changed (after ``train_dataloader()``)."""
        return self._noise().corrupted_mask

    @property
    def targets(self) -> Tensor:
        """``LongTensor[N]``: the noisy training labels (after ``train_dataloader()``)."""
        return self._noise().targets

    @property
    def original_targets(self) -> Tensor:
        """``LongTensor[N]``: the clean training labels (after ``train_dataloader()``)."""
        return self._noise().original_targets
