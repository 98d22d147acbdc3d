import math

import pytest
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_datadiet.analysis import (
    NoisyLabelDataModule,
    NoisyLabelDataset,
    corrupt_labels,
    label_noise,
    noise_detection,
    precision_recall_curve,
)


def _targets(n=1000, k=10):
    return torch.arange(n) % k


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("mode", ["uniform", "permute", "uniform_other"])
def test_exact_number_drawn_and_only_drawn_change(fraction, mode):
    y = _targets()
    noise = label_noise(y, fraction, mode, seed=3)
    assert noise.num_drawn == round(fraction * 1000)
    assert torch.equal(noise.original_targets, y)
    # Nothing outside the drawn set changes; the mask is exactly "label changed".
    assert torch.equal(noise.targets[~noise.drawn], y[~noise.drawn])
    assert torch.equal(noise.corrupted_mask, noise.targets != y)
    assert not (noise.corrupted_mask & ~noise.drawn).any()
    assert noise.targets.dtype == torch.long and noise.corrupted_mask.dtype == torch.bool
    new, mask = corrupt_labels(y, fraction, mode, seed=3)
    assert torch.equal(new, noise.targets) and torch.equal(mask, noise.corrupted_mask)


def test_uniform_other_changes_exactly_the_fraction():
    y = _targets()
    _, mask = corrupt_labels(y, 0.3, "uniform_other", seed=0)
    assert int(mask.sum()) == 300


def test_uniform_keeps_about_one_in_k_by_chance():
    # Uniform over K classes: a drawn example keeps its label with probability 1/K (stated in the docs).
    y = torch.arange(20000) % 10
    noise = label_noise(y, 0.5, "uniform", seed=0)
    kept = noise.num_drawn - noise.num_corrupted
    assert noise.num_drawn == 10000
    assert abs(kept / 10000 - 0.1) < 0.02
    assert noise.targets.min() >= 0 and noise.targets.max() <= 9


def test_permute_keeps_the_multiset_of_labels():
    y = torch.randint(0, 7, (500,), generator=torch.Generator().manual_seed(0))
    noise = label_noise(y, 0.4, "permute", seed=1)
    assert torch.equal(torch.bincount(noise.targets, minlength=7), torch.bincount(y, minlength=7))
    assert torch.equal(
        torch.bincount(noise.targets[noise.drawn], minlength=7), torch.bincount(y[noise.drawn], minlength=7)
    )
    assert noise.num_corrupted < noise.num_drawn  # some keep their label (same-class swaps)


@pytest.mark.parametrize("mode", ["uniform", "permute", "uniform_other"])
def test_reproducible_by_seed(mode):
    y = _targets()
    a = corrupt_labels(y, 0.2, mode, seed=5)
    b = corrupt_labels(y.tolist(), 0.2, mode, seed=5)
    c = corrupt_labels(y, 0.2, mode, seed=6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_num_classes_and_errors():
    y = torch.zeros(100, dtype=torch.long)
    new, _ = corrupt_labels(y, 1.0, "uniform", seed=0, num_classes=5)
    assert set(new.tolist()) <= set(range(5)) and len(set(new.tolist())) > 1
    with pytest.raises(ValueError, match="fraction"):
        corrupt_labels(y, 1.5)
    with pytest.raises(ValueError, match="mode"):
        corrupt_labels(y, 0.1, mode="flip")
    with pytest.raises(ValueError, match="num_classes"):
        corrupt_labels(torch.tensor([0, 7]), 0.5, num_classes=3)
    with pytest.raises(ValueError, match="integer"):
        corrupt_labels(torch.rand(4), 0.5)


class _DictDataset(Dataset):
    def __init__(self, n=20):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": torch.full((2,), float(i)), "label": i % 4, "index": i}


def test_noisy_dataset_tuple_and_dict_items():
    x = torch.randn(40, 3)
    y = torch.arange(40) % 4
    ds = NoisyLabelDataset(TensorDataset(x, y, torch.arange(40)), 0.5, "uniform_other", seed=0)
    assert len(ds) == 40 and int(ds.corrupted_mask.sum()) == 20
    assert torch.equal(ds.original_targets, y)
    for i in range(40):
        xi, yi, idx = ds[i]
        assert torch.equal(xi, x[i]) and int(idx) == i
        assert isinstance(yi, torch.Tensor) and yi.dtype == y.dtype and int(yi) == int(ds.targets[i])

    dd = NoisyLabelDataset(_DictDataset(), 0.5, "permute", seed=0)
    item = dd[3]
    assert set(item) == {"image", "label", "index"} and isinstance(item["label"], int)
    assert [dd[i]["label"] for i in range(20)] == dd.targets.tolist()


class _TinyDM(LightningDataModule):
    def __init__(self):
        super().__init__()
        self.calls = []
        self.custom = "hello"

    def prepare_data(self):
        self.calls.append("prepare")

    def setup(self, stage):
        self.calls.append(f"setup:{stage}")
        g = torch.Generator().manual_seed(0)
        self.train = TensorDataset(torch.randn(64, 4, generator=g), torch.arange(64) % 3)
        self.val = TensorDataset(torch.randn(16, 4, generator=g), torch.arange(16) % 3)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=8, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=4)


class _Linear(LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)
        self.seen = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append(y)
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_noisy_datamodule_only_train_labels_change():
    inner = _TinyDM()
    dm = NoisyLabelDataModule(inner, 0.5, mode="uniform_other", seed=1)
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.batch_size == 8 and loader.drop_last
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)
    assert int(dm.corrupted_mask.sum()) == 32
    assert torch.equal(dm.original_targets, inner.train.tensors[1])
    assert dm.val_dataloader().dataset is inner.val
    assert dm.custom == "hello"  # attribute pass-through
    assert inner.calls == ["prepare", "setup:fit"]
    # The noise is stable across calls (reload_dataloaders_every_n_epochs).
    first = dm.targets.clone()
    dm.train_dataloader()
    assert torch.equal(dm.targets, first)

    model = _Linear()
    trainer = Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    seen = torch.cat(model.seen)
    assert seen.numel() == 64
    assert torch.equal(torch.sort(seen).values, torch.sort(dm.targets).values)


def test_noisy_datamodule_needs_train_loader_first():
    dm = NoisyLabelDataModule(_TinyDM(), 0.1)
    with pytest.raises(RuntimeError, match="train_dataloader"):
        _ = dm.corrupted_mask


def test_noise_detection_hand_made():
    scores = torch.tensor([0.9, 0.1, 0.8, 0.2, float("inf"), 0.5])
    mask = torch.tensor([True, False, False, True, True, False])
    # Ranking: 4 (inf), 0, 2, 5, 3, 1.
    r = noise_detection(scores, mask, top=2)
    assert r["precision"] == 1.0 and r["recall"] == pytest.approx(2 / 3) and r["k"] == 2
    r = noise_detection(scores, mask, top=0.5)  # k = 3
    assert r["k"] == 3 and r["true_positives"] == 2 and r["precision"] == pytest.approx(2 / 3)
    assert r["base_rate"] == 0.5
    r = noise_detection(scores, mask, top=6)
    assert r["precision"] == 0.5 and r["recall"] == 1.0
    assert math.isnan(noise_detection(scores, mask, top=0)["precision"])
    assert math.isnan(noise_detection(scores, torch.zeros(6, dtype=torch.bool), top=2)["recall"])
    with pytest.raises(ValueError):
        noise_detection(scores, mask, top=7)
    with pytest.raises(ValueError, match="NaN"):
        noise_detection(torch.tensor([float("nan"), 1.0]), torch.tensor([True, False]))


def test_noise_detection_ties_by_index():
    scores = torch.ones(4)
    mask = torch.tensor([False, True, True, False])
    assert noise_detection(scores, mask, top=1)["true_positives"] == 0
    assert noise_detection(scores, mask, top=2)["true_positives"] == 1


def test_precision_recall_curve_matches_detection():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(50, generator=g)
    mask = torch.rand(50, generator=g) < 0.3
    precision, recall, fractions = precision_recall_curve(scores, mask)
    assert precision.shape == recall.shape == fractions.shape == (50,)
    for k in (1, 7, 25, 50):
        r = noise_detection(scores, mask, top=k)
        assert precision[k - 1].item() == pytest.approx(r["precision"])
        assert recall[k - 1].item() == pytest.approx(r["recall"])
        assert fractions[k - 1].item() == pytest.approx(k / 50)
    assert recall[-1] == 1.0


def test_noise_draw_is_unrelated_to_a_plain_randperm_with_the_same_seed():
    y = _targets()
    noise = label_noise(y, 0.2, "permute", seed=0)
    random_subset = torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:200]
    assert noise.drawn[random_subset].float().mean() < 0.5


class _TrainOnlyDM(_TinyDM):
    """No val_dataloader and no batch hooks."""

    val_dataloader = LightningDataModule.val_dataloader


class _ValidatingLinear(_Linear):
    def __init__(self):
        super().__init__()
        self.hook_calls = 0

    def on_before_batch_transfer(self, batch, dataloader_idx):
        self.hook_calls += 1
        return batch


def test_noisy_datamodule_mirrors_which_hooks_the_wrapped_module_defines():
    from lightning.pytorch.utilities.model_helpers import is_overridden

    dm = NoisyLabelDataModule(_TrainOnlyDM(), 0.25, seed=0)
    assert not is_overridden("val_dataloader", dm) and not is_overridden("on_before_batch_transfer", dm)
    assert is_overridden("val_dataloader", NoisyLabelDataModule(_TinyDM(), 0.25))

    model = _ValidatingLinear()  # has validation_step, but the data has no val loader: validation is skipped
    trainer = Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=dm)
    assert model.hook_calls == 8  # the LightningModule's batch hook is used: 64 / 8 batches
    assert dm.datamodule.trainer is trainer and dm.trainer is trainer


def test_label_noise_lives_in_data_and_shares_the_wrapper_base_with_pruning():
    from lightning_datadiet import analysis
    from lightning_datadiet.analysis import noise as analysis_noise
    from lightning_datadiet.data import noise
    from lightning_datadiet.data.pruned import PrunedDataModule
    from lightning_datadiet.data.wrapper import DataModuleWrapper

    for name in ("LabelNoise", "label_noise", "corrupt_labels", "NoisyLabelDataset", "NoisyLabelDataModule"):
        assert getattr(analysis, name) is getattr(noise, name) is getattr(analysis_noise, name)
    assert issubclass(NoisyLabelDataModule, DataModuleWrapper) and issubclass(PrunedDataModule, DataModuleWrapper)
    for method in ("__getattr__", "state_dict", "hparams", "trainer"):  # one copy, in the base
        assert method not in NoisyLabelDataModule.__dict__, method
    inner = _TinyDM()
    inner.save_hyperparameters({"batch_size": 8})
    dm = NoisyLabelDataModule(inner, 0.25, mode="permute", seed=3)
    assert dm.hparams == inner.hparams
    settings = {"fraction": 0.25, "mode": "permute", "seed": 3, "num_classes": None}
    assert dm.hparams_initial == {"batch_size": 8, "datadiet_label_noise": settings}
