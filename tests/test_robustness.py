"""The bad-input catalogue of docs/robustness.md: each case gives a clear error or a documented behaviour.

Every test names its catalogue id (B = batches, T = targets, O = model outputs, N = NaN/inf, E = scoring epochs,
F = frozen parameters, R = randomness, S = score files, A = averaging/applying files, Z = empty, L = lengths that
change, X = security). The fault tests (kills) are in tests/test_faults.py.
"""

from __future__ import annotations

import copy
import json
import pickle
import socket
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_datadiet import (
    EL2NCallback,
    ForgettingCallback,
    GraNdCallback,
    PrunedDataModule,
    ScoreFileError,
    average_scores,
    el2n,
    grand,
    load_scores,
    save_scores,
    selection,
)
from lightning_datadiet.store import label_fingerprint, scores_from

from tiny import (
    ScriptedModule,
    TinyDataModule,
    TinyModule,
    TinyNet,
    expected_forgetting,
    make_data,
    scripted_data,
)

N = 16


def _fit(tmp_path, callbacks, model, *, dm=None, loader=None, max_epochs=1, ckpt_path=None, **kwargs):
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", False)
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )
    if dm is not None:
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    else:
        trainer.fit(model, train_dataloaders=loader, ckpt_path=ckpt_path)
    return trainer


def _data(n=N):
    return make_data(n).tensors


class ListData(Dataset):
    """Items made by ``item(i, x_i, y_i)``."""

    def __init__(self, item, n=N):
        self.x, self.y = _data(n)
        self.item = item

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.item(i, self.x[i], self.y[i])


class BatchModule(TinyModule):
    """TinyModule whose training_step reads inputs/targets with ``get(batch)``."""

    def __init__(self, get, **kwargs):
        super().__init__(**kwargs)
        self.get = get

    def training_step(self, batch, batch_idx):
        x, y = self.get(batch)
        return nn.functional.cross_entropy(self(x), y)


def _loader(item, n=N, shuffle=True):
    return DataLoader(ListData(item, n), batch_size=8, shuffle=shuffle)


def _three(**kwargs):
    return [
        EL2NCallback(epochs=1, save=False, **kwargs),
        GraNdCallback(epochs=1, save=False, **kwargs),
        ForgettingCallback(save=False, **kwargs),
    ]


def _assert_matches_functional(model, callbacks, x, y):
    """EL2N/GraNd scored at the last batch of a 1-epoch fit equal the functional scores of the final weights."""
    net = copy.deepcopy(model.net).eval()
    with torch.no_grad():
        torch.testing.assert_close(callbacks[0].scores, el2n(net(x), y), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(callbacks[1].scores, grand(net, x, y), rtol=1e-4, atol=1e-6)
    assert callbacks[2].scores.shape == (len(y),)


# ------------------------------------------------------------------------------------------------ batches (B)


@pytest.mark.parametrize(
    "item,get",
    [
        # B1: dict with extra keys (an index, a string) next to the common names
        (lambda i, x, y: {"image": x, "label": y, "idx": i, "name": f"n{i}"}, lambda b: (b["image"], b["label"])),
        # B2: Hugging Face style names
        (lambda i, x, y: {"pixel_values": x, "labels": y}, lambda b: (b["pixel_values"], b["labels"])),
        # B4: tuple with extra fields after (inputs, targets)
        (lambda i, x, y: (x, y, i, {"meta": 1}), lambda b: (b[0], b[1])),
    ],
    ids=["B1-dict-extra-keys", "B2-dict-hf-names", "B4-tuple-extra-fields"],
)
def test_common_batch_forms_work(tmp_path, item, get):
    seed_everything(0)
    cbs = _three()
    model = BatchModule(get)
    _fit(tmp_path, cbs, model, loader=_loader(item))
    _assert_matches_functional(model, cbs, *_data())


def test_B3_dict_with_unknown_keys_needs_input_key(tmp_path):
    item = lambda i, x, y: {"inp": x, "tgt": y}  # noqa: E731
    get = lambda b: (b["inp"], b["tgt"])  # noqa: E731
    with pytest.raises(ValueError, match=r"Pass `input_key=` naming it"):
        _fit(tmp_path, [EL2NCallback(epochs=1, save=False)], BatchModule(get), loader=_loader(item))
    with pytest.raises(KeyError, match=r"without the targets key 'label'.*\['inp', 'tgt'\]"):
        _fit(tmp_path, [ForgettingCallback(save=False, input_key="inp", target_key="label")], BatchModule(get),
             loader=_loader(item))  # fmt: skip
    seed_everything(0)
    cbs = _three(input_key="inp", target_key="tgt")
    model = BatchModule(get)
    _fit(tmp_path, cbs, model, loader=_loader(item))
    _assert_matches_functional(model, cbs, *_data())


def test_B5_targets_first_needs_keys(tmp_path):
    item = lambda i, x, y: (y, x)  # noqa: E731
    get = lambda b: (b[1], b[0])  # noqa: E731
    with pytest.raises(ValueError, match=r"EL2NCallback \(pass `target_key=`/`input_key=`.*integer class ids"):
        _fit(tmp_path, [EL2NCallback(epochs=1, save=False)], BatchModule(get), loader=_loader(item))
    cbs = [EL2NCallback(epochs=1, save=False, input_key=1, target_key=0),
           ForgettingCallback(save=False, input_key=1, target_key=0)]  # fmt: skip
    _fit(tmp_path, cbs, BatchModule(get), loader=_loader(item))
    assert cbs[0].scores.shape == cbs[1].scores.shape == (N,)


@pytest.mark.parametrize("callback", [EL2NCallback(epochs=1, save=False), ForgettingCallback(save=False)],
                         ids=["el2n", "forgetting"])  # fmt: skip
def test_B6_bare_tensor_batches_are_refused(tmp_path, callback):
    module = BatchModule(lambda b: (b, torch.zeros(len(b), dtype=torch.long)))
    with pytest.raises(TypeError, match=r"Unsupported batch type Tensor.*Make the dataset return one of these forms"):
        _fit(tmp_path, [callback], module, loader=_loader(lambda i, x, y: x))


def test_B7_one_element_tuple_is_refused(tmp_path):
    module = BatchModule(lambda b: (b[0], torch.zeros(len(b[0]), dtype=torch.long)))
    with pytest.raises(TypeError, match=r"list of length 1; expected \(inputs, targets, \.\.\.\)"):
        _fit(tmp_path, [EL2NCallback(epochs=1, save=False)], module, loader=_loader(lambda i, x, y: (x,)))


class TwoInputs(TinyModule):
    """forward takes a dict of two tensors."""

    def forward(self, inputs):
        return self.net(inputs["a"] - inputs["b"])

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0]), batch[1])


def test_B8_nested_inputs_work_for_all_three(tmp_path):
    seed_everything(0)
    cbs = _three()
    model = TwoInputs()
    _fit(tmp_path, cbs, model, loader=_loader(lambda i, x, y: ({"a": x, "b": x * 0.5}, y)))
    x, y = _data()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(cbs[0].scores, el2n(model({"a": x, "b": x * 0.5}), y), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cbs[1].scores, grand(model, {"a": x, "b": x * 0.5}, y), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cbs[1].scores, grand(model.net, x * 0.5, y), rtol=1e-4, atol=1e-6)


def test_B8_non_tensor_model_inputs_are_refused_by_grand():
    with pytest.raises(TypeError, match=r"grand: inputs must be a tensor.*holding Tensor, str.*`input_key=`"):
        grand(TinyNet(), {"a": torch.zeros(2, 2, 4, 4), "name": "x"}, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="batch size as its first dimension"):
        grand(TinyNet(), (torch.zeros(2, 2, 4, 4), torch.zeros(3, 1)), torch.tensor([0, 1]))


# ------------------------------------------------------------------------------------------------ targets (T)


def _targets_fit(tmp_path, callback, targets):
    x, _ = _data()
    dm = TinyDataModule(n=N)
    dm.dataset = TensorDataset(x, targets)
    _fit(tmp_path, [callback], BatchModule(lambda b: (b[0], torch.zeros(len(b[0]), dtype=torch.long))), dm=dm)


_, _Y = _data()


@pytest.mark.parametrize(
    "targets,error,match",
    [
        (_Y.float(), ValueError, r"integer class ids of shape \[B\], got dtype torch.float32"),  # T1
        (nn.functional.one_hot(_Y, 3), ValueError, r"One-hot labels are not supported: pass `targets.argmax\(1\)`"),
        (_Y[:, None], ValueError, r"shape \[B\] = \[8\], got \(8, 1\).*targets.squeeze\(1\)"),  # T3
        (_Y + 3, ValueError, r"must lie in \[0, 3\) for 3 logits, found values in \[[3-5], [3-5]\]"),  # T4
        (_Y - 1, ValueError, r"must lie in \[0, 3\) for 3 logits, found values in \[-1, "),  # T4 (ignore index)
        (_Y.bool(), ValueError, r"integer class ids.*torch.bool"),  # T6
    ],
    ids=["T1-float", "T2-one-hot", "T3-column", "T4-too-large", "T4-negative", "T6-bool"],
)
@pytest.mark.parametrize("make", [lambda: EL2NCallback(epochs=1, save=False), lambda: GraNdCallback(epochs=1, save=False),
                                  lambda: ForgettingCallback(save=False)], ids=["el2n", "grand", "forgetting"])  # fmt: skip
def test_T_bad_targets_are_refused(tmp_path, make, targets, error, match):
    with pytest.raises(error, match=match):
        _targets_fit(tmp_path, make(), targets)


def test_T5_string_labels_are_refused(tmp_path):
    module = BatchModule(lambda b: (b[0], torch.zeros(len(b[0]), dtype=torch.long)))
    loader = _loader(lambda i, x, y: (x, ["cat", "dog", "eel"][int(y)]))
    with pytest.raises(TypeError, match=r"targets are a (list|tuple) of str.*Map the labels to ints"):
        _fit(tmp_path, [EL2NCallback(epochs=1, save=False)], module, loader=loader)


# ------------------------------------------------------------------------------------------ model outputs (O)


class TupleOut(TinyModule):
    def forward(self, x):
        return self.net(x), x.mean()

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self(batch[0])[0], batch[1])


@pytest.mark.parametrize(
    "make,error,match",
    [
        (lambda **k: EL2NCallback(epochs=1, save=False, **k), TypeError, r"got tuple.*pass `logits_module=`"),
        (lambda **k: GraNdCallback(epochs=1, save=False, **k), ValueError, r"got tuple.*`logits_module=`"),
        (lambda **k: ForgettingCallback(save=False, **k), RuntimeError, r"saw no \[B, K\] logits.*logits_module='net'"),
    ],
    ids=["el2n", "grand", "forgetting"],
)
def test_O1_tuple_outputs_name_logits_module(tmp_path, make, error, match):
    with pytest.raises(error, match=match):
        _fit(tmp_path, [make()], TupleOut(), dm=TinyDataModule(n=N))
    cb = make(logits_module="net")
    _fit(tmp_path, [cb], TupleOut(), dm=TinyDataModule(n=N))
    assert cb.scores.shape == (N,)


class OutputAs(TinyModule):
    """Training uses the real logits; ``forward`` (what the scoring pass calls) returns ``shape(logits)``."""

    def __init__(self, shape):
        super().__init__()
        self.shape = shape

    def forward(self, x):
        return self.shape(self.net(x))

    def training_step(self, batch, batch_idx):
        return nn.functional.cross_entropy(self.net(batch[0]), batch[1])


@pytest.mark.parametrize(
    "shape,match",
    [
        (lambda z: z[:, 0], r"logits of shape \[B, K\].*got shape \(8,\)"),  # O2: 1-D
        (lambda z: z[:, :, None].expand(-1, -1, 5), r"\[B, K\].*got shape \(8, 3, 5\)"),  # O3: sequence outputs
        (lambda z: z[:, :1], r"K >= 2 classes.*torch.cat\(\[torch.zeros_like\(z\), z\], dim=1\)"),  # O4: one logit
        (lambda z: z.argmax(1, keepdim=True).expand(-1, 3), r"floating point.*torch.int64"),  # O5: integer outputs
        (lambda z: z[:4], r"4 rows for a batch of 8"),  # O7: wrong number of rows
    ],
    ids=["O2-1d", "O3-3d", "O4-one-logit", "O5-integer", "O7-rows"],
)
def test_O_outputs_that_are_not_logits(tmp_path, shape, match):
    with pytest.raises(ValueError, match=match):
        _fit(tmp_path, [EL2NCallback(epochs=1, save=False)], OutputAs(shape), dm=TinyDataModule(n=N))


def test_O6_probabilities_warn_and_log_probabilities_are_logits():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 4) * 3, torch.tensor([0, 1, 2, 3, 0, 1])
    with pytest.warns(UserWarning, match=r"look like probabilities.*double softmax"):
        el2n(logits.softmax(1), y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(el2n(logits.log_softmax(1), y), el2n(logits, y))
    net = nn.Sequential(nn.Linear(5, 4), nn.Softmax(dim=1))
    with pytest.warns(UserWarning, match="look like probabilities"):
        grand(net, torch.randn(3, 5), torch.tensor([0, 1, 2]))


# -------------------------------------------------------------------------------------------- NaN / inf (N)


class Poisoned(TinyModule):
    """Eval-mode logits are ``value`` for the examples whose first pixel is positive (training is clean)."""

    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        out = self.net(x)
        if not self.training:
            out = torch.where(x.flatten(1)[:, :1] > 0, torch.full_like(out, self.value), out)
        return out


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("make,what", [(EL2NCallback, "EL2NCallback"), (GraNdCallback, "grand")], ids=["el2n", "grand"])
def test_N1_nonfinite_logits_while_scoring(tmp_path, make, what, value):
    with pytest.raises(FloatingPointError, match=rf"{what}: [1-8] example\(s\) have NaN/inf logits.*Lower the learning rate"):
        _fit(tmp_path, [make(epochs=1, dirpath=tmp_path / "s")], Poisoned(value), dm=TinyDataModule(n=N))
    assert not (tmp_path / "s").exists() or not list((tmp_path / "s").iterdir())  # no file with bad scores


def test_N2_a_diverged_fit_stops_at_the_next_scoring(tmp_path):
    """A learning rate far too high drives the weights to inf/NaN: the next scoring refuses with the fix, and no
    score file holds the NaN scores."""
    seed_everything(0)
    cb = EL2NCallback(epochs=1, dirpath=tmp_path / "s")
    with pytest.raises(FloatingPointError, match=r"NaN/inf logits; the model diverged.*Lower the learning rate"):
        _fit(tmp_path, [cb], TinyModule(lr=1e30), dm=TinyDataModule(n=N))
    assert cb.scores is None and not list(tmp_path.glob("s/*"))


class SqrtAtZero(nn.Module):
    """Finite logits whose gradient is NaN: d/dp sqrt(p^2) at p = 0 is 0/0."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.p = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.lin(x) + torch.sqrt(self.p**2)


def test_N3_nan_gradients_with_finite_logits():
    with pytest.raises(FloatingPointError, match=r"grand: 2 example\(s\) have NaN/inf gradient norms.*float64"):
        grand(SqrtAtZero(), torch.randn(2, 3), torch.tensor([0, 1]))


class NaNEpoch(ScriptedModule):
    """The scripted predictions, except that every training logit is NaN during epoch ``bad``."""

    bad = 1

    def forward(self, x):
        out = super().forward(x)
        return out * float("nan") if self.trainer.current_epoch == self.bad else out

    def training_step(self, batch, batch_idx):
        self(batch[0])
        return self.dummy * 0.0


def test_N4_forgetting_skips_nan_presentations(tmp_path):
    n, epochs = 12, 3
    script = torch.rand(epochs, n, generator=torch.Generator().manual_seed(1)) > 0.5
    cb = ForgettingCallback(save=False)
    loader = DataLoader(scripted_data(n), batch_size=4, shuffle=True)
    with pytest.warns(UserWarning, match=r"12 presentation\(s\) this epoch had NaN/inf logits.*not counted"):
        _fit(tmp_path, [cb], NaNEpoch(script), loader=loader, max_epochs=epochs)
    # epoch 1 never happened for the counts: the sequence is epochs 0 and 2 only
    assert torch.equal(cb.scores, expected_forgetting(script[[0, 2]]))
    assert cb.skipped_presentations == n


# ------------------------------------------------------------------------------------------ scoring epochs (E)


def test_E1_scoring_epoch_beyond_max_epochs_warns_at_setup_and_at_the_end(tmp_path):
    cb = EL2NCallback(epochs=[1, 5], save=False)
    with pytest.warns(UserWarning) as record:
        _fit(tmp_path, [cb], TinyModule(), dm=TinyDataModule(n=N), max_epochs=2)
    messages = [str(r.message) for r in record]
    assert any("[5] lie beyond Trainer(max_epochs=2)" in m and "Lower `epochs`" in m for m in messages)
    assert any("scoring epoch(s) [5] never ran" in m for m in messages)
    assert sorted(cb.scores_by_epoch) == [1]


def test_E2_step_limited_fit_warns_at_the_end(tmp_path):
    cb = EL2NCallback(epochs=3, save=False)
    with pytest.warns(UserWarning, match=r"scoring epoch\(s\) \[3\] never ran. Train longer"):
        _fit(tmp_path, [cb], TinyModule(), dm=TinyDataModule(n=N), max_epochs=None, max_steps=3)
    assert cb.scores is None


# ----------------------------------------------------------------------------------------- frozen params (F)


class FrozenConv(TinyModule):
    def __init__(self):
        super().__init__()
        self.net.conv.requires_grad_(False)


def _naive_grand(net, x, y):
    params = [p for p in net.parameters() if p.requires_grad]
    out = []
    for i in range(len(y)):
        loss = nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1])
        out.append(torch.sqrt(sum((g**2).sum() for g in torch.autograd.grad(loss, params))))
    return torch.stack(out)


def test_F1_grand_counts_trainable_parameters_only(tmp_path):
    seed_everything(0)
    model, cb = FrozenConv(), GraNdCallback(epochs=1, save=False)
    conv_before = copy.deepcopy(model.net.conv.state_dict())
    _fit(tmp_path, [cb], model, dm=TinyDataModule(n=N))
    assert all(torch.equal(v, conv_before[k]) for k, v in model.net.conv.state_dict().items())
    x, y = _data()
    net = copy.deepcopy(model.net).eval()
    torch.testing.assert_close(cb.scores, _naive_grand(net, x, y), rtol=1e-4, atol=1e-6)
    net.conv.requires_grad_(True)
    assert (cb.scores < _naive_grand(net, x, y)).all()  # the frozen conv's gradients are not in the norm


def test_F2_all_parameters_frozen_is_refused(tmp_path):
    model = TinyModule()
    model.net.fc.requires_grad_(False)
    model.net.conv.requires_grad_(False)  # bn stays trainable so that the fit can run
    with pytest.raises(ValueError, match="no parameter with requires_grad=True"):
        _fit(tmp_path, [GraNdCallback(epochs=1, save=False, logits_module="net.fc")],
             model, dm=TinyDataModule(n=N))  # fmt: skip


# -------------------------------------------------------------------------------------------- randomness (R)


class DropoutModule(TinyModule):
    def __init__(self):
        super().__init__(lr=0.2)
        self.net = nn.Sequential(TinyNet(), nn.Dropout(0.5))
        self.train_modes = []

    def training_step(self, batch, batch_idx):
        self.train_modes.append(self.training and self.net[1].training)
        return super().training_step(batch, batch_idx)


def test_R1_dropout_is_off_while_scoring_so_scorings_agree(tmp_path):
    seed_everything(0)
    model = DropoutModule()
    cbs = [EL2NCallback(epochs=[1, 2], save=False), EL2NCallback(epochs=2, save=False),
           GraNdCallback(epochs=[1, 2], save=False), GraNdCallback(epochs=2, save=False)]  # fmt: skip
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*drew random numbers.*")
        _fit(tmp_path, cbs, model, dm=TinyDataModule(n=N), max_epochs=2)
    assert torch.equal(cbs[0].scores, cbs[1].scores) and torch.equal(cbs[2].scores, cbs[3].scores)
    assert all(model.train_modes)  # training after a scoring pass is back in train mode (dropout on)
    x, y = _data()
    net = copy.deepcopy(model.net).eval()
    with torch.no_grad():
        torch.testing.assert_close(cbs[0].scores, el2n(net(x), y), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cbs[2].scores, grand(net, x, y), rtol=1e-4, atol=1e-6)


def test_R2_scoring_does_not_change_training(tmp_path):
    """The scoring pass forks the RNG: with dropout and a shuffling loader, training is bit-identical with and
    without the callbacks."""

    def run(callbacks):
        seed_everything(4)
        model = DropoutModule()
        _fit(tmp_path, callbacks, model, dm=TinyDataModule(n=N), max_epochs=2)
        return model

    with_cbs = run([EL2NCallback(epochs=[0, 1], save=False), GraNdCallback(epochs=1, save=False),
                    ForgettingCallback(save=False)])  # fmt: skip
    without = run([])
    for a, b in zip(with_cbs.parameters(), without.parameters()):
        assert torch.equal(a, b)


class NoisyInEval(TinyModule):
    def forward(self, x):
        return self.net(x + 0.1 * torch.randn_like(x))


def test_R3_randomness_in_eval_mode(tmp_path):
    with pytest.raises(RuntimeError, match=r"draws random numbers in eval mode.*depend on `self.training`"):
        _fit(tmp_path, [GraNdCallback(epochs=1, save=False)], NoisyInEval(), dm=TinyDataModule(n=N))
    cb = EL2NCallback(epochs=1, save=False)
    with pytest.warns(UserWarning, match=r"EL2NCallback: the model drew random numbers in eval mode"):
        _fit(tmp_path, [cb], NoisyInEval(), dm=TinyDataModule(n=N))
    assert cb.scores.shape == (N,)


# ------------------------------------------------------------------------------------------- score files (S)


def _good_file(tmp_path, name="a.scores", n=N, method="el2n", epoch=1, seed=0, labels=None):
    scores = torch.rand(n, generator=torch.Generator().manual_seed(seed))
    labels = torch.arange(n) % 3 if labels is None else labels
    return save_scores(tmp_path / name, scores, method=method, epoch=epoch, seed=seed, labels=labels)


def test_S1_truncated_files_are_refused(tmp_path):
    raw = _good_file(tmp_path).read_bytes()
    for cut in (0, 5, 12, 40, len(raw) - 4 * N, len(raw) - 1):
        path = tmp_path / f"cut{cut}.scores"
        path.write_bytes(raw[:cut])
        with pytest.raises(ScoreFileError, match=r"truncated|not a lightning-datadiet score file") as err:
            load_scores(path)
        assert str(path) in str(err.value) and "Fix:" in str(err.value)


def test_S2_corrupted_files_are_refused(tmp_path):
    """On the 0.1.0 layout (the committed fixture); the safetensors layout: tests/test_store.py."""
    raw = bytearray((Path(__file__).parent / "fixtures" / "forgetting_epoch002_seed7_v0.1.0.scores").read_bytes())
    payload_byte = bytearray(raw)
    payload_byte[-3] ^= 0x40
    (tmp_path / "payload.scores").write_bytes(payload_byte)
    with pytest.raises(ScoreFileError, match=r"checksum mismatch.*Fix: recompute"):
        load_scores(tmp_path / "payload.scores")
    header = bytearray(raw)
    header[17] = ord("#")  # the header's opening brace
    (tmp_path / "header.scores").write_bytes(header)
    with pytest.raises(ScoreFileError, match=r"JSON header cannot be parsed"):
        load_scores(tmp_path / "header.scores")
    (tmp_path / "trailing.scores").write_bytes(bytes(raw) + b"\0\0\0\0")
    with pytest.raises(ScoreFileError, match=r"4 trailing bytes"):
        load_scores(tmp_path / "trailing.scores")
    new = _good_file(tmp_path)
    (tmp_path / "trailing_new.scores").write_bytes(new.read_bytes() + b"\0\0\0\0")
    with pytest.raises(ScoreFileError, match=r"4 trailing bytes"):
        load_scores(tmp_path / "trailing_new.scores")
    length = bytearray(raw)
    length[9:17] = struct.pack("<Q", 2**40)
    (tmp_path / "length.scores").write_bytes(length)
    with pytest.raises(ScoreFileError, match=r"header length field.*implausible"):
        load_scores(tmp_path / "length.scores")
    future = bytearray(raw)
    future[8] = 7
    (tmp_path / "future.scores").write_bytes(future)
    with pytest.raises(ScoreFileError, match=r"format version 7.*upgrade lightning-datadiet"):
        load_scores(tmp_path / "future.scores")


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_S3_pickled_files_are_refused_without_running_code(tmp_path):
    marker = tmp_path / "executed"
    (tmp_path / "p.scores").write_bytes(pickle.dumps(_Boom(str(marker)), protocol=2))
    torch.save({"scores": torch.zeros(3), "boom": _Boom(str(marker))}, tmp_path / "t.scores")
    with pytest.raises(ScoreFileError, match=r"is a pickle file.*unpickling can run arbitrary code"):
        load_scores(tmp_path / "p.scores")
    with pytest.raises(ScoreFileError, match=r"zip archive, probably written by torch.save.*arbitrary code"):
        load_scores(tmp_path / "t.scores")
    with pytest.raises(ScoreFileError):
        PrunedDataModule(TinyDataModule(n=N), str(tmp_path / "t.scores"), keep_fraction=0.5)
    assert not marker.exists()


def test_S4_foreign_files_are_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(N, dtype=np.float32))
    (tmp_path / "text.scores").write_text("0.1\n0.2\n")
    (tmp_path / "empty.scores").write_bytes(b"")
    (tmp_path / "json.scores").write_text(json.dumps({"scores": [0.1, 0.2]}))
    cases = {
        "a.npy": r"NumPy \.npy file",
        "text.scores": r"truncated \(or not a score file\)",
        "empty.scores": r"not a lightning-datadiet score file",
        "json.scores": r"not a lightning-datadiet score file",
        "missing.scores": r"no such score file",
        ".": r"is a directory",
    }
    for name, match in cases.items():
        with pytest.raises(ScoreFileError, match=match):
            load_scores(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        load_scores(tmp_path / "missing.scores")


def test_S5_loading_never_unpickles(tmp_path, monkeypatch):
    """X1: load_scores reads JSON and raw floats only; every unpickling entry point is booby-trapped."""

    def trap(*args, **kwargs):
        raise AssertionError("a score file load tried to unpickle")

    good = _good_file(tmp_path)
    (tmp_path / "p.scores").write_bytes(pickle.dumps([1.0, 2.0]))
    for target, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load"), (np, "load")]:
        monkeypatch.setattr(target, name, trap)
    assert load_scores(good).num_samples == N
    with pytest.warns(UserWarning, match="identical scores"):
        average_scores([good, good])
    with pytest.raises(ScoreFileError, match="pickle"):
        load_scores(tmp_path / "p.scores")


# --------------------------------------------------------------------------------- averaging / applying (A)


def test_A1_averaging_different_methods_datasets_or_epochs_is_refused(tmp_path):
    a = _good_file(tmp_path, "a.scores")
    grand_file = _good_file(tmp_path, "g.scores", method="grand", seed=1)
    other_labels = _good_file(tmp_path, "o.scores", seed=2, labels=(torch.arange(N) + 1) % 3)
    other_size = _good_file(tmp_path, "n.scores", n=N + 1, seed=3)
    other_epoch = _good_file(tmp_path, "e.scores", epoch=5, seed=4)
    with pytest.raises(ScoreFileError, match=r"(?s)method differs from 'el2n'.*g\.scores: method 'grand'"):
        average_scores([a, grand_file])
    with pytest.raises(ScoreFileError, match=r"(?s)label fingerprint differs.*different datasets"):
        average_scores([a, other_labels])
    with pytest.raises(ScoreFileError, match=r"(?s)num_samples differs from 16.*n\.scores: num_samples 17"):
        average_scores([a, other_size])
    with pytest.raises(ScoreFileError, match=r"(?s)different epochs.*allow_mixed_epochs=True"):
        average_scores([a, other_epoch])
    assert average_scores([a, other_epoch], allow_mixed_epochs=True).epoch is None
    with pytest.raises(ScoreFileError):  # the same refusals through PrunedDataModule's list-of-files form
        PrunedDataModule(TinyDataModule(n=N), [str(a), str(grand_file)], keep_fraction=0.5)


def test_A2_applying_a_file_of_another_dataset_is_refused(tmp_path):
    dm = TinyDataModule(n=N)
    labels = dm.dataset.tensors[1]
    right = _good_file(tmp_path, "right.scores", labels=labels)
    wrong = _good_file(tmp_path, "wrong.scores", labels=(labels + 1) % 3)
    assert PrunedDataModule(dm, str(right), keep_fraction=0.5).keep_count == N // 2
    with pytest.raises(ScoreFileError, match=r"computed on another training set.*check_fingerprint=False"):
        _ = PrunedDataModule(TinyDataModule(n=N), str(wrong), keep_fraction=0.5).kept_indices
    relaxed = PrunedDataModule(TinyDataModule(n=N), str(wrong), keep_fraction=0.5, check_fingerprint=False)
    assert relaxed.keep_count == N // 2
    with pytest.raises(ScoreFileError, match="label fingerprint differs"):
        scores_from(str(wrong), expected_fingerprint=label_fingerprint(labels))


# ------------------------------------------------------------------------------------------------- empty (Z)


def test_Z1_empty_training_set_is_skipped_without_scores(tmp_path):
    class Empty(TinyDataModule):
        def train_dataloader(self):
            x, y = _data()
            return DataLoader(TensorDataset(x[:0], y[:0]), batch_size=8)

    cbs = [EL2NCallback(epochs=[0, 1], dirpath=tmp_path / "s"), ForgettingCallback(dirpath=tmp_path / "s")]
    with pytest.warns(UserWarning, match="Total length of `DataLoader` across ranks is zero"):
        _fit(tmp_path, cbs, TinyModule(), dm=Empty())
    assert all(cb.scores is None for cb in cbs) and not (tmp_path / "s").exists()


def test_Z2_empty_scores_and_batches(tmp_path):
    with pytest.raises(ValueError, match="is empty: there is nothing to select from"):
        selection.highest(torch.empty(0), 1)
    with pytest.raises(ValueError, match="needs at least one score file"):
        average_scores([])
    with pytest.raises(ValueError, match="empty list of score files"):
        scores_from([])
    empty = load_scores(save_scores(tmp_path / "e", torch.empty(0), method="el2n"))  # N = 0 is a valid file
    assert empty.num_samples == 0
    assert el2n(torch.empty(0, 3), torch.empty(0, dtype=torch.long)).shape == (0,)
    assert grand(TinyNet(), torch.empty(0, 2, 4, 4), torch.empty(0, dtype=torch.long)).shape == (0,)


def test_Z3_empty_subsets_are_refused(tmp_path):
    scores = torch.rand(N)
    with pytest.raises(ValueError, match=r"`k`=0 as an int is a count and must lie in \[1, 16\]"):
        selection.highest(scores, 0)
    with pytest.raises(ValueError, match=r"`keep_fraction` must lie in \(0, 1\], got 0.0"):
        PrunedDataModule(TinyDataModule(n=N), scores, keep_fraction=0.0)
    tiny = PrunedDataModule(TinyDataModule(n=N), scores, keep_fraction=1e-9)
    assert tiny.keep_count == 1  # a positive fraction keeps at least one example


def test_Z4_examples_never_presented_get_never_learned(tmp_path):
    cb = ForgettingCallback(save=False)
    with pytest.warns(UserWarning, match=r"8 training example\(s\) were never presented"):
        _fit(tmp_path, [cb], TinyModule(), dm=TinyDataModule(n=N, seeded_sampler=True), limit_train_batches=1)
    assert int(torch.isinf(cb.scores).sum()) >= 8


# ------------------------------------------------------------------------------------- lengths change (L)


def test_L1_pruning_a_dataset_of_another_length(tmp_path):
    path = _good_file(tmp_path, n=N, labels=TinyDataModule(n=N).dataset.tensors[1])
    with pytest.raises(ValueError, match=r"hold 16 values but the training set of TinyDataModule has 17 examples"):
        _ = PrunedDataModule(TinyDataModule(n=N + 1), str(path), keep_fraction=0.5).kept_indices
    with pytest.raises(ScoreFileError, match="scores have 16 entries but the training set has 17"):
        scores_from(str(path), expected_num_samples=N + 1)


def test_L2_resuming_a_pruned_fit_on_another_length(tmp_path):
    dm = PrunedDataModule(TinyDataModule(n=N), torch.rand(N), keep_fraction=0.5)
    assert dm.keep_count == N // 2
    state = dm.state_dict()
    resumed = PrunedDataModule(TinyDataModule(n=N + 4), torch.rand(N + 4), keep_fraction=0.5)
    resumed.load_state_dict(state)
    with pytest.raises(ValueError, match=r"selected from 16 training examples but the training set now has 20"):
        _ = resumed.kept_indices


@pytest.mark.parametrize("make", [lambda: EL2NCallback(epochs=[1, 2], save=False), lambda: ForgettingCallback(save=False)],
                         ids=["el2n", "forgetting"])  # fmt: skip
def test_L3_resuming_scores_on_another_length(tmp_path, make):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    _fit(tmp_path, [make(), ckpt], TinyModule(), dm=TinyDataModule(n=N), enable_checkpointing=True)
    with pytest.raises(ValueError, match=r"(cover|covers) 16 .*training set (now )?has 20.*same dataset"):
        _fit(tmp_path, [make()], TinyModule(), dm=TinyDataModule(n=N + 4), max_epochs=2,
             ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))  # fmt: skip


def test_L4_scoring_dataset_of_another_length(tmp_path):
    x, y = _data(N - 1)
    cb = EL2NCallback(epochs=1, save=False, dataset=TensorDataset(x, y))
    with pytest.raises(ValueError, match=r"scoring dataset has 15 items but the training dataset has 16"):
        _fit(tmp_path, [cb], TinyModule(), dm=TinyDataModule(n=N))


# ---------------------------------------------------------------------------------------------- security (X)


def test_X2_method_and_seed_cannot_put_files_outside_dirpath(tmp_path):
    class Evil(EL2NCallback):
        method = "../../evil"

    with pytest.raises(ValueError, match=r"method name '\.\./\.\./evil' cannot be used in a file name"):
        Evil(epochs=1)
    for bad in ("a/b", "a\\b", ".hidden", "..", "", "el2n ema"):
        Evil.method = bad
        with pytest.raises(ValueError, match="cannot be used in a file name"):
            Evil(epochs=1)
    with pytest.raises(ValueError, match=r"`seed` must be an int or None, got '\.\./x'"):
        EL2NCallback(epochs=1, seed="../x")
    assert EL2NCallback(epochs=1, seed=np.int64(3)).seed == 3


def test_X3_files_stay_in_dirpath_and_symlinks_are_replaced_not_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    out = tmp_path / "run" / "sub" / ".." / "scores"  # a `..` in dirpath resolves like any path
    out.mkdir(parents=True)
    (out / "el2n_epoch001_seed7.scores").symlink_to(outside)
    cbs = [EL2NCallback(epochs=1, dirpath=out, seed=7), ForgettingCallback(dirpath=out, seed=7)]
    _fit(tmp_path, cbs, TinyModule(), dm=TinyDataModule(n=N))
    written = sorted(p.name for p in (tmp_path / "run" / "scores").iterdir())
    assert written == ["el2n_epoch001_seed7.scores", "forgetting_epoch001_seed7.scores"]
    assert outside.read_text() == "keep me"  # the link was replaced by the new file, its target untouched
    assert not (out / "el2n_epoch001_seed7.scores").is_symlink()
    assert load_scores(out / "el2n_epoch001_seed7.scores").method == "el2n"


def test_X4_no_network_access_at_run_time(tmp_path, monkeypatch):
    """Score, save, load, average and prune with every way of opening a connection booby-trapped."""
    calls = []

    def trap(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", trap)
    monkeypatch.setattr(socket.socket, "connect_ex", trap)
    monkeypatch.setattr(socket, "create_connection", trap)
    monkeypatch.setattr(socket, "getaddrinfo", trap)
    monkeypatch.setattr(socket, "gethostbyname", trap)
    cbs = [EL2NCallback(epochs=1, dirpath=tmp_path / "s", seed=0), GraNdCallback(epochs=1, dirpath=tmp_path / "s", seed=0),
           ForgettingCallback(dirpath=tmp_path / "s", seed=0)]  # fmt: skip
    _fit(tmp_path, cbs, TinyModule(), dm=TinyDataModule(n=N))
    avg = average_scores([cbs[0].score_paths[1]])
    pruned = PrunedDataModule(TinyDataModule(n=N), str(cbs[0].score_paths[1]), keep_fraction=0.5)
    assert avg.num_samples == N and pruned.keep_count == N // 2
    assert calls == []

