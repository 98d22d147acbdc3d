"""EL2NCallback: EL2N scores of the whole training set after given epochs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_datadiet.callbacks._pass import PassScoreCallback
from lightning_datadiet.scores._checks import check_logits
from lightning_datadiet.scores.el2n import el2n

__all__ = ["EL2NCallback"]


class EL2NCallback(PassScoreCallback):
    """Score every training example with EL2N, ``||softmax(f(x)) - onehot(y)||_2``, after ``epochs`` completed
    training epochs (``0`` = at initialisation, before the first optimizer step).

    Each scoring is a separate pass over the whole training set in index order with the model in eval mode
    (BatchNorm running statistics, no dropout) and without gradients; training is not affected. It uses, in order:
    ``dataset=``, the DataModule's ``score_dataset()`` method, or the training DataLoader's dataset (with a warning
    when it applies random augmentation). Under DDP each rank scores a strided shard and the scores are gathered
    by sample index. Single-run scores; average several seeds with :func:`lightning_datadiet.average_scores`.

    Args:
        epochs: completed training epochs after which to score, an int or a list (the paper: 20 of 200).
        dirpath: folder for score files (default ``<trainer.log_dir>/datadiet``).
        dataset: un-augmented view of the training set (same items, same order).
        batch_size: scoring batch size (default: the training loader's).
        num_workers: scoring loader workers (default: the training loader's).
        logits_module: dotted name of the submodule that maps inputs to logits (default: the LightningModule).
        input_key: position (tuple batches) or key (dict batches) of the inputs.
        target_key: position or key of the integer class ids.
        seed: run seed stored in the score file (default: ``PL_GLOBAL_SEED`` from ``seed_everything``).
        save: write a score file per scoring.
        log_histogram: add a TensorBoard histogram ``datadiet/el2n`` per scoring.

    Attributes:
        scores: float32 ``Tensor[N]`` of the latest scoring; ``scores_by_epoch`` and ``score_paths`` per epoch.

    Example::

        trainer = Trainer(max_epochs=20, callbacks=[EL2NCallback(epochs=[10, 20])])
        trainer.fit(model, datamodule=dm)
        scores = trainer.callbacks[0].scores
    """

    method = "el2n"

    def score_batch(self, module: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        with torch.no_grad():
            logits = module(inputs)
        check_logits(logits, what="EL2NCallback", batch_size=targets.shape[0])
        return el2n(logits, targets)
