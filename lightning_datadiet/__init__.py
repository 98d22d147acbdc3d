"""lightning-datadiet: find the training examples that matter, early in training, and train on less data."""

__version__ = "0.1.0"
