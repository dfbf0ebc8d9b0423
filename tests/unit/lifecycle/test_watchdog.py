"""A launched worker dies with its launcher: real parent and child processes, the parent SIGKILLed."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

# The "launcher": starts the "worker" in a session of its own (as torchrun does), then waits to be killed.
PARENT = textwrap.dedent("""
    import subprocess, sys
    subprocess.Popen([sys.executable, "-c", sys.argv[1]], start_new_session=True).wait()
""")
GUARDS = {
    # what train.py does: both guards, only when a launcher's variables say it was launched
    "watch_launcher": "from qa.lifecycle.watchdog import watch_launcher; assert watch_launcher()",
    # each guard alone
    "prctl": "from qa.lifecycle.watchdog import _set_parent_death_signal; assert _set_parent_death_signal()",
    "thread": ("import os, threading; from qa.lifecycle.watchdog import _watch; "
               "threading.Thread(target=_watch, args=(os.getppid(),), daemon=True).start()"),
}
LAUNCHED = {**os.environ, "TORCHELASTIC_RUN_ID": "test", "PYTHONPATH": os.pathsep.join(sys.path)}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("guard", GUARDS)
def test_worker_exits_within_seconds_of_its_launcher(guard: str) -> None:
    worker = f"{GUARDS[guard]}\nimport os, time\nprint('ready', os.getpid(), flush=True)\nwhile True: time.sleep(0.05)\n"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, worker], stdout=subprocess.PIPE, text=True,
                              env=LAUNCHED)
    assert parent.stdout is not None
    ready, pid = parent.stdout.readline().split()
    pid = int(pid)
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling a condition with a deadline
        assert not _alive(pid), f"worker {pid} outlived its launcher"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


PROBE = textwrap.dedent("""
    import ctypes, threading
    from qa.lifecycle.watchdog import watch_launcher
    guarded = watch_launcher()
    sig = ctypes.c_int(0)
    ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
    print(guarded, sig.value, sorted(t.name for t in threading.enumerate() if t.name.startswith("qa-")))
""")


def test_only_launched_workers_are_tied_to_their_parent() -> None:
    """`python train.py` from a shell (or under nohup) must survive the shell; an agent's worker must not."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_GET_PDEATHSIG is Linux only")
    assert ctypes.CDLL(None).prctl  # the probe below needs it
    plain = {k: v for k, v in LAUNCHED.items() if k not in ("TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU")}
    out = subprocess.run([sys.executable, "-c", PROBE], env=plain, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().split(maxsplit=2) == ["False", "0", "[]"], out.stderr
    # accelerate's one-process launcher dies of a terminal's Ctrl-C before its worker has checkpointed: not tied
    out = subprocess.run([sys.executable, "-c", PROBE], env={**plain, "ACCELERATE_USE_CPU": "False"},
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().split(maxsplit=2) == ["False", "0", "[]"], out.stderr
    out = subprocess.run([sys.executable, "-c", PROBE], env={**plain, "TORCHELASTIC_RUN_ID": "x"},  # torchrun's
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().split(maxsplit=2) == ["True", str(int(signal.SIGKILL)), "['qa-launcher-watchdog']"]
