"""What a worker process does first, and how long it takes to reach its first optimizer step.

:func:`prepare_process` runs at the top of ``train.py``, before torch, transformers or DeepSpeed are imported:

* the worker dies with its launcher (:mod:`qa.lifecycle.watchdog`);
* Ctrl-C before training has started exits at once with 130 and one line (the training loop later takes SIGINT
  over: finish the step, checkpoint, exit 130; see :mod:`qa.lifecycle.preemption`);
* DeepSpeed's JIT-built ops (on CPU its shared-memory collectives, with offload its CPU Adam) are cached in
  ``<sys.prefix>/torch_extensions`` unless ``TORCH_EXTENSIONS_DIR`` says otherwise. Torch's default,
  ``~/.cache/torch_extensions/py311_cpu``, is shared by every environment of the user, so another venv's torch
  or DeepSpeed version would make each one rebuild (minutes) or load a stale op;
* third-party warnings known to repeat on every call are shown once per process (:data:`ONCE`);
* each rank gets its share of the CPU cores as ``OMP_NUM_THREADS`` unless the user set it (:mod:`qa.lifecycle.threads`).

:func:`mark` and :func:`first_step` time the start-up: the first optimizer step logs
``first step after 12.3s (launcher 2.9, imports 4.1, setup 1.6, data 0.6, model 2.5, step 0.6)``, measured from
the launcher's start when a launcher started us, else from this process's start.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import signal
import sys
import threading
import time
import warnings
from types import FrameType
from typing import TextIO

from qa.errors import EXIT_INTERRUPTED
from qa.lifecycle.build_locks import sweep_build_locks
from qa.lifecycle.ops import extensions_dir
from qa.lifecycle.threads import ThreadChoice, set_threads
from qa.lifecycle.watchdog import launched_by_launcher, watch_launcher

logger = logging.getLogger("qa")

# (message regex, category) of warnings a library raises on every call of a hot function: torch's deprecation
# of reduce_scatter_tensor/all_gather_into_tensor, which DeepSpeed's ZeRO collectives call on CPU (hundreds of
# copies per rank in a few ZeRO-3 steps). Python's own de-duplication does not hold for them: it keys on the
# calling module's warning registry, which every warnings.catch_warnings() exit clears (libraries enter one
# between those calls), and the "once" action of CPython's C implementation uses that same registry. So
# show_once() keeps its own record.
ONCE: tuple[tuple[str, type[Warning]], ...] = (
    (r"`torch\.distributed\.\w+` is deprecated", FutureWarning),
)
_shown: set[tuple[str, type[Warning]]] = set()

_marks: list[tuple[str, float]] = []
_reported = False
threads: ThreadChoice | None = None  # what prepare_process decided, for the start-up line


def _interrupted_early(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("interrupted (SIGINT) outside the training loop: exiting at once, nothing saved\n")
    os._exit(EXIT_INTERRUPTED)


def quiet_repeated_warnings() -> None:
    """Show each of the :data:`ONCE` warnings once per process, however often it is raised."""
    show = warnings.showwarning
    if getattr(show, "_qa_once", False):
        return

    def show_once(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
        key = (str(message), category)
        if any(issubclass(category, cat) and re.search(pattern, key[0]) for pattern, cat in ONCE):
            if key in _shown:
                return
            _shown.add(key)
        show(message, category, filename, lineno, file, line)

    show_once._qa_once = True  # type: ignore[attr-defined]
    warnings.showwarning = show_once


def prepare_process() -> None:
    """Call first in train.py, before the heavy imports; then :func:`mark` ("imports") once they are done."""
    watch_launcher()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupted_early)
    if not os.environ.get("TORCH_EXTENSIONS_DIR"):  # unset or empty (torch would build into the cwd)
        os.environ["TORCH_EXTENSIONS_DIR"] = str(extensions_dir())
    sweep_build_locks(extensions_dir())  # else a lock left by a killed process hangs this launch for ever
    quiet_repeated_warnings()
    # torch, transformers and DeepSpeed leave ~460k objects that live as long as the process; the collector would
    # walk them over and over while they load (about 1 s per process on an AMD EPYC). imports_done() turns it on.
    gc.disable()
    global threads
    threads = set_threads(os.environ, launched_by_launcher(os.environ))
    own = _create_time(os.getpid()) or time.time()
    _marks.clear()
    if launched_by_launcher(os.environ):
        # The launcher imports torch too before it starts us: that time is part of the wait.
        _marks.append(("start", _create_time(os.getppid()) or own))
        _marks.append(("launcher", own))
    else:
        _marks.append(("start", own))


def _create_time(pid: int) -> float | None:
    try:
        import psutil  # a dependency of accelerate; light

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - timing is best effort, never a reason to fail
        return None


def imports_done() -> None:
    """The heavy imports are over: their objects leave the collector's scans for good (``gc.freeze``), so later
    collections walk only what the run creates; then the collector is on again."""
    gc.freeze()
    gc.enable()
    mark("imports")


def before_exit() -> None:
    """Call just before the process exits. The interpreter's last collections would walk the whole heap (2-3 s per
    rank at the end of a tiny run on an AMD EPYC, seen in py-spy as gc_collect_main) to free what the OS frees
    anyway; atexit handlers and weakref finalizers still run."""
    gc.freeze()


def mark(phase: str) -> None:
    """End of a start-up phase: "imports", "setup", "data", "model"."""
    _marks.append((phase, time.time()))


def first_step() -> None:
    """Called after every optimizer step; logs the start-up timeline once (only rank 0's logger prints)."""
    global _reported
    if _reported or not _marks:
        return
    _reported = True
    mark("step")
    logger.info(format_timeline(_marks))


def format_timeline(marks: list[tuple[str, float]]) -> str:
    """``first step after T s (phase seconds, ...)`` from (phase, end time) pairs; the first pair is the start."""
    (_, t0), rest = marks[0], marks[1:]
    if not rest:
        return ""
    parts = [f"{phase} {t - prev:.1f}" for (phase, t), (_, prev) in zip(rest, marks, strict=False)]
    return f"first step after {rest[-1][1] - t0:.1f}s ({', '.join(parts)})"


def speaks_for_node() -> bool:
    """Whether this process reports a user error: alone, or the first rank of its node under a launcher.

    Every rank parses the same config and files, so N ranks would print N copies of one line. Each node's first
    rank (not only global rank 0) speaks, so a node that lacks a file another has still says so.
    """
    return os.environ.get("LOCAL_RANK", "0") == "0"
