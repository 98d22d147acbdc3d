"""Analyses of the paper: label noise, score stability, kernel velocity, error barriers and sliding windows."""

from lightning_datadiet.analysis.barrier import (
    classification_error,
    error_barrier,
    interpolate_state,
    update_bn_statistics,
)
from lightning_datadiet.analysis.noise import (
    LabelNoise,
    NoisyLabelDataModule,
    NoisyLabelDataset,
    corrupt_labels,
    label_noise,
    noise_detection,
    precision_recall_curve,
)
from lightning_datadiet.analysis.ntk import (
    empirical_ntk,
    kernel_velocity,
    plot_velocity_by_group,
    velocity_by_group,
    velocity_report,
)
from lightning_datadiet.analysis.spawn import (
    BarrierSpawnCallback,
    barrier_subsets,
    plot_spawning_barriers,
    spawn_children,
    spawning_barriers,
    spawning_experiment,
)
from lightning_datadiet.analysis.stability import (
    StabilityTable,
    plot_heatmap,
    rank_correlation,
    single_vs_mean,
    stability_report,
)
from lightning_datadiet.analysis.sweep import plot_sliding_window, sliding_window_sweep, window_offsets

__all__ = [
    "LabelNoise",
    "NoisyLabelDataModule",
    "NoisyLabelDataset",
    "corrupt_labels",
    "label_noise",
    "noise_detection",
    "precision_recall_curve",
    "StabilityTable",
    "plot_heatmap",
    "rank_correlation",
    "single_vs_mean",
    "stability_report",
    "empirical_ntk",
    "kernel_velocity",
    "plot_velocity_by_group",
    "velocity_by_group",
    "velocity_report",
    "classification_error",
    "error_barrier",
    "interpolate_state",
    "update_bn_statistics",
    "BarrierSpawnCallback",
    "barrier_subsets",
    "plot_spawning_barriers",
    "spawn_children",
    "spawning_barriers",
    "spawning_experiment",
    "plot_sliding_window",
    "sliding_window_sweep",
    "window_offsets",
]
