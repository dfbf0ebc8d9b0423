"""The preemption section: how long a preempted run has to save and upload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qa.keys import key, need


@dataclass(frozen=True)
class PreemptionSettings:
    TITLE: ClassVar[str] = "preemption"
    # Seconds after SIGTERM/SIGUSR1 within which the checkpoint must be saved and uploaded.
    preemption_grace_seconds: float = key(110.0, "Seconds after SIGTERM/SIGUSR1 to save and upload a checkpoint")

    def check(self) -> None:
        need(self.preemption_grace_seconds >= 0, "preemption_grace_seconds",
             f"must not be negative, got {self.preemption_grace_seconds}")
