"""The retraining budget: how many epochs a model trains on a pruned subset so that a comparison with full data is
fair (the same number of optimizer steps, or the same number of epochs)."""

from __future__ import annotations


def _steps_per_epoch(n: int, batch_size: int, drop_last: bool, world_size: int) -> int:
    per_rank = -(-n // world_size)  # DistributedSampler pads every rank to ceil(n / world_size)
    return per_rank // batch_size if drop_last else -(-per_rank // batch_size)


def same_steps_epochs(
    full_epochs: int,
    full_size: int,
    kept_size: int,
    *,
    batch_size: int | None = None,
    drop_last: bool = False,
    world_size: int = 1,
) -> int:
    """Epochs on the pruned subset that give (at least) the optimizer steps of full-data training.

    The original protocol (official Data Diet code): retrain for the same number of optimizer *steps*, so a 50%
    subset trains for twice the epochs. Without ``batch_size``: ``ceil(full_epochs * full_size / kept_size)``.
    With ``batch_size`` (per device) the count is exact in steps: ``ceil(full_epochs * steps(full_size) /
    steps(kept_size))`` where ``steps(n)`` is the number of batches per epoch on one of ``world_size`` ranks
    (``ceil`` or, with ``drop_last``, ``floor`` of ``ceil(n / world_size) / batch_size``).

    The alternative, *same epochs*, is just ``full_epochs`` (fewer steps, less compute); see :func:`retrain_epochs`.

    Example:
        >>> same_steps_epochs(200, 50_000, 25_000)
        400
        >>> same_steps_epochs(200, 50_000, 20_000, batch_size=128)  # 391 * 200 steps / 157 per epoch
        499
    """
    for name, value in (("full_epochs", full_epochs), ("full_size", full_size), ("kept_size", kept_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    if kept_size > full_size:
        raise ValueError(f"`kept_size` ({kept_size}) cannot exceed `full_size` ({full_size}).")
    if batch_size is None:
        return -(-(full_epochs * full_size) // kept_size)
    if batch_size < 1 or world_size < 1:
        raise ValueError("`batch_size` and `world_size` must be positive ints.")
    kept_steps = _steps_per_epoch(kept_size, batch_size, drop_last, world_size)
    if kept_steps == 0:
        raise ValueError(
            f"With drop_last=True and batch_size={batch_size}, a subset of {kept_size} examples gives no batch at all. "
            "Keep more examples or lower the batch size."
        )
    total = full_epochs * _steps_per_epoch(full_size, batch_size, drop_last, world_size)
    return -(-total // kept_steps)


def retrain_epochs(
    full_epochs: int,
    full_size: int,
    kept_size: int,
    budget: str = "same_steps",
    *,
    batch_size: int | None = None,
    drop_last: bool = False,
    world_size: int = 1,
) -> int:
    """Epochs to retrain a pruned subset under an explicit ``budget``.

    ``"same_steps"`` (the original protocol; see :func:`same_steps_epochs`) or ``"same_epochs"`` (returns
    ``full_epochs``: the subset gets ``kept_size / full_size`` of the compute). Report which one you used.
    """
    if budget == "same_steps":
        return same_steps_epochs(
            full_epochs, full_size, kept_size, batch_size=batch_size, drop_last=drop_last, world_size=world_size
        )
    if budget == "same_epochs":
        return full_epochs
    raise ValueError(f"Unknown budget {budget!r}: choose 'same_steps' or 'same_epochs'.")
