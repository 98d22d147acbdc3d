"""Training recipes shipped as presets of the ``datadiet`` study (``--model airbench``)."""

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

__all__ = [
    "AirbenchDataModule",
    "AirbenchModule",
    "AirbenchNet",
    "ImageTensorDataset",
    "apply_flip_translate",
    "batch_collate",
    "flip_translate",
    "patch_whitening",
]
