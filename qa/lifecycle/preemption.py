"""SIGTERM/SIGUSR1 -> finish the step, checkpoint, exit with EXIT_PREEMPTED for the launcher to requeue.
SIGINT (Ctrl-C) -> the same checkpoint, then exit with EXIT_INTERRUPTED (130) and no requeue marker.

SLURM (``--signal=B:USR1@120``) and Kubernetes send a signal some time before the kill. The handler only
sets a flag; the training loop agrees on it across ranks at the next optimizer step (one tiny all-reduce),
so every rank stops at the same step and joins the same checkpoint. A second signal exits at once (a repeated
preemption signal within DUPLICATE_WINDOW_S is the same signal delivered twice and is ignored; a second Ctrl-C
always counts). If any rank was preempted the stop is a preemption: the job must be requeued.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import torch

from qa.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED

if TYPE_CHECKING:
    from accelerate import Accelerator

logger = logging.getLogger(__name__)

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
INTERRUPT_SIGNALS = (signal.SIGINT,)
DUPLICATE_WINDOW_S = 2.0
# Written to output_dir so launch scripts know how the run stopped whatever torchrun's exit code says (it exits 1
# either way): PREEMPTED asks for a requeue; INTERRUPTED (Ctrl-C) makes the script exit 130 even when its shell
# never ran its SIGINT trap.
MARKER = "PREEMPTED"
INTERRUPTED_MARKER = "INTERRUPTED"


class PreemptionHandler:
    def __init__(self) -> None:
        self.signal_received: int | None = None
        self.received_at: float | None = None
        self.interrupted = False  # agreed across ranks by should_stop: Ctrl-C only, no preemption anywhere
        self._previous: dict[int, Any] = {}

    def install(self) -> PreemptionHandler:
        for sig in (*PREEMPT_SIGNALS, *INTERRUPT_SIGNALS):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_received is not None:
            # One signal often arrives twice within moments (SLURM signals the whole step and torchrun
            # forwards it again); only a later, deliberate second signal means "leave now, no checkpoint".
            if (signum in INTERRUPT_SIGNALS or self.signal_received in INTERRUPT_SIGNALS
                    or time.monotonic() - (self.received_at or 0.0) > DUPLICATE_WINDOW_S):
                os._exit(128 + signum)
            return
        self.signal_received = signum
        self.received_at = time.monotonic()
        # Only async-signal-safe work here: the loop logs and checkpoints.

    def should_stop(self, accelerator: Accelerator) -> bool:
        """True on every rank if any rank was signalled (collective: call at the same point on all ranks)."""
        got = self.signal_received
        flag = torch.tensor([1.0 if got in PREEMPT_SIGNALS else 0.0, 1.0 if got in INTERRUPT_SIGNALS else 0.0],
                            device=accelerator.device)
        if accelerator.num_processes > 1:
            flag = accelerator.reduce(flag, reduction="sum")
        preempted, interrupted = (v > 0 for v in flag.tolist())
        self.interrupted = interrupted and not preempted
        return preempted or interrupted

    @property
    def exit_code(self) -> int:
        """What the run exits with after stopping on a signal: 130 after Ctrl-C, else 42 (requeue)."""
        return EXIT_INTERRUPTED if self.interrupted else EXIT_PREEMPTED

    def remaining(self, grace_seconds: float) -> float:
        if self.received_at is None:
            return grace_seconds
        return max(0.0, grace_seconds - (time.monotonic() - self.received_at))


def write_marker(output_dir: str | os.PathLike, step: int, *, interrupted: bool = False) -> None:
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / (INTERRUPTED_MARKER if interrupted else MARKER)).write_text(f"{step}\n")


def clear_marker(output_dir: str | os.PathLike) -> None:
    for name in (MARKER, INTERRUPTED_MARKER):
        (Path(output_dir) / name).unlink(missing_ok=True)
