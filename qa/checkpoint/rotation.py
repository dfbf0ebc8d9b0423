"""Which checkpoints to delete or to try first: pure functions of checkpoint names (``step_NNNNNNN``).

They order by the step number parsed from the name and ignore any other name, so rotation only ever touches
step checkpoints and never sorts names from elsewhere in with them."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from qa.checkpoint.state import step_of


def by_step(names: Iterable[str]) -> list[str]:
    """The step checkpoints among ``names``, oldest first; other names are dropped."""
    steps = {name: step for name in names if (step := step_of(name)) is not None}
    return sorted(steps, key=steps.__getitem__)


def newest_first(names: Iterable[str]) -> list[str]:
    """The order to try resuming from: the newest step first."""
    return by_step(names)[::-1]


def checkpoints_to_delete(names: Iterable[str], limit: int | None, protected: Collection[str] = ()) -> list[str]:
    """Step checkpoints beyond the newest ``limit``, oldest first, except ``protected`` ones (kept on top of the
    limit: the checkpoint the run resumed from, uploads still pending). ``limit`` None keeps everything."""
    if limit is None:
        return []
    ordered = by_step(names)
    older = ordered[: max(len(ordered) - limit, 0)]
    return [name for name in older if name not in protected]


def crash_leftovers(incomplete: Iterable[str], newest_complete: str | None) -> list[str]:
    """Incomplete step checkpoints older than the newest complete one: a crash interrupted their save."""
    newest = step_of(newest_complete) if newest_complete is not None else None
    if newest is None:
        return []
    return [name for name in by_step(incomplete) if (step_of(name) or 0) < newest]
