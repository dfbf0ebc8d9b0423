"""SIGTERM/SIGUSR1 -> finish the step, checkpoint, exit with EXIT_PREEMPTED for the launcher to requeue.

SLURM (``--signal=B:USR1@120``) and Kubernetes send a signal some time before the kill. The handler only
sets a flag; the training loop agrees on it across ranks at the next optimizer step (one tiny all-reduce),
so every rank stops at the same step and joins the same checkpoint. A second signal exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

import torch

logger = logging.getLogger(__name__)

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
DUPLICATE_WINDOW_S = 2.0
MARKER = "PREEMPTED"  # written to output_dir so launch scripts can requeue even through torchrun's exit code


class PreemptionHandler:
    def __init__(self) -> None:
        self.signal_received: int | None = None
        self.received_at: float | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> PreemptionHandler:
        for sig in PREEMPT_SIGNALS:
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
            if time.monotonic() - (self.received_at or 0.0) > DUPLICATE_WINDOW_S:
                os._exit(128 + signum)
            return
        self.signal_received = signum
        self.received_at = time.monotonic()
        # Only async-signal-safe work here: the loop logs and checkpoints.

    def should_stop(self, accelerator: Any) -> bool:
        """True on every rank if any rank was signalled (collective: call at the same point on all ranks)."""
        flag = torch.tensor([1.0 if self.signal_received is not None else 0.0], device=accelerator.device)
        if accelerator.num_processes > 1:
            flag = accelerator.reduce(flag, reduction="sum")
        return bool(flag.item() > 0)

    def remaining(self, grace_seconds: float) -> float:
        if self.received_at is None:
            return grace_seconds
        return max(0.0, grace_seconds - (time.monotonic() - self.received_at))


def write_marker(output_dir: str | os.PathLike, step: int) -> None:
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / MARKER).write_text(f"{step}\n")


def clear_marker(output_dir: str | os.PathLike) -> None:
    (Path(output_dir) / MARKER).unlink(missing_ok=True)
