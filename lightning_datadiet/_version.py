"""The package version, importable without importing the package root (and so without Lightning)."""

__version__ = "0.1.0"
