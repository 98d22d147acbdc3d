"""Issue 9 (red team): score files, selection rules and PrunedDataModule inputs that were silently wrong or escaped
the library's error types. Each test failed on 0.1.0."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import time

import numpy as np
import pytest
import torch

from lightning_datadiet import selection as S
from lightning_datadiet.data.pruned import PrunedDataModule
from lightning_datadiet.store import ScoreFileError, load_scores, save_scores

from tiny import TinyDataModule


def legacy_file(path, header_overrides=None, raw_header: bytes | None = None, n: int = 4):
    """A 0.1.0-layout score file (magic, version, length, JSON header, float32 payload) with a crafted header."""
    payload = np.arange(n, dtype="<f4").tobytes()
    header = {
        "format": "lightning-datadiet-scores",
        "dtype": "float32",
        "num_samples": n,
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        "method": "el2n",
        "epoch": 1,
        "seed": 0,
        "label_fingerprint": None,
        "version": "0.1.0",
        "created": "2026-01-01T00:00:00+00:00",
        "extra": {},
    }
    header.update(header_overrides or {})
    head = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(b"DATADIET" + bytes([1]) + struct.pack("<Q", len(head)) + head + payload)
    return path


# ------------------------------------------------------------------------------------------ item 17: hostile files


def test_legacy_fixture_helper_writes_a_loadable_file(tmp_path):
    sf = load_scores(legacy_file(tmp_path / "ok.scores"))
    assert sf.method == "el2n" and sf.scores.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_deeply_nested_header_is_a_score_file_error(tmp_path):
    deep = b"[" * 100_000 + b"]" * 100_000
    path = legacy_file(tmp_path / "deep.scores", raw_header=deep)
    with pytest.raises(ScoreFileError, match="deep.scores.*nested too deeply"):
        load_scores(path)


def test_huge_integer_in_header_is_a_score_file_error(tmp_path):
    raw = json.dumps({"format": "lightning-datadiet-scores"}).encode()[:-1] + b', "num_samples": ' + b"9" * 5000 + b"}"
    path = legacy_file(tmp_path / "bigint.scores", raw_header=raw)
    with pytest.raises(ScoreFileError, match="bigint.scores.*cannot be parsed"):
        load_scores(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_named_pipe_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "x.scores"
    os.mkfifo(fifo)
    result: dict = {}

    def attempt():
        try:
            load_scores(fifo)
        except Exception as err:  # noqa: BLE001 - the type is checked below
            result["err"] = err

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout=10)
    if t.is_alive():  # unblock the reader so the test process can exit, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("load_scores blocked on a named pipe")
    assert isinstance(result.get("err"), ScoreFileError)
    assert "not a regular file" in str(result["err"])


# ------------------------------------------------------------------------------------ item 19: metadata validation


@pytest.mark.parametrize(
    ("override", "what"),
    [({"epoch": -5}, "epoch=-5 is negative"), ({"method": "../../x"}, "method='../../x'"), ({"method": "a b"}, "method")],
)
def test_crafted_metadata_is_validated_on_load(tmp_path, override, what):
    path = legacy_file(tmp_path / "crafted.scores", override)
    with pytest.raises(ScoreFileError, match=what.replace("(", r"\(").replace(".", r"\.")):
        load_scores(path)


def test_the_same_metadata_is_refused_on_save(tmp_path):
    with pytest.raises(ValueError, match="epoch"):
        save_scores(tmp_path / "a.scores", torch.rand(3), method="el2n", epoch=-5)
    with pytest.raises(ValueError, match="plain name"):
        save_scores(tmp_path / "a.scores", torch.rand(3), method="../../x")


@pytest.mark.parametrize("value", [np.int64(3), torch.tensor(3)])
def test_numpy_and_tensor_int_scalars_are_counts(value):
    scores = torch.arange(10.0)
    assert S.highest(scores, value).tolist() == [7, 8, 9]


@pytest.mark.parametrize("value", [np.float64(0.5), np.float32(0.5), torch.tensor(0.5), torch.tensor(0.5, dtype=torch.float64)])
def test_numpy_and_tensor_float_scalars_are_fractions(value):
    scores = torch.arange(10.0)
    assert S.keep_count(10, value) == 5
    assert S.highest(scores, value).tolist() == [5, 6, 7, 8, 9]
    assert S.select(scores, value, "random", seed=1).numel() == 5
    pdm = PrunedDataModule(TinyDataModule(n=40), torch.arange(40.0), value)
    assert pdm.keep_fraction == 0.5


def test_non_scalar_tensors_are_still_refused():
    with pytest.raises(TypeError):
        S.keep_count(10, torch.tensor([0.5, 0.5]))


# --------------------------------------------------------------------------------- item 20: class ids, num_strata


def test_class_balanced_with_a_huge_class_id_is_fast_and_exact():
    labels = torch.tensor([0, 10**9, 0, 10**9, 0, 10**9])
    scores = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    start = time.perf_counter()
    kept = S.highest(scores, 4, labels=labels, class_balanced=True)
    # quotas 2 + 2: class 0 keeps its two highest (indices 2, 4), class 10^9 its two highest (3, 5)
    assert kept.tolist() == [2, 3, 4, 5]
    assert S.random(6, 2, labels=labels, class_balanced=True).numel() == 2
    assert S.coverage(scores, 2, labels=labels, class_balanced=True, num_strata=2).numel() == 2
    assert S.window(scores, 2, 2, labels=labels, class_balanced=True).tolist() == [2, 3]
    assert time.perf_counter() - start < 5


def test_class_quota_errors_name_the_original_class_id():
    labels = torch.tensor([7, 7, 7, 10**9])
    with pytest.raises(ValueError, match="Class 7 cannot fill its quota"):
        S.window(torch.tensor([0.1, 0.2, 0.3, 0.4]), 2, 2, labels=labels, class_balanced=True)


def test_class_quotas_refuses_a_gigantic_output_instead_of_exhausting_memory():
    with pytest.raises(ValueError, match="dense ids"):
        S.class_quotas(torch.tensor([0, 10**9]), 1)
    assert S.class_quotas(torch.tensor([0, 0, 0, 1, 1, 2]), 4).tolist() == [2, 1, 1]


def test_num_strata_larger_than_n_is_refused():
    scores = torch.rand(10)
    with pytest.raises(ValueError, match="num_strata.*larger than the 10 examples"):
        S.coverage(scores, 5, num_strata=11)
    with pytest.raises(ValueError, match="num_strata"):
        S.coverage(scores, 5, num_strata=10**9)
    assert S.coverage(scores, 5, num_strata=10).numel() == 5
    assert S.coverage(scores, 5).numel() == 5  # the default (CCS's 50) works for any N


# ------------------------------------------------------------------------------- item 22: float32 faithfulness


def test_finite_values_that_overflow_float32_are_refused(tmp_path):
    with pytest.raises(ValueError, match="too large for float32"):
        save_scores(tmp_path / "a.scores", torch.tensor([1.0, 1e39], dtype=torch.float64), method="x")
    assert not list(tmp_path.iterdir())
    # +inf itself is kept (forgetting's "never learned")
    p = save_scores(tmp_path / "b.scores", torch.tensor([1.0, float("inf")], dtype=torch.float64), method="x")
    assert torch.isinf(load_scores(p).scores[1])


def test_integers_that_float32_would_merge_are_refused(tmp_path):
    with pytest.raises(ValueError, match="beyond 2\\^24"):
        save_scores(tmp_path / "a.scores", torch.tensor([2**40 + 1, 2**40], dtype=torch.int64), method="x")
    with pytest.raises(ValueError, match="beyond 2\\^24"):
        save_scores(tmp_path / "a.scores", np.array([2.0**40 + 1, 2.0**40]), method="x")
    # exactly representable large integers and ordinary float64 rounding are fine
    p = save_scores(tmp_path / "ok.scores", torch.tensor([2**40, 3], dtype=torch.int64), method="x")
    assert load_scores(p).scores.tolist() == [2.0**40, 3.0]
    save_scores(tmp_path / "f.scores", torch.tensor([0.1, 0.2], dtype=torch.float64), method="x")


# ------------------------------------------------------------------------------------------ item 23: empty path


@pytest.mark.parametrize("bad", ["", "   ", ".", ".."])
def test_empty_or_directory_like_paths_are_clear_value_errors(bad):
    with pytest.raises(ValueError, match="`path`"):
        save_scores(bad, torch.rand(3), method="el2n")
