"""The built-in demo setups of the ``datadiet`` study: DataModules (scikit-learn's digits, CIFAR-10 from local
files), small networks with a plain classification LightningModule, and the fast airbench CIFAR-10 recipe.
The preset YAML files in :mod:`lightning_datadiet.presets` refer to them by class path."""

from lightning_datadiet.demo.airbench import (
    AirbenchDataModule,
    AirbenchModule,
    AirbenchNet,
    ImageTensorDataset,
    apply_flip_translate,
    batch_collate,
    flip_translate,
    patch_whitening,
)
from lightning_datadiet.demo.data import (
    CIFAR10DataModule,
    DigitsDataModule,
    LabeledTensorDataset,
    load_cifar10_arrays,
    random_crop_flip,
)
from lightning_datadiet.demo.models import (
    MLP,
    MODEL_NAMES,
    ClassifierModule,
    DigitsCNN,
    SmallCNN,
    build_model,
    resnet18_cifar,
)

__all__ = [
    "AirbenchDataModule",
    "AirbenchModule",
    "AirbenchNet",
    "ImageTensorDataset",
    "apply_flip_translate",
    "batch_collate",
    "flip_translate",
    "patch_whitening",
    "CIFAR10DataModule",
    "DigitsDataModule",
    "LabeledTensorDataset",
    "load_cifar10_arrays",
    "random_crop_flip",
    "MLP",
    "MODEL_NAMES",
    "ClassifierModule",
    "DigitsCNN",
    "SmallCNN",
    "build_model",
    "resnet18_cifar",
]
