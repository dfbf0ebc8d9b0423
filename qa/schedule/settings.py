"""The training schedule section: how long to train, and when to log, evaluate and checkpoint."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from qa.keys import key, need


@dataclass(frozen=True)
class ScheduleSettings:
    TITLE: ClassVar[str] = "training schedule"
    num_train_epochs: float = key(2.0, "Epochs (may be fractional)")
    max_train_steps: int | None = key(None, "Optimizer steps; overrides num_train_epochs when set")
    logging_steps: int = key(10, "Log every N optimizer steps")
    # As HF Trainer's eval_strategy: after each epoch, every eval_steps optimizer steps, or only at the end. The
    # end of training is always evaluated.
    eval_strategy: Literal["epoch", "steps", "end"] = key(
        "epoch", "Evaluate after each epoch, every eval_steps, or only at the end")
    eval_steps: int | None = key(None, "Evaluate every N steps (eval_strategy steps)")
    # An int (every N optimizer steps), "epoch", or null. HfArgumentParser cannot take this Union; the parser
    # reads it as a string and turns digits into an int.
    checkpointing_steps: int | Literal["epoch"] | None = key(
        None, "Checkpoint every N optimizer steps, every epoch, or never (null)")

    def check(self) -> None:
        need(self.num_train_epochs >= 0, "num_train_epochs", f"must not be negative, got {self.num_train_epochs}")
        need(self.logging_steps >= 1, "logging_steps", f"must be >= 1, got {self.logging_steps}")
        for name in ("max_train_steps", "eval_steps"):
            v = getattr(self, name)
            need(v is None or v >= 1, name, f"must be >= 1 or null, got {v}")
        need(self.eval_strategy != "steps" or self.eval_steps is not None, "eval_steps",
             "set eval_steps when eval_strategy is steps")
        if isinstance(self.checkpointing_steps, int):
            need(self.checkpointing_steps >= 1, "checkpointing_steps", "must be >= 1, 'epoch' or null")

    def total_steps(self, steps_per_epoch: int) -> tuple[int, int]:
        """(optimizer steps, epochs): max_train_steps wins over num_train_epochs, as in run_qa_no_trainer."""
        per_epoch = max(1, steps_per_epoch)
        if self.max_train_steps is not None:
            return self.max_train_steps, math.ceil(self.max_train_steps / per_epoch)
        return math.ceil(self.num_train_epochs * per_epoch), math.ceil(self.num_train_epochs)
