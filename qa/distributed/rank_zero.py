"""Do it on rank 0, then give every rank the result or the error: the one helper for that pattern.

Work that must happen once (checking a bucket, choosing a checkpoint, decoding gathered logits) runs on
the main process while the other ranks wait in the broadcast. If rank 0 fails, the others must fail too,
or they would wait in the next collective forever; a user error (:class:`qa.errors.UserError`) is
re-raised on every rank as itself, so every rank ends with the same one-line message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from accelerate.utils import broadcast_object_list

from qa.errors import UserError

T = TypeVar("T")


class RankZeroError(RuntimeError):
    """Rank 0 failed with a program error; raised on the other ranks (rank 0 keeps its own traceback)."""


def on_rank_zero(accelerator: Any, fn: Callable[[], T]) -> T:
    """Collective: every rank calls it. Runs ``fn`` on the main process and returns its result everywhere.

    The result must be picklable. A UserError from ``fn`` is raised on every rank; any other exception is
    raised as itself on rank 0 and as RankZeroError elsewhere.
    """
    if accelerator.num_processes <= 1:
        return fn()
    box: list[Any] = [None]
    error: BaseException | None = None
    if accelerator.is_main_process:
        try:
            box = [("ok", fn())]
        except UserError as e:
            box, error = [("user", e)], e
        except Exception as e:  # noqa: BLE001 - re-raised below, after the other ranks have heard of it
            box, error = [("bug", f"{type(e).__name__}: {e}")], e
    box = broadcast_object_list(box, from_process=0)
    kind, value = box[0]
    if error is not None:
        raise error
    if kind == "user":
        value.reported_by_rank_zero = True  # rank 0 prints the line; the others exit quietly
        raise value
    if kind == "bug":
        raise RankZeroError(f"rank 0 failed: {value}")
    return value


def broadcast_from_rank_zero(accelerator: Any, value: T) -> T:
    """Collective: every rank calls it. Rank 0's ``value`` on every rank (e.g. a run id drawn at random)."""
    return on_rank_zero(accelerator, lambda: value)
