import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_datadiet.analysis import (
    BarrierSpawnCallback,
    barrier_subsets,
    plot_spawning_barriers,
    spawn_children,
    spawning_barriers,
    spawning_experiment,
)

_TRAINER = dict(
    max_epochs=3,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)


class _DM(LightningDataModule):
    def setup(self, stage):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(48, 4, generator=g)
        self.train = TensorDataset(x, (x[:, 0] > 0).long())

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=8, shuffle=True)


class _Net(LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)  # a constructor that seeds the global RNG must not make the children identical
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)


def test_spawn_callback_saves_parents_and_children_differ(tmp_path):
    seed_everything(0, verbose=False)
    spawn = BarrierSpawnCallback(tmp_path / "parents", epochs=[0, 2])
    parent = _Net()
    Trainer(callbacks=[spawn], **_TRAINER).fit(parent, datamodule=_DM())
    assert sorted(spawn.checkpoints) == [0, 2]
    assert all(p.exists() for p in spawn.checkpoints.values())
    state = spawn.state_dict()
    restored = BarrierSpawnCallback(tmp_path / "parents", epochs=[2, 0])
    restored.load_state_dict(state)
    assert restored.checkpoints == spawn.checkpoints and restored.state_key == spawn.state_key

    ckpt = torch.load(spawn.checkpoints[2], weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 12  # after two epochs of 6 steps

    a, b = spawn_children(spawn.checkpoints[2], _Net, _DM, seeds=(1, 2), trainer_kwargs=_TRAINER)
    # Same starting point, different data orders: different final weights.
    assert not torch.equal(a.net[0].weight, b.net[0].weight)
    a2 = spawn_children(spawn.checkpoints[2], _Net, _DM, seeds=(1,), trainer_kwargs=_TRAINER)[0]
    assert torch.equal(a.net[0].weight, a2.net[0].weight)  # reproducible by seed

    x = _DM()
    x.setup("fit")
    inputs, targets = x.train.tensors
    scores = torch.arange(48.0)
    subsets = {name: (inputs[idx], targets[idx]) for name, idx in barrier_subsets(scores, 16).items()}
    assert barrier_subsets(scores, 16)["highest"].tolist() == list(range(32, 48))
    result = spawning_barriers({2: (a, b), 0: (a, a)}, subsets, bn_data=(inputs, targets))
    assert result["t"] == [0, 2] and set(result["barrier"]) == {"lowest", "highest", "random"}
    assert all(result["barrier"][name][0] == 0.0 for name in subsets)  # identical children
    assert all(v >= 0.0 for values in result["barrier"].values() for v in values)
    assert plot_spawning_barriers(result, tmp_path / "b.png").exists()

    full = spawning_experiment(
        {2: spawn.checkpoints[2]}, _Net, _DM, subsets, trainer_kwargs=_TRAINER, bn_data=(inputs, targets)
    )
    assert full["barrier"]["lowest"] == [result["barrier"]["lowest"][1]]
