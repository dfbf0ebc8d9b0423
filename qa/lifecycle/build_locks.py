"""Stale build locks in the DeepSpeed op cache.

Every load of a JIT-built op (``torch.utils.cpp_extension.load``) takes ``<TORCH_EXTENSIONS_DIR>/<op>/lock`` for
a moment, builds or re-checks the op with ninja inside that directory, and removes the lock. A process killed in
that moment (a preemption, a crash, a SIGKILL at start-up) leaves the lock behind, and torch's FileBaton then
makes every later load wait for it for ever, with no message: each later launch on the machine hangs at start-up.
The fault campaign (bench/faults.py) hit it. torch records no owner, so the lock is judged by what a live builder
looks like: a build runs ninja with its working directory in the op's directory, and only the first instant of a
load (writing build.ninja) happens outside it. A process may die holding the lock just before we start, so
the sweep goes on in the background through start-up, while torch may be waiting on that lock."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

STALE_AFTER_S = 10.0  # far longer than a load that builds nothing; a real build has ninja running meanwhile


def _working_dirs() -> set[str]:
    """The working directories of the processes we may look at. Another user's are hidden from us; the op cache
    is per environment (``<sys.prefix>/torch_extensions``), which another user does not build into."""
    dirs = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            dirs.add(os.readlink(f"/proc/{entry.name}/cwd"))
        except OSError:  # exited meanwhile, or not ours to look at
            continue
    return dirs


def clear_stale_build_locks(root: Path, *, stale_after_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the build locks under ``root`` left by a dead process; returns them. A lock younger than
    ``stale_after_s``, or in a directory where some process runs, is kept."""
    locks = [p for p in root.glob("*/lock") if p.is_file()] if root.is_dir() else []
    now = time.time()
    old = [p for p in locks if now - p.stat().st_mtime > stale_after_s]
    if not old or not Path("/proc/self/cwd").exists():
        return []
    busy = _working_dirs()
    removed = []
    for lock in old:
        if str(lock.parent.resolve()) in busy:
            continue
        lock.unlink(missing_ok=True)
        logger.warning("removed %s: a build lock left by a process that died while loading the op", lock)
        removed.append(lock)
    return removed


def sweep_build_locks(root: Path, *, every_s: float = 5.0, for_s: float = 900.0) -> threading.Thread:
    """Clear stale locks under ``root`` now and then every ``every_s`` for ``for_s`` (start-up, when the ops
    load), on a daemon thread."""
    def sweep() -> None:
        deadline = time.monotonic() + for_s
        while True:
            try:
                clear_stale_build_locks(root)
            except OSError as e:  # a cache we cannot read: torch will say so itself
                logger.debug("build lock sweep of %s: %s", root, e)
            if time.monotonic() + every_s > deadline:
                return
            time.sleep(every_s)  # a periodic sweep: nothing notifies us of a dead lock holder

    thread = threading.Thread(target=sweep, name="build-lock-sweep", daemon=True)
    thread.start()
    return thread
