"""The training loop's section of the run config: how long, and when to log, evaluate and checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class LoopSettings:
    num_train_epochs: float
    max_train_steps: int | None  # wins over num_train_epochs
    max_grad_norm: float
    logging_steps: int
    do_eval: bool
    eval_strategy: Literal["epoch", "steps", "end"]
    eval_steps: int | None
    checkpointing_steps: int | Literal["epoch"] | None
    export_every_checkpoint: bool
    preemption_grace_seconds: float
    output_dir: Path

    def total_steps(self, steps_per_epoch: int) -> tuple[int, int]:
        """(optimizer steps, epochs): max_train_steps wins over num_train_epochs, as in run_qa_no_trainer."""
        per_epoch = max(1, steps_per_epoch)
        if self.max_train_steps is not None:
            return self.max_train_steps, math.ceil(self.max_train_steps / per_epoch)
        return math.ceil(self.num_train_epochs * per_epoch), math.ceil(self.num_train_epochs)
