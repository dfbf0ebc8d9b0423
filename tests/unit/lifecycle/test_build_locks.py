"""A build lock of the DeepSpeed op cache left by a killed process is removed; a live build's is kept (found by
the fault campaign: the lock made every later launch on the machine hang at start-up)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from qa.lifecycle.build_locks import clear_stale_build_locks, sweep_build_locks


def _lock(root: Path, op: str, age_s: float) -> Path:
    lock = root / op / "lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    then = time.time() - age_s
    os.utime(lock, (then, then))
    return lock


def test_a_lock_left_by_a_dead_process_is_removed_and_a_live_or_young_one_kept(tmp_path: Path) -> None:
    dead = _lock(tmp_path, "deepspeed_shm_comm", age_s=600)
    young = _lock(tmp_path, "cpu_adam", age_s=1)
    building = _lock(tmp_path, "fused_adam", age_s=600)
    # A live build: a process (ninja, here a Python stand-in that waits on its stdin) working in the op's dir.
    builder = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], cwd=building.parent,
                               stdin=subprocess.PIPE)
    try:
        removed = clear_stale_build_locks(tmp_path)
    finally:
        builder.communicate(b"")
    assert removed == [dead]
    assert not dead.exists() and young.exists() and building.exists()
    assert clear_stale_build_locks(tmp_path / "absent") == []


def test_the_sweep_clears_a_lock_left_after_start_up_while_torch_would_be_waiting_on_it(tmp_path: Path) -> None:
    sweeper = sweep_build_locks(tmp_path, every_s=0.05, for_s=30)
    lock = _lock(tmp_path, "deepspeed_shm_comm", age_s=600)  # a loader killed after this process started
    deadline = time.monotonic() + 20
    while lock.exists():
        assert time.monotonic() < deadline, "the sweep never removed the stale lock"
        time.sleep(0.05)  # polling for the condition with a deadline
    assert sweeper.is_alive()
