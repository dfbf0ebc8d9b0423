"""A worker never outlives its launcher.

``accelerate launch`` and ``torchrun`` start the workers in sessions of their own, so when the launcher is killed
outright (SIGKILL, the OOM killer, a lost SSH session's cleanup) nothing reaches them: they keep training, keep
talking to each other over gloo/NCCL and keep writing checkpoints into a directory that the next launch will
claim. Two guards, both here:

* Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the worker the moment its parent (the elastic
  agent, or accelerate's one-process launcher) dies. No polling, nothing on the training path.
* Everywhere: a daemon thread that checks ``os.getppid()`` every second and kills the process when the parent
  changed (a reparented orphan). It covers kernels without prctl and a parent that died before the prctl call.
  It sleeps between checks, so it costs the training step nothing measurable.

Only the workers of torchrun's elastic agent are guarded: the agent handles SIGTERM/SIGINT itself, passes them
on and waits for the workers, so its death means nobody is left to collect them. Under plain ``python train.py``
the parent is a shell, which may legitimately go away (``nohup``); accelerate's one-process "simple" launcher
dies of a Ctrl-C at once (KeyboardInterrupt), while its worker, which got the same Ctrl-C, still has a
checkpoint to write.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 1.0


def parent_argv(pid: int | None = None) -> list[str] | None:
    """The parent process's command line, or None where /proc cannot tell."""
    try:
        raw = Path(f"/proc/{pid or os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def launched_by_launcher(env: Mapping[str, str]) -> bool:
    """Started by torchrun's elastic agent (accelerate's multi-process launchers) or accelerate's simple launcher."""
    # accelerate's simple launcher always sets ACCELERATE_USE_CPU (accelerate/utils/launch.py:
    # prepare_simple_launcher_cmd_env).
    return started_by_agent(env) or "ACCELERATE_USE_CPU" in env


def started_by_agent(env: Mapping[str, str]) -> bool:
    """Started by torchrun's elastic agent, which sets TORCHELASTIC_RUN_ID for its workers."""
    return "TORCHELASTIC_RUN_ID" in env


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int) -> None:
    while True:
        time.sleep(POLL_S)
        if os.getppid() != parent:
            # Same end as the kernel's parent-death signal: no handler, no flush, no checkpoint.
            os.kill(os.getpid(), signal.SIGKILL)


def watch_launcher(env: Mapping[str, str] | None = None) -> bool:
    """Make this process die with its launcher. Returns whether it is guarded (only an agent's workers are)."""
    if not started_by_agent(os.environ if env is None else env):
        return False
    parent = os.getppid()
    _set_parent_death_signal()
    threading.Thread(target=_watch, args=(parent,), name="qa-launcher-watchdog", daemon=True).start()
    return True
