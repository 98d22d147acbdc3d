"""The bytes of a score file: the safetensors layout written since 0.2.0, and the reader of 0.1.0's own layout.

Since 0.2.0 a score file is a `safetensors <https://github.com/huggingface/safetensors>`_ file holding one tensor,
``"scores"`` (float32, shape ``[N]``), and string metadata (``__metadata__``)::

    format            "lightning-datadiet-scores"     dtype            "float32"
    num_samples       "50000"                          payload_sha256   hex SHA-256 of the N little-endian floats
    method            "el2n"                           epoch / seed     "20" / "0" ("" when unknown)
    label_fingerprint "sha256:..." ("" when unknown)  version          the lightning-datadiet version that wrote it
    created           ISO 8601 UTC time               extra            a JSON object, as a string

Any safetensors tool opens it (``safetensors.safe_open(path, "pt")``); nothing in it can run code.

0.1.0 wrote ``b"DATADIET"`` + a format-version byte (1) + an 8-byte little-endian header length + a UTF-8 JSON
header (the same keys, JSON-typed) + the float32 payload. :func:`parse` reads both.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
from torch import Tensor

FORMAT_NAME = "lightning-datadiet-scores"
DTYPE_NAME = "float32"
PAYLOAD_DTYPE = np.dtype("<f4")
TENSOR_NAME = "scores"
REQUIRED_KEYS = (
    "format",
    "dtype",
    "num_samples",
    "payload_sha256",
    "method",
    "epoch",
    "seed",
    "label_fingerprint",
    "version",
    "created",
    "extra",
)
METHOD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_+-]*")
METHOD_RULE = "letters, digits, '_', '+' and '-', starting with a letter or digit"

_LENGTH = struct.Struct("<Q")
_V1_MAGIC = b"DATADIET"
_V1_VERSION = 1
_V1_PREFIX = len(_V1_MAGIC) + 1 + _LENGTH.size  # 17
_MAX_HEADER_BYTES = 64 * 1024 * 1024
_RECOMPUTE = "recompute the scores (or copy the file again from a good source)"
_RESAVE_FIX = (
    "if you trust the file, load the scores yourself and write them with "
    "lightning_datadiet.store.save_scores(path, scores, method=...)"
)
_HEADER_FIX = "the header is corrupted or was edited; recompute the scores or restore the file from a good copy"


class ScoreFileError(ValueError):
    """A score file (or a set of score files) was refused.

    The message names the file, what is wrong with it and how to fix it. It is a ``ValueError`` so callers that
    validate inputs generically still catch it.

    Example:
        >>> from lightning_datadiet.store import load_scores
        >>> try:
        ...     load_scores("missing.scores")
        ... except ScoreFileError as err:
        ...     print("refused")
        refused
    """


class ScoreFileNotFoundError(ScoreFileError, FileNotFoundError):
    """The score file does not exist (both a :class:`ScoreFileError` and a ``FileNotFoundError``)."""


def refuse(path: Any, problem: str, fix: str, cls: type[ScoreFileError] = ScoreFileError) -> ScoreFileError:
    where = f"{os.fspath(path)}: " if path is not None else ""
    return cls(f"{where}{problem}. Fix: {fix}.")


def sha256(array: np.ndarray) -> str:
    return hashlib.sha256(memoryview(array).cast("B")).hexdigest()


def _json(path: Any, raw: bytes | str, what: str) -> Any:
    """``json.loads`` whose every failure (also a nesting bomb or an integer too long to convert) is refused."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise refuse(path, f"the {what} is nested too deeply to be score-file metadata", _HEADER_FIX) from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, integers longer than Python's digit limit
        raise refuse(path, f"the {what} cannot be parsed ({err})", _HEADER_FIX) from None


# ------------------------------------------------------------------------------------------------- writing


def encode(scores: Tensor, header: dict[str, Any]) -> bytes:
    """The safetensors bytes of a score file: ``scores`` (float32 [N]) and ``header`` as string metadata."""
    metadata = {
        key: ("" if value is None else json.dumps(value, allow_nan=False, separators=(",", ":")))
        if key in ("epoch", "seed", "num_samples", "extra")
        else ("" if value is None else str(value))
        for key, value in header.items()
    }
    return safetensors.torch.save({TENSOR_NAME: scores.contiguous()}, metadata=metadata)


# ------------------------------------------------------------------------------------------------- reading


def validate_header(path: Any, header: Any) -> dict[str, Any]:
    """Check the metadata of a score file (either layout), as :func:`~lightning_datadiet.store.save_scores`
    checks it before writing."""
    if not isinstance(header, dict):
        raise refuse(path, f"the header is a JSON {type(header).__name__}, not an object", _HEADER_FIX)
    missing = [k for k in REQUIRED_KEYS if k not in header]
    if missing:
        raise refuse(path, f"the header lacks {', '.join(missing)}", _HEADER_FIX)
    if header["format"] != FORMAT_NAME:
        raise refuse(
            path,
            f"the header says format {header['format']!r}, not {FORMAT_NAME!r}",
            "pass a file written by lightning_datadiet.store.save_scores",
        )
    if header["dtype"] != DTYPE_NAME:
        raise refuse(
            path,
            f"the payload dtype is {header['dtype']!r}; this version reads only {DTYPE_NAME!r}",
            "upgrade lightning-datadiet, or re-save the scores as float32 with save_scores",
        )

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    problems = []
    if not is_int(header["num_samples"]) or header["num_samples"] < 0:
        problems.append(f"num_samples={header['num_samples']!r} is not a non-negative integer")
    sha = header["payload_sha256"]
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        problems.append(f"payload_sha256={sha!r} is not a hex SHA-256")
    if not isinstance(header["method"], str) or not METHOD_NAME.fullmatch(header["method"]):
        problems.append(f"method={header['method']!r} is not a plain method name ({METHOD_RULE})")
    for key in ("epoch", "seed"):
        if header[key] is not None and not is_int(header[key]):
            problems.append(f"{key}={header[key]!r} is not an integer or null")
    if is_int(header["epoch"]) and header["epoch"] < 0:
        problems.append(f"epoch={header['epoch']!r} is negative")
    if header["label_fingerprint"] is not None and not isinstance(header["label_fingerprint"], str):
        problems.append(f"label_fingerprint={header['label_fingerprint']!r} is not a string or null")
    for key in ("version", "created"):
        if not isinstance(header[key], str):
            problems.append(f"{key}={header[key]!r} is not a string")
    if not isinstance(header["extra"], dict):
        problems.append(f"extra={header['extra']!r} is not an object")
    if problems:
        raise refuse(path, "invalid header: " + "; ".join(problems), _HEADER_FIX)
    return header


def parse(path: Any, raw: bytes, reader_version: str) -> tuple[dict[str, Any], np.ndarray]:
    """The validated header and the float32 scores of the score file whose bytes are ``raw`` (either layout).
    Checksum and NaN checks are the caller's."""
    if raw.startswith(_V1_MAGIC) or (raw and _V1_MAGIC.startswith(raw)):
        return _parse_v1(path, raw, reader_version)
    # safetensors first: its 8-byte length prefix may start with any byte (0x80 included, like a pickle)
    if raw[_LENGTH.size : _LENGTH.size + 1] == b"{" and _LENGTH.unpack_from(raw, 0)[0] < _MAX_HEADER_BYTES:
        return _parse_safetensors(path, raw)
    if raw.startswith(b"\x80"):
        raise refuse(
            path,
            "is a pickle file (e.g. from pickle.dump or an old-style torch.save); it is refused because unpickling "
            "can run arbitrary code",
            _RESAVE_FIX,
        )
    if raw.startswith(b"PK"):
        raise refuse(
            path,
            "is a zip archive, probably written by torch.save; it is refused because loading it means unpickling, "
            "which can run arbitrary code",
            _RESAVE_FIX,
        )
    if raw.startswith(b"\x93NUMPY"):
        raise refuse(path, "is a NumPy .npy file, not a lightning-datadiet score file", _RESAVE_FIX)
    if 0 < len(raw) <= _LENGTH.size:
        raise refuse(path, f"is truncated (or not a score file): only {len(raw)} bytes", _RECOMPUTE)
    raise _not_a_score_file(path)


def _check_payload_size(path: Any, n: int, actual: int) -> None:
    expected = PAYLOAD_DTYPE.itemsize * n
    if actual < expected:
        raise refuse(
            path,
            f"is truncated: the header announces {n} float32 scores ({expected} bytes) but only {actual} payload "
            "bytes follow (an interrupted write or copy?)",
            _RECOMPUTE,
        )
    if actual > expected:
        raise refuse(
            path,
            f"has {actual - expected} trailing bytes after the {n} float32 scores the header announces (the file "
            "was corrupted or modified)",
            _RECOMPUTE,
        )


def _not_a_score_file(path: Any) -> ScoreFileError:
    return refuse(
        path,
        "not a lightning-datadiet score file (neither a safetensors score file nor the 0.1.0 b'DATADIET' layout)",
        "pass a file written by lightning_datadiet.store.save_scores or a scoring callback",
    )


def _parse_safetensors(path: Any, raw: bytes) -> tuple[dict[str, Any], np.ndarray]:
    size = len(raw)
    (header_len,) = _LENGTH.unpack_from(raw, 0)
    if _LENGTH.size + header_len > size:
        raise refuse(
            path,
            f"is truncated: the safetensors header should be {header_len} bytes but the file ends after "
            f"{size - _LENGTH.size}",
            _RECOMPUTE,
        )
    table = _json(path, raw[_LENGTH.size : _LENGTH.size + header_len], "safetensors header")
    if not isinstance(table, dict):
        raise _not_a_score_file(path)
    metadata = table.get("__metadata__")
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise refuse(
            path,
            "is a safetensors file but not a lightning-datadiet score file (its metadata does not say "
            f"format={FORMAT_NAME!r}; model weights?)",
            "pass a file written by lightning_datadiet.store.save_scores or a scoring callback",
        )
    header = _decode_metadata(path, metadata)
    n = header["num_samples"]
    entry = table.get(TENSOR_NAME)
    others = sorted(k for k in table if k not in ("__metadata__", TENSOR_NAME))
    if not isinstance(entry, dict) or others:
        raise refuse(path, f"must hold exactly one tensor named {TENSOR_NAME!r}, got {others or 'none'}", _HEADER_FIX)
    if entry.get("dtype") != "F32" or entry.get("shape") != [n]:
        raise refuse(
            path,
            f"the tensor {TENSOR_NAME!r} is {entry.get('dtype')} of shape {entry.get('shape')}, not F32 of shape "
            f"[{n}] as num_samples says",
            _HEADER_FIX,
        )
    _check_payload_size(path, n, size - _LENGTH.size - header_len)
    if entry.get("data_offsets") != [0, PAYLOAD_DTYPE.itemsize * n]:
        raise refuse(path, f"the tensor's data_offsets {entry.get('data_offsets')} do not cover the payload", _HEADER_FIX)
    try:
        tensor = safetensors.torch.load(raw)[TENSOR_NAME]
    except Exception as err:  # noqa: BLE001 - safetensors' own error type differs between versions
        raise refuse(path, f"safetensors could not read it ({err})", _RECOMPUTE) from None
    return header, tensor.numpy()


def _decode_metadata(path: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """String metadata -> the typed header (ints, None, the ``extra`` object), then validated."""
    if not all(isinstance(v, str) for v in metadata.values()):
        raise refuse(path, "the safetensors metadata holds non-string values", _HEADER_FIX)
    header: dict[str, Any] = dict(metadata)
    missing = [k for k in REQUIRED_KEYS if k not in header]
    if missing:
        raise refuse(path, f"the header lacks {', '.join(missing)}", _HEADER_FIX)
    for key in ("num_samples", "epoch", "seed"):
        text = header[key]
        if text == "" and key != "num_samples":
            header[key] = None
        elif re.fullmatch(r"-?[0-9]{1,30}", text):
            header[key] = int(text)
        else:
            raise refuse(path, f"invalid header: {key}={text!r} is not an integer", _HEADER_FIX)
    header["extra"] = _json(path, header["extra"], "`extra` metadata")
    if header["label_fingerprint"] == "":
        header["label_fingerprint"] = None
    return validate_header(path, header)


def _parse_v1(path: Any, raw: bytes, reader_version: str) -> tuple[dict[str, Any], np.ndarray]:
    size = len(raw)
    if size < _V1_PREFIX:
        raise refuse(
            path, f"is truncated: only {size} bytes, the fixed-size prefix alone is {_V1_PREFIX}", _RECOMPUTE
        )
    version = raw[len(_V1_MAGIC)]
    if version != _V1_VERSION:
        raise refuse(
            path,
            f"has score-file format version {version}, but lightning-datadiet {reader_version} reads only version "
            f"{_V1_VERSION} of the b'DATADIET' layout (and safetensors score files)",
            "upgrade lightning-datadiet (a newer version wrote it) or recompute the scores with this version",
        )
    (header_len,) = _LENGTH.unpack_from(raw, len(_V1_MAGIC) + 1)
    if header_len == 0 or header_len >= _MAX_HEADER_BYTES:
        raise refuse(
            path,
            f"the header length field says {header_len} bytes, which is implausible (the file is corrupted or was "
            "modified)",
            _RECOMPUTE,
        )
    if _V1_PREFIX + header_len > size:
        raise refuse(
            path,
            f"is truncated: the header should be {header_len} bytes but the file ends after {size - _V1_PREFIX}",
            _RECOMPUTE,
        )
    try:
        text = raw[_V1_PREFIX : _V1_PREFIX + header_len].decode("utf-8")
    except UnicodeDecodeError as err:
        raise refuse(path, f"the JSON header cannot be parsed ({err})", _HEADER_FIX) from None
    header = validate_header(path, _json(path, text, "JSON header"))
    n = header["num_samples"]
    _check_payload_size(path, n, size - _V1_PREFIX - header_len)
    array = np.frombuffer(raw, dtype=PAYLOAD_DTYPE, count=n, offset=_V1_PREFIX + header_len)
    return header, array.astype(np.float32)


__all__ = ["ScoreFileError", "ScoreFileNotFoundError", "encode", "parse", "refuse", "sha256", "validate_header"]
