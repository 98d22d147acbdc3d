"""Analyses of the paper: label noise, score stability, kernel velocity and error barriers."""

from lightning_datadiet.analysis.noise import (
    LabelNoise,
    NoisyLabelDataModule,
    NoisyLabelDataset,
    corrupt_labels,
    label_noise,
    noise_detection,
    precision_recall_curve,
)

__all__ = [
    "LabelNoise",
    "NoisyLabelDataModule",
    "NoisyLabelDataset",
    "corrupt_labels",
    "label_noise",
    "noise_detection",
    "precision_recall_curve",
]
