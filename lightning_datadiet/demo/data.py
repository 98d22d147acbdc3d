"""Ready-made DataModules: scikit-learn's handwritten digits (no download) and CIFAR-10 from local files.

Both expose what the scoring callbacks and the ``datadiet`` pipeline need:

- ``num_classes``;
- datasets with a ``.targets`` ``LongTensor`` (labels read without touching any item);
- ``score_dataset()``: the training split **without augmentation**, in the same index order as the training
  set (EL2N and GraNd score it in eval mode);
- optional label noise on the training split only, with the clean labels and the corruption mask (labels
  that actually changed) kept as ``train_clean_targets`` / ``train_corrupted_mask``.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_datadiet._utils import atomic_write_bytes
from lightning_datadiet.data.noise import label_noise as _apply_label_noise

__all__ = [
    "LabeledTensorDataset",
    "DigitsDataModule",
    "CIFAR10DataModule",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "load_cifar10_arrays",
    "data_fingerprint",
    "random_crop_flip",
]

CIFAR10_MEAN = (0.4913, 0.4821, 0.4465)
CIFAR10_STD = (0.2452, 0.2428, 0.2606)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_NOISE_MODES = ("uniform", "permute", "uniform_other")


class LabeledTensorDataset(Dataset):
    """Inputs and labels held as tensors, with an optional per-item transform of the input.

    Args:
        inputs: ``[N, ...]`` tensor (any dtype; ``transform`` turns an item into the model's input).
        targets: ``LongTensor[N]`` class ids, exposed as ``.targets``.
        transform: callable applied to ``inputs[i]`` in ``__getitem__``; ``None`` returns the item as stored.
    """

    def __init__(
        self, inputs: Tensor, targets: Tensor, transform: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"inputs ({len(inputs)}) and targets ({len(targets)}) differ in length.")
        self.inputs = inputs
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        x = self.inputs[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[index]


def _check_noise(label_noise: float, noise_mode: str) -> None:
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"`label_noise` must be a fraction in [0, 1], got {label_noise}.")
    if noise_mode not in _NOISE_MODES:
        raise ValueError(f"`noise_mode` must be one of {_NOISE_MODES}, got {noise_mode!r}.")


def _stratified_split(targets: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(rest, held_out)``, ``held_out`` of ``size`` items drawn class-stratified, both sorted."""
    idx = np.arange(len(targets))
    if size <= 0:
        return idx, idx[:0]
    from sklearn.model_selection import train_test_split

    rest, held = train_test_split(idx, test_size=size, stratify=targets, random_state=seed)
    return np.sort(rest), np.sort(held)


class _NoisyTrainMixin:
    """Applies label noise to the training split and keeps the clean labels around."""

    label_noise: float
    noise_mode: str
    noise_seed: int
    num_classes: int

    def _noisy(self, targets: Tensor) -> Tensor:
        self.train_clean_targets = targets.clone()
        noise = _apply_label_noise(
            targets, self.label_noise, self.noise_mode, self.noise_seed, num_classes=self.num_classes
        )
        self.train_corrupted_mask = noise.corrupted_mask  # labels that actually changed
        self.train_noise_drawn = noise.drawn  # the round(f * N) examples drawn for corruption
        return noise.targets


class _SplitsDataModule(_NoisyTrainMixin, LightningDataModule):
    """The loaders of a DataModule holding ``train_dataset``, ``val_dataset`` (or ``None``) and ``test_dataset``;
    subclasses define ``setup()`` and ``_loader(dataset, shuffle)``."""

    train_dataset: Dataset | None
    val_dataset: Dataset | None
    test_dataset: Dataset | None

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:  # pragma: no cover - defined by subclasses
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_dataset, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        return self._loader(self.val_dataset, shuffle=False) if self.val_dataset is not None else []

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.test_dataset, shuffle=False)


class DigitsDataModule(_SplitsDataModule):
    """scikit-learn's bundled handwritten digits (1797 grey 8x8 images, 10 classes; no download).

    The data is split once, class-stratified and deterministically by ``split_seed``: ``test_size`` items for
    test, then ``val_size`` for validation, the rest (1000 with the defaults) for training. Pixels are scaled
    from 0..16 to [0, 1]; items are ``float32 [1, 8, 8]``. No augmentation, so ``score_dataset()`` is the
    training set itself.

    Args:
        batch_size: mini-batch size of every loader.
        num_workers: DataLoader workers (0 is fastest for this tiny set).
        split_seed: seed of the train/val/test split.
        val_size: number of validation items (0 for none: the validation loop is then skipped).
        test_size: number of test items.
        label_noise: fraction of **training** labels to corrupt (0 = clean).
        noise_mode: ``"uniform"`` (new uniform random labels; some keep theirs by chance), ``"permute"``
            (the drawn labels are permuted among themselves, as in the official code) or ``"uniform_other"``
            (a uniformly drawn *different* label); see :func:`lightning_datadiet.analysis.label_noise`.
        noise_seed: seed of the corruption.

    Example:
        >>> dm = DigitsDataModule(label_noise=0.2)
        >>> dm.setup()
        >>> len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)
        (1000, 300, 497)
        >>> int(dm.train_noise_drawn.sum())
        200
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        split_seed: int = 0,
        val_size: int = 300,
        test_size: int = 497,
        label_noise: float = 0.0,
        noise_mode: str = "uniform",
        noise_seed: int = 0,
    ) -> None:
        super().__init__()
        _check_noise(label_noise, noise_mode)
        if val_size < 0 or test_size < 1 or val_size + test_size >= 1797 - 10:
            raise ValueError(f"`val_size` ({val_size}) and `test_size` ({test_size}) leave no training data.")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.split_seed = split_seed
        self.val_size = val_size
        self.test_size = test_size
        self.label_noise = label_noise
        self.noise_mode = noise_mode
        self.noise_seed = noise_seed
        self.num_classes = 10
        self.train_dataset: LabeledTensorDataset | None = None
        self.val_dataset: LabeledTensorDataset | None = None
        self.test_dataset: LabeledTensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Load and split the data (idempotent)."""
        if self.train_dataset is not None:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).div_(16.0).unsqueeze(1)  # [N, 1, 8, 8]
        y = np.asarray(digits.target, dtype=np.int64)
        rest, test = _stratified_split(y, self.test_size, self.split_seed)
        train_r, val_r = _stratified_split(y[rest], self.val_size, self.split_seed + 1)
        train, val = rest[train_r], rest[val_r]
        y_t = torch.from_numpy(y)
        self.train_indices = torch.from_numpy(train)  # positions in load_digits()' order
        self.train_dataset = LabeledTensorDataset(x[train], self._noisy(y_t[train]))
        self.val_dataset = LabeledTensorDataset(x[val], y_t[val]) if len(val) else None
        self.test_dataset = LabeledTensorDataset(x[test], y_t[test])

    def content_fingerprint(self) -> dict:
        """What the data is (every image and label; see :func:`data_fingerprint`), for the study's run keys."""
        return data_fingerprint("digits")

    def score_dataset(self) -> Dataset:
        """The training set without augmentation, in training-index order (what the scoring callbacks use)."""
        self.setup()
        return self.train_dataset

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers)


# --------------------------------------------------------------------------------------------------- CIFAR-10


def random_crop_flip(x: Tensor, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Standard CIFAR augmentation on one ``[C, H, W]`` tensor: zero-pad, random crop back, random h-flip."""
    c, h, w = x.shape
    padded = torch.zeros((c, h + 2 * padding, w + 2 * padding), dtype=x.dtype)
    padded[:, padding : padding + h, padding : padding + w] = x
    i, j, flip = torch.randint(0, 2 * padding + 1, (3,), generator=generator).tolist()
    out = padded[:, i : i + h, j : j + w]
    if flip % 2:
        out = out.flip(-1)
    return out


class _Normalize:
    """uint8 ``[3, H, W]`` -> normalised float32, optionally after random crop + flip (picklable for workers)."""

    def __init__(self, augment: bool) -> None:
        self.augment = augment
        self.mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR10_STD).view(3, 1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        if self.augment:
            x = random_crop_flip(x)
        return (x.float().div_(255.0) - self.mean) / self.std


def _default_cache_dir() -> Path:
    return Path(os.environ.get("LIGHTNING_DATADIET_CACHE", Path.home() / ".cache" / "lightning_datadiet"))


def _missing_data(data_dir: Path, why: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"CIFAR-10 data not found at {str(data_dir)!r}: {why}. Pass --data-dir pointing at cifar10-jpeg.zip or an "
        "extracted folder of it (train/<class>/*.jpg, test/<class>/*.jpg), or at torchvision's CIFAR10 root "
        "(the folder holding cifar-10-batches-py)."
    )


def _detect_layout(data_dir: Path) -> tuple[str, Path]:
    """``("zip" | "folder" | "torchvision", path)`` for a data location, or a clear error."""
    if not data_dir.exists():
        raise _missing_data(data_dir, "the path does not exist")
    if data_dir.is_file():
        if zipfile.is_zipfile(data_dir):
            return "zip", data_dir
        raise _missing_data(data_dir, "the file is not a zip archive")
    if (data_dir / "train").is_dir() and (data_dir / "test").is_dir():
        return "folder", data_dir
    if (data_dir / "cifar-10-batches-py").is_dir():
        return "torchvision", data_dir
    if data_dir.name == "cifar-10-batches-py":
        return "torchvision", data_dir.parent
    if (data_dir / "cifar10-jpeg.zip").is_file():
        return "zip", data_dir / "cifar10-jpeg.zip"
    raise _missing_data(
        data_dir, "it holds neither train/ and test/ image folders, cifar-10-batches-py nor a zip"
    )


def _source_signature(kind: str, path: Path) -> str:
    """What identifies a data source's current content cheaply: for a zip its path, size and modification time;
    for a folder (or torchvision's batches) every file's relative path, size and modification time, so replacing
    images in place is noticed."""
    if kind == "zip":
        stat = path.stat()
        return f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}"
    root = path / "cifar-10-batches-py" if kind == "torchvision" else path
    digest = hashlib.sha256(str(root.resolve()).encode())
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"\0{file.relative_to(root).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return f"{path.resolve()}|listing:{digest.hexdigest()}"


_FINGERPRINTS: dict[tuple[str, str], dict] = {}


def data_fingerprint(
    dataset: str, data_dir: str | Path | None = None, cache_dir: str | Path | None = None
) -> dict:
    """What the data of ``dataset`` *is*: a content fingerprint of all training and test images and labels, with
    the class names and split sizes (the ``datadiet`` run keys include it, so other data never reuses results).

    ``digits`` hashes scikit-learn's bundled arrays; ``cifar10`` (any ``train/<class>/`` + ``test/<class>/``
    image folder, zip or torchvision root) hashes the whole decoded uint8 arrays of both splits (see
    :func:`lightning_datadiet.data.fingerprint.array_fingerprint`). The result is memoised per source while its
    files are unchanged (path, size and modification time of every file).

    Returns:
        ``{"content": "sha256:...", "classes": [...], "num_classes": K, "train_items": N, "test_items": M}``.
    """
    from lightning_datadiet.data.fingerprint import array_fingerprint

    if dataset == "digits":
        from sklearn.datasets import load_digits

        memo = ("digits", "")
        if memo not in _FINGERPRINTS:
            digits = load_digits()
            _FINGERPRINTS[memo] = {
                "content": array_fingerprint(digits.images, np.asarray(digits.target, dtype=np.int64)),
                "classes": [str(c) for c in range(10)],
                "num_classes": 10,
                "train_items": None,
                "test_items": None,
            }
        return _FINGERPRINTS[memo]
    if data_dir is None:
        raise ValueError(f"dataset {dataset!r} needs `data_dir`.")
    kind, path = _detect_layout(Path(data_dir).expanduser())
    memo = (dataset, _source_signature(kind, path))
    if memo not in _FINGERPRINTS:
        x, y, classes = load_cifar10_arrays(data_dir, "train", cache_dir)
        tx, ty, _ = load_cifar10_arrays(data_dir, "test", cache_dir)
        _FINGERPRINTS[memo] = {
            "content": array_fingerprint(x, y, tx, ty, list(classes)),
            "classes": list(classes),
            "num_classes": len(classes),
            "train_items": len(y),
            "test_items": len(ty),
        }
    return _FINGERPRINTS[memo]


def _decode(read: Callable[[], bytes]) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(read())) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _image_folder_items(names: list[str], split: str) -> tuple[list[str], list[int], list[str]]:
    """Files of ``split/<class>/<file>`` sorted by class name then file name, with sorted-class labels."""
    by_class: dict[str, list[str]] = {}
    for name in names:
        parts = name.strip("/").split("/")
        if len(parts) == 3 and parts[0] == split and not name.endswith("/"):
            by_class.setdefault(parts[1], []).append(name)
    classes = sorted(by_class)
    files, labels = [], []
    for label, cls in enumerate(classes):
        for name in sorted(by_class[cls], key=lambda n: n.rsplit("/", 1)[1]):
            files.append(name)
            labels.append(label)
    return files, labels, classes


def _read_image_folder(kind: str, path: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if kind == "zip":
        with zipfile.ZipFile(path) as zf:
            files, labels, classes = _image_folder_items(zf.namelist(), split)
            images = [_decode(lambda n=n: zf.read(n)) for n in files]
    else:
        names = [p.relative_to(path).as_posix() for p in (path / split).glob("*/*") if p.is_file()]
        files, labels, classes = _image_folder_items(names, split)
        images = [_decode((path / n).read_bytes) for n in files]
    if not files:
        raise _missing_data(path, f"no images under {split}/<class>/")
    x = np.stack(images).transpose(0, 3, 1, 2)  # [N, 3, H, W]
    return np.ascontiguousarray(x), np.asarray(labels, dtype=np.int64), classes


def load_cifar10_arrays(
    data_dir: str | Path, split: str = "train", cache_dir: str | Path | None = None
) -> tuple[Tensor, Tensor, list[str]]:
    """CIFAR-10 ``split`` as ``(uint8 images [N, 3, 32, 32], LongTensor labels [N], class names)``.

    Reads the JPEG zip or its extracted folder (item order: class name, then file name; labels are the sorted
    class indices) or torchvision's ``cifar-10-batches-py``. JPEGs are decoded once and cached as plain ``.npy``
    files (no pickle) under ``cache_dir`` (default ``$LIGHTNING_DATADIET_CACHE`` or
    ``~/.cache/lightning_datadiet``), keyed by the source path, size and modification time.

    Raises:
        FileNotFoundError: ``data_dir`` is missing or holds none of the supported layouts.
    """
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}.")
    kind, path = _detect_layout(Path(data_dir).expanduser())
    if kind == "torchvision":
        from torchvision.datasets import CIFAR10

        ds = CIFAR10(str(path), train=split == "train", download=False)
        x = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        return x, torch.as_tensor(ds.targets, dtype=torch.long), list(ds.classes)

    key = hashlib.sha256(f"{_source_signature(kind, path)}|{split}".encode()).hexdigest()[:16]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    x_file, y_file, c_file = (
        cache / f"cifar10-{split}-{key}.{s}" for s in ("images.npy", "labels.npy", "classes.txt")
    )
    if x_file.exists() and y_file.exists() and c_file.exists():
        x = np.load(x_file, allow_pickle=False)
        y = np.load(y_file, allow_pickle=False)
        classes = c_file.read_text().split("\n")
    else:
        x, y, classes = _read_image_folder(kind, path, split)
        cache.mkdir(parents=True, exist_ok=True)
        for file, arr in ((x_file, x), (y_file, y)):
            buffer = io.BytesIO()
            np.save(buffer, arr, allow_pickle=False)
            atomic_write_bytes(file, buffer.getbuffer())
        atomic_write_bytes(c_file, "\n".join(classes).encode("utf-8"))
    return torch.from_numpy(x), torch.from_numpy(y).long(), classes


class CIFAR10DataModule(_SplitsDataModule):
    """CIFAR-10 from local files, with the standard training augmentation done on uint8 tensors.

    Images are held in memory as uint8 ``[N, 3, 32, 32]``; training items get a random 32x32 crop of the
    4-pixel zero-padded image and a random horizontal flip, then every item is normalised with the CIFAR-10
    train mean/std. ``score_dataset()`` is the training split without augmentation, same index order.

    Training index ``i`` refers to ``train_indices[i]`` in the full 50,000-image train split (they differ only
    when ``val_size`` or ``train_subset`` is set).

    Args:
        data_dir: ``cifar10-jpeg.zip``, a folder extracted from it, or torchvision's CIFAR10 root.
        batch_size: mini-batch size.
        num_workers: DataLoader workers.
        val_size: images held out from the training split for validation (class-stratified, seeded); 0 = none.
        train_subset: keep only this many training images (class-stratified, seeded) for quick runs.
        split_seed: seed of the validation hold-out and of ``train_subset``.
        label_noise, noise_mode, noise_seed: label noise on the training split, as for ``DigitsDataModule``.
        cache_dir: where decoded JPEGs are cached (see :func:`load_cifar10_arrays`).
        augment: apply crop + flip to training batches.

    Raises:
        FileNotFoundError: at construction, when ``data_dir`` is missing or has no supported layout.
    """

    def __init__(
        self,
        data_dir: str | Path = "../shared/data/cifar10-jpeg.zip",
        batch_size: int = 128,
        num_workers: int = 2,
        val_size: int = 0,
        train_subset: int | None = None,
        split_seed: int = 0,
        label_noise: float = 0.0,
        noise_mode: str = "uniform",
        noise_seed: int = 0,
        cache_dir: str | Path | None = None,
        augment: bool = True,
    ) -> None:
        super().__init__()
        _check_noise(label_noise, noise_mode)
        if val_size < 0:
            raise ValueError(f"`val_size` must be >= 0, got {val_size}.")
        if train_subset is not None and train_subset < 10:
            raise ValueError(f"`train_subset` must be at least 10 images, got {train_subset}.")
        _detect_layout(Path(data_dir).expanduser())  # fail fast
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_size = val_size
        self.train_subset = train_subset
        self.split_seed = split_seed
        self.label_noise = label_noise
        self.noise_mode = noise_mode
        self.noise_seed = noise_seed
        self.cache_dir = cache_dir
        self.augment = augment
        self.num_classes = 10
        self.train_dataset: LabeledTensorDataset | None = None
        self.val_dataset: LabeledTensorDataset | None = None
        self.test_dataset: LabeledTensorDataset | None = None

    def prepare_data(self) -> None:
        """Decode and cache both splits once."""
        for split in ("train", "test"):
            load_cifar10_arrays(self.data_dir, split, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        """Load (from the cache), split and corrupt (idempotent)."""
        if self.train_dataset is not None:
            return
        x, y, self.classes = load_cifar10_arrays(self.data_dir, "train", self.cache_dir)
        self.num_classes = len(self.classes)
        keep, val = _stratified_split(y.numpy(), self.val_size, self.split_seed)
        if self.train_subset is not None and self.train_subset < len(keep):
            _, sub = _stratified_split(y[keep].numpy(), self.train_subset, self.split_seed + 1)
            keep = keep[sub]
        keep_t = torch.from_numpy(keep)
        self.train_indices = keep_t
        targets = self._noisy(y[keep_t])
        self._train_x = x[keep_t]
        self.train_dataset = LabeledTensorDataset(self._train_x, targets, _Normalize(augment=self.augment))
        val_t = torch.from_numpy(val)
        self.val_dataset = LabeledTensorDataset(x[val_t], y[val_t], _Normalize(False)) if len(val) else None
        tx, ty, _ = load_cifar10_arrays(self.data_dir, "test", self.cache_dir)
        self.test_dataset = LabeledTensorDataset(tx, ty, _Normalize(False))

    def content_fingerprint(self) -> dict:
        """What the data is (every image and label of both splits, class names; see :func:`data_fingerprint`),
        whatever folder or archive holds it, for the study's run keys."""
        return data_fingerprint("cifar10", self.data_dir, self.cache_dir)

    def score_dataset(self) -> Dataset:
        """The training split without augmentation (same items, same labels, same order)."""
        self.setup()
        return LabeledTensorDataset(self._train_x, self.train_dataset.targets, _Normalize(False))

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
