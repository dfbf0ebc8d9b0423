"""What a checkpoint records besides the model and optimizer: counters, data order, tracker run id.

The data position is ``(epoch, steps_in_epoch)``: how many global batches (optimizer steps) of the epoch's
global batch order were consumed, ``steps_in_epoch x global batch`` samples. It says nothing about ranks, so a
checkpoint resumes on any world size that keeps the global batch (see qa.checkpoint.reshard)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.json"
_STEP_RE = re.compile(r"^step_(\d+)$")


@dataclass
class TrainState:
    global_step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch in progress
    steps_in_epoch: int = 0  # global batches (optimizer steps) consumed in the epoch in progress
    samples_seen: int = 0  # over all ranks
    tokens_seen: int = 0  # real (non-padding) tokens over all ranks
    skipped_steps: int = 0  # fp16 overflow steps
    best_f1: float | None = None
    best_exact_match: float | None = None
    seed: int = 0
    world_size: int = 1
    tracker_run_id: str | None = None
    train_time_s: float = 0.0
    data_order: dict[str, Any] | None = None  # what the saved data position depends on (DataOrder.key)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_file(cls, path: Path) -> TrainState:
        data = json.loads(path.read_text())
        if "steps_in_epoch" not in data and "batches_in_epoch" in data:
            # Checkpoints written before the position was global counted micro-batches per rank.
            accumulation = (data.get("data_order") or {}).get("gradient_accumulation_steps") or 1
            data["steps_in_epoch"] = data["batches_in_epoch"] // accumulation
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def global_batch_size(self) -> int | None:
        """Samples per optimizer step of the run that wrote this state (None if it did not record it)."""
        order = self.data_order or {}
        if order.get("global_batch_size") is not None:
            return int(order["global_batch_size"])
        micro, accumulation = order.get("per_device_train_batch_size"), order.get("gradient_accumulation_steps")
        return micro * accumulation * self.world_size if micro and accumulation else None


def step_name(step: int) -> str:
    return f"step_{step:07d}"


def step_of(name: str) -> int | None:
    """The step of a checkpoint named by :func:`step_name`; None for any other name."""
    match = _STEP_RE.match(name)
    return int(match.group(1)) if match else None


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete local checkpoints, oldest step first (by number: names stop sorting by step past 10M)."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if step_of(p.name) is not None and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: step_of(p.name) or 0)
