"""Score files: round trip, refusal of foreign / damaged files, atomic writes, averaging and dataset checks."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_datadiet import __version__, store
from lightning_datadiet.store import (
    SCORE_FILE_SUFFIX,
    ScoreFile,
    ScoreFileError,
    average_scores,
    check_compatible,
    label_fingerprint,
    load_scores,
    save_scores,
    scores_from,
)

N = 50
FIXTURE_V010 = Path(__file__).parent / "fixtures" / "forgetting_epoch002_seed7_v0.1.0.scores"  # written by 0.1.0


def labels_of(n: int = N, shift: int = 0) -> torch.Tensor:
    return (torch.arange(n) + shift) % 10


def some_scores(seed: int = 0, n: int = N) -> torch.Tensor:
    return torch.rand(n, generator=torch.Generator().manual_seed(seed))


def split(path: Path) -> tuple[dict, bytes]:
    """(safetensors header table, payload) of a score file."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + header_len]), raw[8 + header_len :]


def join(table: dict, payload: bytes) -> bytes:
    head = json.dumps(table).encode()
    return struct.pack("<Q", len(head)) + head + payload


# --------------------------------------------------------------------------------------------------- format


def test_round_trip_is_bit_exact_with_metadata(tmp_path):
    scores = some_scores()
    scores[3] = float("inf")
    scores[7] = 0.0
    scores[8] = -0.0
    scores[9] = 1e-45  # subnormal
    labels = labels_of()
    path = save_scores(
        tmp_path / "sub" / "el2n_epoch020",
        scores,
        method="el2n",
        epoch=20,
        seed=3,
        labels=labels,
        extra={"a": [1, 2]},
    )
    assert path == tmp_path / "sub" / f"el2n_epoch020{SCORE_FILE_SUFFIX}"
    sf = load_scores(path)
    assert sf.scores.dtype == torch.float32 and sf.scores.device.type == "cpu"
    assert sf.scores.numpy().tobytes() == scores.numpy().tobytes()
    assert torch.isinf(sf.scores[3]) and sf.scores[3] > 0
    assert (sf.method, sf.epoch, sf.seed, sf.num_samples, sf.path) == ("el2n", 20, 3, N, path)
    assert sf.label_fingerprint == label_fingerprint(labels)
    assert sf.version == __version__
    assert sf.extra == {"a": [1, 2]} and sf.metadata["extra"] == sf.extra
    assert sf.metadata["format"] == "lightning-datadiet-scores" and sf.metadata["dtype"] == "float32"
    assert sf.metadata["created"].endswith("+00:00")
    assert "el2n" in repr(sf)


def test_layout_matches_the_documented_format(tmp_path):
    scores = torch.tensor([1.5, float("inf"), -2.0])
    path = save_scores(tmp_path / "x.scores", scores, method="grand", label_fingerprint="sha256:abc")
    table, payload = split(path)
    assert set(table) == {"__metadata__", "scores"}
    assert table["scores"] == {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]}
    assert payload == np.array([1.5, np.inf, -2.0], dtype="<f4").tobytes()
    meta = table["__metadata__"]
    assert meta["payload_sha256"] == hashlib.sha256(payload).hexdigest()
    assert set(meta) == {
        "format", "dtype", "num_samples", "payload_sha256", "method", "epoch", "seed",
        "label_fingerprint", "version", "created", "extra",
    }  # fmt: skip
    assert (meta["num_samples"], meta["epoch"], meta["seed"], meta["extra"]) == ("3", "", "", "{}")
    assert meta["label_fingerprint"] == "sha256:abc" and meta["method"] == "grand"


def test_any_safetensors_tool_opens_a_score_file(tmp_path):
    from safetensors import safe_open

    scores = torch.tensor([0.25, float("inf"), 3.0])
    path = save_scores(tmp_path / "el2n.scores", scores, method="el2n", epoch=20, seed=1, labels=[0, 1, 0])
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["method"] == "el2n" and f.metadata()["epoch"] == "20"
        assert f.metadata()["label_fingerprint"] == label_fingerprint([0, 1, 0])
        assert list(f.keys()) == ["scores"] and torch.equal(f.get_tensor("scores"), scores)


def test_a_0_1_0_score_file_still_loads():
    """The committed fixture was written by lightning-datadiet 0.1.0's own b"DATADIET" layout."""
    assert FIXTURE_V010.read_bytes().startswith(b"DATADIET\x01")
    sf = load_scores(FIXTURE_V010)
    assert sf.scores.tolist() == [0.5, 1.25, float("inf"), 0.0, 3.0, 2.0]
    assert (sf.method, sf.epoch, sf.seed, sf.num_samples, sf.version) == ("forgetting", 2, 7, 6, "0.1.0")
    assert sf.label_fingerprint == label_fingerprint([0, 1, 2, 0, 1, 2]) and sf.extra == {"global_step": 12}


def test_0_1_0_files_average_with_new_ones_and_keep_their_checks(tmp_path):
    new = save_scores(tmp_path / "new.scores", torch.ones(6), method="forgetting", epoch=2, labels=[0, 1, 2, 0, 1, 2])
    avg = average_scores([FIXTURE_V010, new])
    assert avg.scores.tolist() == [0.75, 1.125, float("inf"), 0.5, 2.0, 1.5]
    other = save_scores(tmp_path / "other.scores", torch.ones(6), method="forgetting", epoch=2, labels=[1] * 6)
    with pytest.raises(ScoreFileError, match="label fingerprint"):
        average_scores([FIXTURE_V010, other])
    raw = bytearray(FIXTURE_V010.read_bytes())
    raw[-3] ^= 0x01
    (tmp_path / "tampered.scores").write_bytes(bytes(raw))
    with pytest.raises(ScoreFileError, match="checksum mismatch"):
        load_scores(tmp_path / "tampered.scores")


def test_a_foreign_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ScoreFileError, match="safetensors file but not a lightning-datadiet score file"):
        load_scores(tmp_path / "model.safetensors")
    path = save_scores(tmp_path / "ok.safetensors", torch.rand(4), method="el2n")  # the suffix is the user's choice
    assert path.name == "ok.safetensors" and load_scores(path).num_samples == 4


def test_explicit_suffix_is_kept_and_inputs_are_converted(tmp_path):
    path = save_scores(tmp_path / "a.pt", [1, 2, 3], method="custom")
    assert path.name == "a.pt"
    assert load_scores(str(path)).scores.tolist() == [1.0, 2.0, 3.0]
    grad = torch.ones(4, dtype=torch.float64, requires_grad=True) * 2
    assert load_scores(save_scores(tmp_path / "b", grad, method="m")).scores.tolist() == [2.0] * 4


def test_label_fingerprint_is_deterministic_and_sensitive():
    labels = labels_of()
    fp = label_fingerprint(labels)
    expected = hashlib.sha256(struct.pack("<Q", N) + labels.numpy().astype("<i8").tobytes()).hexdigest()
    assert fp == "sha256:" + expected
    assert fp == label_fingerprint(labels.clone()) == label_fingerprint(labels.tolist())
    assert (
        fp == label_fingerprint(labels.numpy().astype(np.int32)) == label_fingerprint(labels.to(torch.uint8))
    )
    changed = labels.clone()
    changed[17] = (changed[17] + 1) % 10
    assert label_fingerprint(changed) != fp
    swapped = labels.clone()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert label_fingerprint(swapped) != fp
    assert label_fingerprint(labels[:-1]) != fp
    assert label_fingerprint([]) != label_fingerprint([0])
    assert label_fingerprint(labels.float()) == fp  # whole-number floats are class ids too
    with pytest.raises(ValueError, match="1-D"):
        label_fingerprint(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="not whole numbers"):
        label_fingerprint([0.5, 1.0])


# ------------------------------------------------------------------------------------------------- refusals


class _Boom:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_file_is_refused_without_being_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.scores"
    with open(path, "wb") as f:
        pickle.dump(_Boom(str(marker)), f, protocol=pickle.HIGHEST_PROTOCOL)
    with pytest.raises(ScoreFileError, match=r"evil\.scores.*pickle.*Fix: .*save_scores"):
        load_scores(path)
    assert not marker.exists()
    with pytest.raises(ScoreFileError, match="pickle"):
        scores_from(str(path))
    assert not marker.exists()


def test_torch_save_file_is_refused(tmp_path):
    path = tmp_path / "scores.pt"
    torch.save(some_scores(), path)
    with pytest.raises(ScoreFileError, match=r"scores\.pt.*torch\.save.*Fix"):
        load_scores(path)


def test_random_bytes_and_other_foreign_files_are_refused(tmp_path):
    path = tmp_path / "random.scores"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes()[1:] + b"x")
    path.write_bytes(b"\x00" + path.read_bytes())  # make sure it starts with neither \x80 nor PK
    with pytest.raises(ScoreFileError, match="not a lightning-datadiet score file.*Fix"):
        load_scores(path)
    npy = tmp_path / "s.npy"
    np.save(npy, some_scores().numpy())
    with pytest.raises(ScoreFileError, match="NumPy"):
        load_scores(npy)
    empty = tmp_path / "empty.scores"
    empty.write_bytes(b"")
    with pytest.raises(ScoreFileError, match="not a lightning-datadiet score file"):
        load_scores(empty)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ScoreFileError, match=r"nope\.scores: no such score file.*Fix"):
        load_scores(tmp_path / "nope.scores")
    with pytest.raises(FileNotFoundError):
        load_scores(tmp_path / "nope.scores")
    with pytest.raises(ScoreFileError, match="directory"):
        load_scores(tmp_path)


def test_truncated_files_are_refused(tmp_path):
    path = save_scores(tmp_path / "t.scores", some_scores(), method="el2n")
    raw = path.read_bytes()
    for keep in (3, 9, 8 + 10, len(raw) // 2):  # inside the length field, the header, the payload
        path.write_bytes(raw[:keep])
        with pytest.raises(ScoreFileError, match="truncated"):
            load_scores(path)
    path.write_bytes(raw[:-4])  # one float short
    with pytest.raises(ScoreFileError, match=rf"truncated.*{N} float32 scores.*Fix: recompute"):
        load_scores(path)


def test_trailing_bytes_are_refused(tmp_path):
    path = save_scores(tmp_path / "t.scores", some_scores(), method="el2n")
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(ScoreFileError, match="1 trailing bytes"):
        load_scores(path)


def test_flipped_payload_byte_fails_the_checksum(tmp_path):
    path = save_scores(tmp_path / "t.scores", some_scores(), method="el2n")
    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ScoreFileError, match=r"t\.scores: checksum mismatch.*corrupted or modified.*Fix"):
        load_scores(path)


def test_edited_headers_are_refused(tmp_path):
    path = save_scores(tmp_path / "t.scores", some_scores(), method="el2n", epoch=5)
    table, payload = split(path)

    def edited(**changes) -> None:
        t = json.loads(json.dumps(table))
        for key, value in changes.items():
            if value is None:
                del t["__metadata__"][key]
            else:
                t["__metadata__"][key] = value
        path.write_bytes(join(t, payload))

    edited(num_samples="49")
    with pytest.raises(ScoreFileError, match="not F32 of shape \\[49\\]"):
        load_scores(path)
    edited(epoch="five")
    with pytest.raises(ScoreFileError, match="invalid header: epoch='five'"):
        load_scores(path)
    edited(method="../../x")
    with pytest.raises(ScoreFileError, match="not a plain method name"):
        load_scores(path)
    edited(extra="[" * 100_000)
    with pytest.raises(ScoreFileError, match="nested too deeply|cannot be parsed"):
        load_scores(path)
    edited(seed=None)
    with pytest.raises(ScoreFileError, match="lacks seed"):
        load_scores(path)
    edited(format="other")
    with pytest.raises(ScoreFileError, match="not a lightning-datadiet score file"):
        load_scores(path)
    t = json.loads(json.dumps(table))
    t["extra_tensor"] = {"dtype": "F32", "shape": [0], "data_offsets": [4 * N, 4 * N]}
    path.write_bytes(join(t, payload))
    with pytest.raises(ScoreFileError, match="exactly one tensor"):
        load_scores(path)
    raw = join(table, payload)
    path.write_bytes(struct.pack("<Q", 2**40) + raw[8:])
    with pytest.raises(ScoreFileError, match="not a lightning-datadiet score file"):
        load_scores(path)
    path.write_bytes(raw.replace(b"{", b"[", 1))
    with pytest.raises(ScoreFileError, match="not a lightning-datadiet score file"):
        load_scores(path)


def test_edited_0_1_0_headers_are_still_refused(tmp_path):
    raw = FIXTURE_V010.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[9:17])
    header, payload = json.loads(raw[17 : 17 + header_len]), raw[17 + header_len :]
    path = tmp_path / "old.scores"

    def write(h: dict, tail: bytes = payload, version: int = 1) -> None:
        head = json.dumps(h).encode()
        path.write_bytes(b"DATADIET" + bytes([version]) + struct.pack("<Q", len(head)) + head + tail)

    write({**header, "num_samples": 5})
    with pytest.raises(ScoreFileError, match="4 trailing bytes"):
        load_scores(path)
    write({**header, "num_samples": 7})
    with pytest.raises(ScoreFileError, match="truncated"):
        load_scores(path)
    write({**header, "epoch": "5"})
    with pytest.raises(ScoreFileError, match="invalid header: epoch='5'"):
        load_scores(path)
    write({k: v for k, v in header.items() if k != "format"})
    with pytest.raises(ScoreFileError, match="lacks format"):
        load_scores(path)
    write(header, version=2)
    with pytest.raises(ScoreFileError, match="format version 2.*upgrade"):
        load_scores(path)
    path.write_bytes(raw[:9] + struct.pack("<Q", 2**40) + raw[17:])
    with pytest.raises(ScoreFileError, match="implausible"):
        load_scores(path)


def test_nan_is_refused_on_save_and_on_load(tmp_path):
    scores = some_scores()
    scores[[2, 5]] = float("nan")
    with pytest.raises(ValueError, match="2 NaN entries"):
        save_scores(tmp_path / "n.scores", scores, method="el2n")
    assert list(tmp_path.iterdir()) == []
    # A hand-made file with a valid checksum but NaN inside is still refused.
    path = save_scores(tmp_path / "n.scores", some_scores(), method="el2n")
    table, payload = split(path)
    bad = bytearray(payload)
    bad[0:4] = np.array([np.nan], dtype="<f4").tobytes()
    table["__metadata__"]["payload_sha256"] = hashlib.sha256(bad).hexdigest()
    path.write_bytes(join(table, bytes(bad)))
    with pytest.raises(ScoreFileError, match="1 NaN"):
        load_scores(path)


def test_save_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="1-D"):
        save_scores(tmp_path / "x", torch.zeros(2, 3), method="el2n")
    with pytest.raises(ValueError, match="method"):
        save_scores(tmp_path / "x", torch.zeros(3), method="")
    with pytest.raises(ValueError, match="JSON"):
        save_scores(tmp_path / "x", torch.zeros(3), method="el2n", extra={"t": torch.zeros(1)})
    with pytest.raises(ValueError, match="JSON"):
        save_scores(tmp_path / "x", torch.zeros(3), method="el2n", extra={"f": float("nan")})
    with pytest.raises(ValueError, match="not both"):
        save_scores(
            tmp_path / "x", torch.zeros(3), method="el2n", labels=[0, 1, 2], label_fingerprint="sha256:0"
        )
    with pytest.raises(ValueError, match="`labels` has 2 entries but `scores` has 3"):
        save_scores(tmp_path / "x", torch.zeros(3), method="el2n", labels=[0, 1])
    with pytest.raises(ValueError, match="epoch"):
        save_scores(tmp_path / "x", torch.zeros(3), method="el2n", epoch=1.5)
    assert list(tmp_path.iterdir()) == []


def test_failed_replace_keeps_the_previous_file_and_leaves_no_temp_files(tmp_path, monkeypatch):
    first = some_scores(1)
    path = save_scores(tmp_path / "run.scores", first, method="el2n", epoch=1)

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(store.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        save_scores(path, some_scores(2), method="el2n", epoch=2)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["run.scores"]
    sf = load_scores(path)
    assert torch.equal(sf.scores, first) and sf.epoch == 1


def test_failed_write_leaves_no_temp_files(tmp_path, monkeypatch):
    def broken_fsync(fd):
        raise OSError("fsync failed")

    monkeypatch.setattr(store.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="fsync failed"):
        save_scores(tmp_path / "run.scores", some_scores(), method="el2n")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------ averaging


def test_average_matches_a_hand_computation(tmp_path):
    labels = labels_of()
    runs = [some_scores(s) for s in range(3)]
    runs[0][4] = float("inf")
    paths = [
        save_scores(tmp_path / f"el2n_s{s}", r, method="el2n", epoch=20, seed=s, labels=labels)
        for s, r in enumerate(runs)
    ]
    paths[2] = save_scores(tmp_path / "el2n_s2", runs[2], method="el2n", epoch=20, seed=2)  # no fingerprint
    avg = average_scores([paths[0], load_scores(paths[1]), str(paths[2])])
    expected = ((runs[0].double() + runs[1].double() + runs[2].double()) / 3).float()
    assert avg.scores.dtype == torch.float32
    assert torch.equal(avg.scores, expected)
    assert torch.isinf(avg.scores[4])
    assert (avg.method, avg.epoch, avg.seed, avg.path) == ("el2n", 20, None, None)
    assert avg.label_fingerprint == label_fingerprint(labels)
    assert avg.extra == {"runs": 3, "seeds": [0, 1, 2], "sources": [str(p) for p in paths]}
    single = average_scores([paths[1]])
    assert torch.equal(single.scores, runs[1]) and single.extra["runs"] == 1
    assert torch.equal(average_scores(paths[1]).scores, runs[1])  # a bare path is one file, not a sequence


def test_average_refuses_incompatible_files(tmp_path):
    a = save_scores(tmp_path / "a", some_scores(0), method="el2n", epoch=20, labels=labels_of())
    grand = save_scores(tmp_path / "g", some_scores(1), method="grand", epoch=20, labels=labels_of())
    other = save_scores(tmp_path / "o", some_scores(2), method="el2n", epoch=20, labels=labels_of(shift=1))
    short = save_scores(tmp_path / "s", some_scores(3, N - 1), method="el2n", epoch=20)
    late = save_scores(tmp_path / "l", some_scores(4), method="el2n", epoch=30, labels=labels_of())
    with pytest.raises(ScoreFileError, match=r"(?s)method differs from 'el2n'.*g\.scores: method 'grand'"):
        average_scores([a, grand])
    with pytest.raises(ScoreFileError, match=r"(?s)label fingerprint differs.*o\.scores"):
        average_scores([a, other])
    with pytest.raises(
        ScoreFileError, match=rf"(?s)num_samples differs from {N}.*s\.scores: num_samples {N - 1}"
    ):
        average_scores([a, short])
    with pytest.raises(
        ScoreFileError, match=r"(?s)different epochs.*l\.scores: epoch 30.*allow_mixed_epochs=True"
    ):
        average_scores([a, late])
    mixed = average_scores([a, late], allow_mixed_epochs=True)
    assert mixed.epoch is None and mixed.extra["runs"] == 2
    with pytest.raises(ValueError, match="at least one"):
        average_scores([])


def test_average_refuses_opposite_infinities_and_warns_on_duplicates(tmp_path):
    x, y = some_scores(0), some_scores(1)
    x[0], y[0] = float("inf"), float("-inf")
    with pytest.raises(ScoreFileError, match=r"\+inf in one run and -inf"):
        average_scores([scores_from(x), scores_from(y)])
    p = save_scores(tmp_path / "a", some_scores(), method="el2n")
    with pytest.warns(UserWarning, match="passed twice"):
        average_scores([p, p])


def test_check_compatible_against_expected_values(tmp_path):
    fp = label_fingerprint(labels_of())
    files = [
        load_scores(save_scores(tmp_path / "a", some_scores(0), method="el2n", labels=labels_of())),
        load_scores(save_scores(tmp_path / "b", some_scores(1), method="el2n")),
    ]
    check_compatible(files, num_samples=N, label_fingerprint=fp, method="el2n")
    check_compatible([])
    with pytest.raises(ScoreFileError, match=rf"num_samples differs from {N + 1} \(expected\)"):
        check_compatible(files, num_samples=N + 1)
    with pytest.raises(ScoreFileError, match=r"(?s)label fingerprint differs.*a\.scores"):
        check_compatible(files, label_fingerprint=label_fingerprint(labels_of(shift=3)))
    with pytest.raises(ScoreFileError, match=r"(?s)method differs from 'forgetting'.*a\.scores.*b\.scores"):
        check_compatible(files, method="forgetting")


# ---------------------------------------------------------------------------------------------- scores_from


def test_scores_from_tensor_path_file_and_list(tmp_path):
    t = some_scores()
    sf = scores_from(t, expected_num_samples=N, expected_fingerprint="sha256:whatever")
    assert isinstance(sf, ScoreFile) and sf.method == "tensor" and sf.label_fingerprint is None
    assert torch.equal(sf.scores, t)
    labels = labels_of()
    p0 = save_scores(tmp_path / "a", some_scores(0), method="el2n", epoch=1, labels=labels)
    p1 = save_scores(tmp_path / "b", some_scores(1), method="el2n", epoch=1, labels=labels)
    fp = label_fingerprint(labels)
    assert torch.equal(
        scores_from(str(p0), expected_num_samples=N, expected_fingerprint=fp).scores, some_scores(0)
    )
    assert scores_from(p0).path == p0
    loaded = load_scores(p1)
    assert scores_from(loaded) is loaded
    avg = scores_from([str(p0), p1], expected_num_samples=N, expected_fingerprint=fp)
    assert torch.equal(avg.scores, ((some_scores(0).double() + some_scores(1).double()) / 2).float())
    assert avg.extra["runs"] == 2
    assert scores_from((p0,)).extra["runs"] == 1


def test_scores_from_refuses_another_dataset(tmp_path):
    p = save_scores(tmp_path / "a", some_scores(), method="el2n", labels=labels_of())
    with pytest.raises(
        ScoreFileError,
        match=rf"scores have {N} entries but the training set has {N + 5} items; the scores were computed on a "
        "different dataset or split",
    ):
        scores_from(p, expected_num_samples=N + 5)
    with pytest.raises(ScoreFileError, match="scores have 50 entries but the training set has 10 items"):
        scores_from(some_scores(), expected_num_samples=10)
    with pytest.raises(
        ScoreFileError,
        match=r"label fingerprint differs: this score file was computed on a different dataset \(or labels\); "
        "recompute the scores on this dataset",
    ):
        scores_from(p, expected_fingerprint=label_fingerprint(labels_of(shift=1)))
    with pytest.raises(TypeError, match="tensor"):
        scores_from([0.1, 0.2])
    with pytest.raises(TypeError):
        scores_from(3.0)
    with pytest.raises(ValueError, match="empty"):
        scores_from([])
