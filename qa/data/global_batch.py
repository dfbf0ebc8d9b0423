"""The global batch: windows per optimizer step over all ranks, and how a launch can make a given one.

One rule for the whole package: the data position of a checkpoint, the schedule and ``total_train_batch_size``
all count global batches of ``per_device_train_batch_size x world size x gradient_accumulation_steps``."""

from __future__ import annotations


def global_batch(per_device: int, world_size: int, accumulation: int) -> int:
    return per_device * world_size * accumulation


def accumulation_for(target: int, per_device: int, world_size: int) -> int | None:
    """The gradient accumulation that makes ``target`` from this per-device batch and world size, if any."""
    per_step = per_device * world_size
    return target // per_step if target % per_step == 0 else None


def ways_to_make(target: int, *, per_device: int, world_size: int, accumulation: int) -> list[dict[str, int]]:
    """Key settings that make a global batch of ``target`` on ``world_size`` processes, changing as little as
    possible: the accumulation alone, else the per-device batch alone, else the per-device batch with no
    accumulation. Empty when ``target`` is not a multiple of ``world_size``."""
    ways: list[dict[str, int]] = []
    keep = accumulation_for(target, per_device, world_size)
    if keep is not None:
        ways.append({"gradient_accumulation_steps": keep})
    if target % (world_size * accumulation) == 0:
        ways.append({"per_device_train_batch_size": target // (world_size * accumulation)})
    if not ways and target % world_size == 0:
        ways.append({"per_device_train_batch_size": target // world_size, "gradient_accumulation_steps": 1})
    return ways
