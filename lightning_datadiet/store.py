"""Score files: one float32 score per training example plus metadata, written atomically, read without unpickling.

A score file is a `safetensors` file: one float32 tensor ``"scores"`` of shape ``[N]`` and string metadata
(``__metadata__``: format, dtype, num_samples, payload_sha256, method, epoch, seed, label_fingerprint, version,
created, extra as JSON), so any safetensors tool opens it (``safetensors.safe_open(path, "pt")``). Files written by
lightning-datadiet 0.1.0 (its own ``b"DATADIET"`` layout) still load. The byte layouts live in
``lightning_datadiet._scorefile_format``.

Loading never calls ``pickle``/``torch.load``: a score file cannot run code. A file that is truncated, has trailing
bytes, fails its payload checksum, is not a regular file, or is not a score file at all is refused with a
:class:`ScoreFileError` that names the file, the problem and the fix. The label fingerprint (a hash of the training
labels in index order) keeps scores of one dataset from being applied to, or averaged with, scores of another.
"""

from __future__ import annotations

import hashlib
import os
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor

from lightning_datadiet import _scorefile_checks as checks
from lightning_datadiet import _scorefile_format as fmt
from lightning_datadiet._scorefile_format import ScoreFileError
from lightning_datadiet._utils import atomic_write_bytes
from lightning_datadiet._version import __version__

__all__ = [
    "SCORE_FILE_SUFFIX",
    "ScoreFile",
    "ScoreFileError",
    "average_scores",
    "check_compatible",
    "label_fingerprint",
    "load_scores",
    "save_scores",
    "scores_from",
]

SCORE_FILE_SUFFIX = checks.SCORE_FILE_SUFFIX
_LENGTH = struct.Struct("<Q")
_MAX_HEADER_BYTES = 64 * 1024 * 1024

PathLike = Union[str, "os.PathLike[str]"]
_refuse = fmt.refuse
_sha256 = fmt.sha256
_PAYLOAD_DTYPE = fmt.PAYLOAD_DTYPE


# --------------------------------------------------------------------------------------------- fingerprints


def label_fingerprint(labels: Any) -> str:
    """A fingerprint of a training set's labels, used to tell datasets (and splits, and label orders) apart.

    It is ``"sha256:"`` followed by the hex SHA-256 of the number of labels (8 bytes, little-endian, unsigned)
    and the labels as little-endian int64. It changes when any label changes, when labels are reordered and
    when examples are added or removed, so score files carry it to refuse being applied to another dataset.

    Args:
        labels: the class ids of the whole training set in index order: a 1-D ``Tensor``, ``ndarray`` or
            sequence of ints. Float values are accepted when they are all whole numbers.

    Returns:
        ``"sha256:<64 hex digits>"``.

    Raises:
        ValueError: the labels are not 1-D, or not integers.

    Example:
        >>> fp = label_fingerprint([0, 1, 1, 2])
        >>> fp == label_fingerprint(torch.tensor([0, 1, 1, 2])) and fp != label_fingerprint([0, 1, 2, 1])
        True
    """
    array = checks.labels_as_int64(labels)
    digest = hashlib.sha256()
    digest.update(_LENGTH.pack(array.size))
    digest.update(memoryview(array).cast("B"))
    return "sha256:" + digest.hexdigest()


_fingerprint_of = label_fingerprint  # save_scores has a parameter of the same name


# ----------------------------------------------------------------------------------------------- ScoreFile


@dataclass(frozen=True, eq=False, repr=False)
class ScoreFile:
    """Scores of one run (or the average of several) with their metadata.

    Attributes:
        scores: float32 ``[N]`` CPU tensor, one score per training example in index order.
        method: what produced them: ``"el2n"``, ``"grand"``, ``"forgetting"`` or any user string.
        epoch: the training epoch the scores were computed at (``None`` if unknown or mixed).
        seed: the seed of the run (``None`` if unknown, or for an average).
        num_samples: ``N``.
        label_fingerprint: :func:`label_fingerprint` of the training labels, or ``None`` if unknown.
        version: the lightning-datadiet version that wrote the scores.
        metadata: the whole JSON header, including ``"extra"``.
        path: the file the scores were read from, or ``None`` for scores made in memory.

    Example:
        >>> sf = load_scores("runs/el2n_epoch020_seed0.scores")  # doctest: +SKIP
        >>> sf.method, sf.epoch, sf.scores.shape  # doctest: +SKIP
        ('el2n', 20, torch.Size([50000]))
    """

    scores: Tensor
    method: str
    epoch: int | None
    seed: int | None
    num_samples: int
    label_fingerprint: str | None
    version: str
    metadata: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.scores, Tensor) or self.scores.ndim != 1:
            raise ValueError("ScoreFile.scores must be a 1-D tensor.")
        if self.scores.numel() != self.num_samples:
            raise ValueError(
                f"ScoreFile.num_samples={self.num_samples} but scores has {self.scores.numel()} entries."
            )

    @property
    def extra(self) -> dict[str, Any]:
        """The free-form ``extra`` dict of the header (``{}`` if none).

        Example:
            >>> load_scores("avg.scores").extra["runs"]  # doctest: +SKIP
            4
        """
        extra = self.metadata.get("extra")
        return extra if isinstance(extra, dict) else {}

    def __repr__(self) -> str:
        where = f", path='{self.path}'" if self.path is not None else ""
        return (
            f"ScoreFile(method={self.method!r}, epoch={self.epoch}, seed={self.seed}, "
            f"num_samples={self.num_samples}, label_fingerprint={self.label_fingerprint!r}{where})"
        )


def _describe(sf: ScoreFile, i: int) -> str:
    if sf.path is not None:
        return str(sf.path)
    return f"scores[{i}] (in memory, method={sf.method!r})"


# --------------------------------------------------------------------------------------------------- saving


def save_scores(
    path: PathLike,
    scores: Any,
    *,
    method: str,
    epoch: int | None = None,
    seed: int | None = None,
    labels: Any = None,
    label_fingerprint: str | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write one score per training example to a score file, atomically.

    The file is written to a temporary file in the same directory, flushed, ``fsync``-ed and renamed over
    ``path`` with ``os.replace``; if anything fails the temporary file is removed and a previous file at
    ``path`` is left untouched. ``+inf`` scores (forgetting's "never learned") are kept; NaN is refused.

    Args:
        path: where to write. Parent directories are created. If the name has no suffix,
            :data:`SCORE_FILE_SUFFIX` (``".scores"``) is appended.
        scores: 1-D tensor or array-like, converted to float32 on the CPU.
        method: what produced the scores, e.g. ``"el2n"``, ``"grand"``, ``"forgetting"``.
        epoch: training epoch the scores were computed at.
        seed: seed of the run.
        labels: the training labels in index order; their :func:`label_fingerprint` is stored. Must have one
            label per score. Mutually exclusive with ``label_fingerprint``.
        label_fingerprint: a precomputed fingerprint to store instead of ``labels``.
        extra: JSON-serialisable dict of anything else to keep (e.g. ``{"global_step": 1200}``).

    Returns:
        The path written (with the suffix appended if it had none).

    Raises:
        ValueError: scores not 1-D or containing NaN, empty ``method``, both ``labels`` and
            ``label_fingerprint``, ``labels`` of the wrong length, non-JSON-able ``extra``, ``path`` a directory.
        OSError: the file could not be written (nothing is left behind).

    Example:
        >>> p = save_scores(tmp / "el2n_epoch020", torch.rand(100), method="el2n", epoch=20, seed=0,
        ...                 labels=torch.arange(100) % 10)  # doctest: +SKIP
        >>> p.name  # doctest: +SKIP
        'el2n_epoch020.scores'
    """
    method = checks.checked_method(method)
    epoch = checks.checked_epoch(epoch)
    seed = checks.optional_int(seed, "seed")
    extra_dict = checks.checked_extra(extra)
    tensor = checks.as_scores(scores)
    if labels is not None and label_fingerprint is not None:
        raise ValueError("Pass either `labels` or `label_fingerprint`, not both.")
    if labels is not None:
        n_labels = len(labels)
        if n_labels != tensor.numel():
            raise ValueError(
                f"`labels` has {n_labels} entries but `scores` has {tensor.numel()}; pass the labels of the same "
                "training set, in index order."
            )
        fingerprint: str | None = _fingerprint_of(labels)
    else:
        if label_fingerprint is not None and (
            not isinstance(label_fingerprint, str) or not label_fingerprint
        ):
            raise ValueError(
                f"`label_fingerprint` must be a non-empty string or None, got {label_fingerprint!r}."
            )
        fingerprint = label_fingerprint

    raw_path = os.fspath(path)
    if isinstance(raw_path, bytes):
        raw_path = os.fsdecode(raw_path)
    if not raw_path.strip():
        raise ValueError("`path` is empty; pass a file name such as 'runs/el2n_epoch020.scores'.")
    target = Path(raw_path).expanduser()
    if not target.name or target.name in (".", ".."):
        raise ValueError(f"`path` {raw_path!r} names a directory, not a file; pass e.g. {raw_path!r} + '/el2n.scores'.")
    if not target.suffix:
        target = target.with_name(target.name + SCORE_FILE_SUFFIX)
    if target.is_dir():
        raise ValueError(
            f"{target} is a directory; pass a file name such as {target / ('el2n' + SCORE_FILE_SUFFIX)}."
        )

    payload = checks.payload(tensor)
    header = checks.make_header(tensor, _sha256(payload), method, epoch, seed, fingerprint, extra_dict)
    data = fmt.encode(torch.from_numpy(payload), header)
    if len(data) - 4 * tensor.numel() >= _MAX_HEADER_BYTES:
        raise ValueError(f"The metadata would be {len(data) - 4 * tensor.numel()} bytes; keep `extra` well under 64 MiB.")
    atomic_write_bytes(target, data)
    return target


# -------------------------------------------------------------------------------------------------- loading


def load_scores(path: PathLike) -> ScoreFile:
    """Read a score file written by :func:`save_scores`, without ever unpickling anything.

    Args:
        path: the score file.

    Returns:
        A :class:`ScoreFile` with float32 CPU scores and the header's metadata.

    Raises:
        ScoreFileError: the file is missing (also a ``FileNotFoundError``), is a pickle / ``torch.save`` /
            ``.npy`` file or anything else that is not a score file, has an unsupported format version, a
            corrupt header, a truncated payload, trailing bytes, a checksum mismatch, or NaN scores.

    Example:
        >>> sf = load_scores("runs/forgetting_epoch200_seed0.scores")  # doctest: +SKIP
        >>> torch.isinf(sf.scores).sum()  # never-learned examples  # doctest: +SKIP
        tensor(1234)
    """
    p = Path(os.fspath(path)).expanduser()
    recompute = "recompute the scores (or copy the file again from a good source)"
    raw = checks.read_regular_file(p)
    header, array = fmt.parse(p, raw, __version__)
    n = header["num_samples"]
    if hashlib.sha256(memoryview(np.ascontiguousarray(array, dtype=_PAYLOAD_DTYPE)).cast("B")).hexdigest() != header[
        "payload_sha256"
    ]:
        raise _refuse(
            p,
            "checksum mismatch: the scores were corrupted or modified after they were written",
            recompute,
        )
    array = np.array(array, dtype=np.float32)  # a writable copy, native byte order
    nan = int(np.count_nonzero(np.isnan(array)))
    if nan:
        raise _refuse(p, f"holds {nan} NaN score(s), which cannot be ranked", recompute)
    return ScoreFile(
        scores=torch.from_numpy(array),
        method=header["method"],
        epoch=header["epoch"],
        seed=header["seed"],
        num_samples=n,
        label_fingerprint=header["label_fingerprint"],
        version=header["version"],
        metadata=header,
        path=p,
    )


# --------------------------------------------------------------------------------------- combining files


def check_compatible(
    score_files: Sequence[ScoreFile],
    *,
    num_samples: int | None = None,
    label_fingerprint: str | None = None,
    method: str | None = None,
) -> None:
    """Check that score files describe the same training set (and method), and match what is expected.

    Files must agree on ``num_samples`` and ``method``, and on ``label_fingerprint`` where both fingerprints are
    known (a file without one is compatible with any). Each expected value given must match every file (for the
    fingerprint: every file that has one).

    Args:
        score_files: the loaded files.
        num_samples: expected number of scores (the training set's length).
        label_fingerprint: expected :func:`label_fingerprint` of the training labels.
        method: expected method.

    Raises:
        ScoreFileError: listing every file that differs and how.

    Example:
        >>> check_compatible([load_scores("a.scores"), load_scores("b.scores")], num_samples=50000)  # doctest: +SKIP
    """
    files = list(score_files)
    for i, sf in enumerate(files):
        if not isinstance(sf, ScoreFile):
            raise TypeError(
                f"check_compatible expects ScoreFile objects, got {type(sf).__name__} at position {i}."
            )
    if not files:
        return
    problems: list[str] = []

    def compare(attr: str, what: str, expected: Any, skip_none: bool) -> None:
        values = [getattr(sf, attr) for sf in files]
        if expected is not None:
            reference, source = expected, "expected"
        else:
            known = [(i, v) for i, v in enumerate(values) if not (skip_none and v is None)]
            if not known:
                return
            first, reference = known[0]
            source = _describe(files[first], first)
        bad = [
            f"    {_describe(sf, i)}: {what} {v!r}"
            for i, (sf, v) in enumerate(zip(files, values))
            if not (skip_none and v is None) and v != reference
        ]
        if bad:
            problems.append(f"  {what} differs from {reference!r} ({source}):\n" + "\n".join(bad))

    compare("num_samples", "num_samples", num_samples, skip_none=False)
    compare("label_fingerprint", "label fingerprint", label_fingerprint, skip_none=True)
    compare("method", "method", method, skip_none=False)
    if problems:
        raise ScoreFileError(
            "Score files are not compatible:\n"
            + "\n".join(problems)
            + "\nDifferent lengths or label fingerprints mean the scores were computed on different datasets, "
            "splits or label orders. Fix: use score files computed on the same training set with the same method."
        )


def _as_file_list(files: Any) -> list[Any]:
    if isinstance(files, (str, os.PathLike, ScoreFile)):
        return [files]
    return list(files)


def average_scores(files: Any, *, allow_mixed_epochs: bool = False) -> ScoreFile:
    """The mean of the scores of several runs (e.g. EL2N over 10 seeds, as in the paper).

    Scores are accumulated in float64 and returned as float32; an example scored ``+inf`` in any run stays
    ``+inf``. All files must share the method, the number of examples and the label fingerprint (a file without a
    fingerprint may be averaged with ones that have it; the result keeps the known fingerprint), and the epoch
    unless ``allow_mixed_epochs=True``. A single file is accepted and returned as an average of one run.

    Args:
        files: a non-empty sequence of score-file paths and/or :class:`ScoreFile` objects.
        allow_mixed_epochs: average files of different epochs (the result's ``epoch`` is then ``None``).

    Returns:
        An in-memory :class:`ScoreFile` (``path=None``, ``seed=None``) whose ``extra`` holds ``runs`` (how many),
        ``seeds`` (each run's seed) and ``sources`` (each run's path, or ``None``).

    Raises:
        ValueError: no files given.
        ScoreFileError: a file is refused by :func:`load_scores`, or the files disagree on method, length,
            fingerprint or (by default) epoch, or one example is ``+inf`` in one run and ``-inf`` in another.

    Example:
        >>> avg = average_scores(sorted(Path("runs").glob("el2n_epoch020_seed*.scores")))  # doctest: +SKIP
        >>> avg.extra["runs"], avg.epoch  # doctest: +SKIP
        (10, 20)
    """
    entries = _as_file_list(files)
    if not entries:
        raise ValueError("average_scores needs at least one score file.")
    loaded: list[ScoreFile] = []
    for i, entry in enumerate(entries):
        if isinstance(entry, ScoreFile):
            loaded.append(entry)
        elif isinstance(entry, (str, os.PathLike)):
            loaded.append(load_scores(entry))
        else:
            raise TypeError(
                f"average_scores expects score-file paths or ScoreFile objects, got {type(entry).__name__} at "
                f"position {i}."
            )
    check_compatible(loaded)
    epochs = [sf.epoch for sf in loaded]
    if len(set(epochs)) > 1:
        if not allow_mixed_epochs:
            listing = "\n".join(f"    {_describe(sf, i)}: epoch {sf.epoch}" for i, sf in enumerate(loaded))
            raise ScoreFileError(
                "Score files come from different epochs:\n"
                + listing
                + "\nScores of different epochs rank examples "
                "differently. Fix: average files of the same epoch, or pass allow_mixed_epochs=True."
            )
        epoch = None
    else:
        epoch = epochs[0]
    checksums = [sf.metadata.get("payload_sha256") for sf in loaded]
    duplicated = {c for c in checksums if c is not None and checksums.count(c) > 1}
    if duplicated:
        same = [
            _describe(sf, i) for i, sf in enumerate(loaded) if sf.metadata.get("payload_sha256") in duplicated
        ]
        warnings.warn(
            f"Averaging identical scores more than once ({', '.join(same)}): the same run was probably passed twice.",
            UserWarning,
            stacklevel=2,
        )

    total = np.zeros(loaded[0].num_samples, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # +inf + -inf -> NaN, reported below
        for sf in loaded:
            total += sf.scores.detach().cpu().numpy()
    total /= len(loaded)
    if np.isnan(total).any():
        raise ScoreFileError(
            f"{int(np.isnan(total).sum())} example(s) are +inf in one run and -inf in another, so their mean is "
            "undefined. Fix: average runs whose scores use the same sign of infinity (or replace the infinities)."
        )
    mean = torch.from_numpy(total.astype(np.float32))
    fingerprint = next((sf.label_fingerprint for sf in loaded if sf.label_fingerprint is not None), None)
    extra = {
        "runs": len(loaded),
        "seeds": [sf.seed for sf in loaded],
        "sources": [str(sf.path) if sf.path is not None else None for sf in loaded],
    }
    method = loaded[0].method
    header = checks.make_header(mean, _sha256(checks.payload(mean)), method, epoch, None, fingerprint, extra)
    return ScoreFile(
        scores=mean,
        method=method,
        epoch=epoch,
        seed=None,
        num_samples=int(mean.numel()),
        label_fingerprint=fingerprint,
        version=header["version"],
        metadata=header,
        path=None,
    )


def scores_from(
    source: Any,
    *,
    expected_num_samples: int | None = None,
    expected_fingerprint: str | None = None,
) -> ScoreFile:
    """Scores from a tensor, a score file, a :class:`ScoreFile` or several files (averaged), checked against a dataset.

    Args:
        source: a 1-D ``Tensor`` (wrapped with method ``"tensor"`` and no fingerprint), a path, a
            :class:`ScoreFile`, or a list/tuple of paths and/or ScoreFiles (averaged with :func:`average_scores`).
        expected_num_samples: the length of the training set the scores will be used on.
        expected_fingerprint: the :func:`label_fingerprint` of that training set's labels.

    Returns:
        The :class:`ScoreFile`.

    Raises:
        ScoreFileError: a file is refused, the number of scores differs from ``expected_num_samples``, or both
            fingerprints are known and differ.
        ValueError: a tensor that is not 1-D or holds NaN; an empty list.
        TypeError: any other kind of ``source``.

    Example:
        >>> sf = scores_from(torch.tensor([0.3, 0.1, 0.2]), expected_num_samples=3)
        >>> sf.method, sf.num_samples
        ('tensor', 3)
    """
    if isinstance(source, Tensor):
        tensor = checks.as_scores(source)
        header = checks.make_header(tensor, _sha256(checks.payload(tensor)), "tensor", None, None, None, {})
        sf = ScoreFile(
            scores=tensor,
            method="tensor",
            epoch=None,
            seed=None,
            num_samples=int(tensor.numel()),
            label_fingerprint=None,
            version=header["version"],
            metadata=header,
        )
    elif isinstance(source, ScoreFile):
        sf = source
    elif isinstance(source, (str, os.PathLike)):
        sf = load_scores(source)
    elif isinstance(source, (list, tuple)):
        if not source:
            raise ValueError("scores_from got an empty list of score files.")
        if not all(isinstance(s, (str, os.PathLike, ScoreFile)) for s in source):
            raise TypeError(
                "A list passed as scores must hold score-file paths (averaged); to pass raw scores use a tensor, "
                "e.g. torch.tensor([...])."
            )
        sf = average_scores(source)
    else:
        raise TypeError(
            "scores must be a Tensor[N], a score-file path, a ScoreFile, or a list of score-file paths (averaged); "
            f"got {type(source).__name__}."
        )

    where = f"{sf.path}: " if sf.path is not None else ""
    if expected_num_samples is not None and sf.num_samples != expected_num_samples:
        raise ScoreFileError(
            f"{where}scores have {sf.num_samples} entries but the training set has {expected_num_samples} items; "
            "the scores were computed on a different dataset or split. Fix: recompute the scores on this training "
            "set, or pass the score file that belongs to it."
        )
    if (
        expected_fingerprint is not None
        and sf.label_fingerprint is not None
        and sf.label_fingerprint != expected_fingerprint
    ):
        raise ScoreFileError(
            f"{where}label fingerprint differs: this score file was computed on a different dataset (or labels); "
            f"recompute the scores on this dataset (file: {sf.label_fingerprint}, dataset: {expected_fingerprint})."
        )
    return sf
