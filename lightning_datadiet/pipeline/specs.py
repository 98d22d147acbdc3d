"""Class paths with init args, the LightningCLI way: check them, complete them, instantiate them.

A *spec* is ``{"class_path": "my_pkg.MyNet", "init_args": {...}}``, as LightningCLI and jsonargparse write a
subclass in YAML. The study keeps the model, the data and the Trainer options as plain dicts (they go into run
keys and ``config.resolved.json``) and builds fresh objects from them for every fit. jsonargparse does the
checking (types of the init args, nested class paths such as ``net: {class_path: ...}``) and the instantiation,
exactly as ``LightningCLI`` would.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import warnings
from functools import cache
from typing import Any

from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from lightning_datadiet._utils import plain

__all__ = ["SpecError", "import_class", "accepts", "normalize_spec", "instantiate_spec", "trainer_objects"]


class SpecError(ValueError):
    """A class path or an init arg that cannot be used (the message names it and the fix)."""


def import_class(class_path: str) -> type:
    """The class named by a dotted path (``my_pkg.models.MyNet``)."""
    module_name, _, name = str(class_path).rpartition(".")
    if not module_name:
        raise SpecError(f"{class_path!r} is not a class path: write it with its module, e.g. my_pkg.models.MyNet.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise SpecError(
            f"Cannot import {module_name!r} for {class_path!r} ({err}). Run `datadiet` from the folder that holds "
            "the module, or install it / add its folder to PYTHONPATH."
        ) from err
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        raise SpecError(f"{module_name!r} has no class {name!r} (from {class_path!r}).")
    return cls


def accepts(cls: type, name: str) -> bool:
    """Whether ``cls(...)`` takes an argument ``name`` (by name, or through ``**kwargs``)."""
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return False
    if name in params:
        return params[name].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@cache
def _parser(kind: str) -> Any:
    parser = ArgumentParser(exit_on_error=False)
    if kind == "trainer":
        parser.add_class_arguments(Trainer, "trainer", fail_untyped=False, instantiate=False, sub_configs=True)
    else:
        base = LightningModule if kind == "model" else LightningDataModule
        parser.add_subclass_arguments(base, kind, required=True, fail_untyped=False)
    return parser


def _instantiate(parser: Any, namespace: Any) -> Any:
    with warnings.catch_warnings():  # instantiate_classes is deprecated from jsonargparse 4.49 (instantiate replaces it)
        warnings.simplefilter("ignore")
        method = getattr(parser, "instantiate", None) or parser.instantiate_classes
        return method(namespace)


def _parse(kind: str, value: Any) -> Any:
    try:
        return _parser(kind).parse_object({kind: copy.deepcopy(plain(value))})  # (it may change what it is given)
    except Exception as err:  # jsonargparse reports type errors and unknown init args as ArgumentError
        what = {"model": "--model (a LightningModule)", "data": "--data (a LightningDataModule)"}.get(kind, "--trainer")
        raise SpecError(f"{what}: {err}") from err


def normalize_spec(kind: str, spec: Any) -> dict[str, Any]:
    """A complete ``{"class_path", "init_args"}`` dict for ``kind`` ``"model"`` or ``"data"``: the class path
    resolved to its full dotted name and every init arg with its value (defaults filled in), checked against the
    class's signature and type hints. Raises :class:`SpecError` naming the problem."""
    spec = plain(spec)
    if isinstance(spec, str):
        spec = {"class_path": spec}
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise SpecError(f"--{kind} must be a class path with init args ({{class_path: ..., init_args: ...}}), got {spec!r}.")
    return plain(getattr(_parse(kind, spec), kind))


def instantiate_spec(kind: str, spec: dict[str, Any]) -> Any:
    """A fresh object from a spec (nested class paths in the init args are instantiated too)."""
    namespace = _parse(kind, spec)
    return getattr(_instantiate(_parser(kind), namespace), kind)


def trainer_defaults() -> dict[str, Any]:
    """Trainer's own defaults, as the ``--trainer`` group of the parser holds them."""
    return plain(_parser("trainer").get_defaults().trainer)


def trainer_objects(options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for ``Trainer(...)`` from ``options`` (Trainer argument names to values; class paths
    such as ``callbacks: [{class_path: ...}]`` become fresh objects). Only the names in ``options`` are returned."""
    if not options:
        return {}
    namespace = _parse("trainer", options)
    built = plain(_instantiate(_parser("trainer"), namespace).trainer)
    return {name: built[name] for name in options}
