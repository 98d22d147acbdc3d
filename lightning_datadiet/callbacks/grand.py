"""GraNdCallback: per-example gradient norms of the whole training set after given epochs."""

from __future__ import annotations

import os
from collections.abc import Sequence

from torch import Tensor, nn
from torch.utils.data import Dataset

from lightning_datadiet.callbacks._pass import PassScoreCallback
from lightning_datadiet.scores.grand import GRAND_METHODS, grand

__all__ = ["GraNdCallback"]


class GraNdCallback(PassScoreCallback):
    """Score every training example with GraNd, the L2 norm of the per-example loss gradient over all trainable
    parameters, after ``epochs`` completed training epochs (``0`` = at initialisation: "GraNd at init").

    Same pass as :class:`EL2NCallback` (eval mode, index order, un-augmented view when available, DDP gathered by
    index); gradients come from :func:`lightning_datadiet.grand` (``torch.func``), never from ``.backward()``, so
    the optimizer state and ``.grad`` are untouched. Frozen parameters (``requires_grad=False``) do not count.

    Args:
        epochs: completed training epochs after which to score (``0`` = at init).
        chunk_size: examples processed at once (default 32; ``None`` = the whole scoring batch): for the
            ``"vmap"`` path, examples per vectorised chunk (memory grows with ``chunk_size x num_parameters``); for
            the ``"norms"`` engine, examples per forward + backward pass. The scores do not depend on it.
        method: how :func:`lightning_datadiet.grand` computes the norms: ``"auto"`` (default: the norm-only engine
            when every trainable layer is supported, else ``"vmap"``), ``"norms"`` or ``"vmap"``. Stored as
            ``gradient_method`` (``method`` is the score's name, ``"grand"``).
        **kwargs: as for :class:`EL2NCallback` (``dirpath``, ``dataset``, ``batch_size``, ``num_workers``,
            ``logits_module``, ``input_key``, ``target_key``, ``seed``, ``save``, ``log_histogram``).

    Example::

        trainer = Trainer(max_epochs=20, callbacks=[GraNdCallback(epochs=[0, 20])])
    """

    method = "grand"

    def __init__(
        self,
        epochs: int | Sequence[int],
        *,
        chunk_size: int | None = 32,
        method: str = "auto",
        dirpath: str | os.PathLike | None = None,
        dataset: Dataset | None = None,
        batch_size: int | None = None,
        num_workers: int | None = None,
        logits_module: str | None = None,
        input_key: int | str | None = None,
        target_key: int | str | None = None,
        seed: int | None = None,
        save: bool = True,
        log_histogram: bool = True,
    ) -> None:
        super().__init__(
            epochs,
            dirpath=dirpath,
            dataset=dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            logits_module=logits_module,
            input_key=input_key,
            target_key=target_key,
            seed=seed,
            save=save,
            log_histogram=log_histogram,
        )
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}.")
        if method not in GRAND_METHODS:
            raise ValueError(f"method must be one of {', '.join(map(repr, GRAND_METHODS))}, got {method!r}.")
        self.chunk_size = chunk_size
        self.gradient_method = method

    def score_batch(self, module: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        return grand(module, inputs, targets, chunk_size=self.chunk_size, method=self.gradient_method)
