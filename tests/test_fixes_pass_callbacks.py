"""Issue 9: the pass callbacks (EL2N, GraNd) — augmentation detected by reading items twice, a progress bar for the
pass, a reused callback starts fresh, a cut-short epoch is not labelled completed, iterable datasets refused."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer, seed_everything
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lightning_datadiet import EL2NCallback, GraNdCallback, el2n, load_scores

from tiny import TinyDataModule, TinyModule, make_data

N = 40


def _trainer(tmp_path, callbacks, **kwargs):
    kwargs.setdefault("max_epochs", 1)
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_progress_bar", False)
    return Trainer(default_root_dir=tmp_path, accelerator="cpu", devices=1, callbacks=callbacks,
                   enable_checkpointing=False, enable_model_summary=False, **kwargs)


class DictDataset(Dataset):
    """The Hugging Face style: items are dicts; `noise` adds a user's own random transform."""

    def __init__(self, base, noise: bool) -> None:
        self.base, self.noise = base, noise

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        if self.noise:
            x = x + 0.1 * torch.randn_like(x)
        return {"image": x, "label": y}


class DictModule(TinyModule):
    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self(batch["image"]), batch["label"])


class DictDataModule(LightningDataModule):
    def __init__(self, noise: bool, score_view: bool = False) -> None:
        super().__init__()
        self.train_set = DictDataset(make_data(N), noise)
        self.clean = DictDataset(make_data(N), False) if score_view else None

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=8, shuffle=True)

    def score_dataset(self):
        return self.clean


def _augmentation_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "returns different inputs" in str(w.message)]


# ------------------------------------------------------------------------------------------- item 2: augmentation


def test_random_transform_in_a_dict_dataset_is_detected(tmp_path):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _trainer(tmp_path, [EL2NCallback(epochs=1, save=False)]).fit(DictModule(), datamodule=DictDataModule(True))
    found = _augmentation_warnings(record)
    assert len(found) == 1 and "score_dataset()" in found[0] and "`dataset=`" in found[0]


@pytest.mark.parametrize("score_view", [False, True])
def test_no_warning_for_deterministic_items_or_a_clean_score_dataset(tmp_path, score_view):
    dm = DictDataModule(noise=score_view, score_view=score_view)  # noisy training set, but a clean score_dataset()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _trainer(tmp_path, [EL2NCallback(epochs=1, save=False)]).fit(DictModule(), datamodule=dm)
    assert _augmentation_warnings(record) == []


def test_a_noisy_dataset_passed_as_dataset_is_also_detected(tmp_path):
    cb = EL2NCallback(epochs=1, save=False, dataset=DictDataset(make_data(N), True))
    with pytest.warns(UserWarning, match="the `dataset=` given returns different inputs"):
        _trainer(tmp_path, [cb]).fit(DictModule(), datamodule=DictDataModule(False))


def test_the_double_read_does_not_change_training(tmp_path):
    """The check reads items with every RNG restored: a fit with the callback trains bit-identically."""
    finals = []
    for callbacks in ([], [EL2NCallback(epochs=1, save=False)]):
        seed_everything(3)
        model = DictModule()
        _trainer(tmp_path, callbacks, max_epochs=2).fit(model, datamodule=DictDataModule(True))
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(finals[0], finals[1])


# ----------------------------------------------------------------------------------------- item 8: progress bar


def test_the_pass_shows_a_progress_bar_and_logs_after_it(tmp_path, capsys):
    cb = EL2NCallback(epochs=1, save=False, batch_size=4)
    _trainer(tmp_path, [cb], enable_progress_bar=True).fit(TinyModule(), datamodule=TinyDataModule(n=N))
    err = capsys.readouterr().err
    assert "EL2NCallback (epoch 1)" in err and f"/{N // 4} [" in err  # a bar over the 10 scoring batches


# ------------------------------------------------------------------------------------- item 13: reuse for a new fit


@pytest.mark.parametrize("cls", [EL2NCallback, GraNdCallback])
def test_a_reused_callback_scores_the_second_fit(tmp_path, cls):
    cb = cls(epochs=0)
    seed_everything(0)
    first = TinyModule()
    _trainer(tmp_path / "a", [cb]).fit(first, datamodule=TinyDataModule(n=N))
    first_scores, first_path = cb.scores.clone(), cb.score_paths[0]

    seed_everything(1)
    second = TinyModule()
    reference = copy.deepcopy(second)  # epoch 0 = the weights at initialisation
    trainer = _trainer(tmp_path / "b", [cb])
    trainer.fit(second, datamodule=TinyDataModule(n=N))
    x, y = make_data(N).tensors
    if cls is EL2NCallback:
        expected = el2n(reference.eval()(x), y)
        assert torch.allclose(cb.scores, expected, atol=1e-6)
    assert not torch.allclose(cb.scores, first_scores)
    assert cb.score_paths[0] != first_path and str(cb.score_paths[0]).startswith(str(tmp_path / "b"))
    assert torch.equal(load_scores(cb.score_paths[0]).scores, cb.scores)
    assert torch.equal(load_scores(first_path).scores, first_scores)  # the first fit's file is left as it was


# ---------------------------------------------------------------------------------- item 16: a cut-short epoch


def test_max_steps_inside_an_epoch_does_not_label_it_completed(tmp_path):
    dm = TinyDataModule(n=52, batch_size=4)  # 13 batches per epoch
    cb = EL2NCallback(epochs=[1, 2], save=False)
    with pytest.warns(UserWarning, match=r"Epoch 2 was cut short .*after 1 of 13 batches"):
        _trainer(tmp_path, [cb], max_epochs=None, max_steps=14).fit(TinyModule(), datamodule=dm)
    assert sorted(cb.scores_by_epoch) == [1]


def test_limit_train_batches_still_completes_epochs(tmp_path):
    cb = EL2NCallback(epochs=[1, 2], save=False)
    _trainer(tmp_path, [cb], max_epochs=2, limit_train_batches=3).fit(TinyModule(), datamodule=TinyDataModule(n=N))
    assert sorted(cb.scores_by_epoch) == [1, 2]


# ------------------------------------------------------------------------------------ item 18: iterable datasets


class Stream(IterableDataset):
    def __iter__(self):
        yield from zip(*make_data(N).tensors)


@pytest.mark.parametrize("cls", [EL2NCallback, GraNdCallback])
def test_iterable_training_dataset_is_refused_clearly(tmp_path, cls):
    with pytest.raises(TypeError, match=f"{cls.__name__} needs a map-style training dataset.*iterable-style"):
        _trainer(tmp_path, [cls(epochs=1, save=False)]).fit(TinyModule(), DataLoader(Stream(), batch_size=8))
