"""The distributed section of the run config: precision, the DeepSpeed JSON and what it must agree with."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DistributedSettings:
    mixed_precision: str  # auto | no | fp16 | bf16
    deepspeed: str | None  # path of the DeepSpeed JSON, absolute once loaded (qa.config.load)
    tf32: bool
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    max_grad_norm: float
    output_dir: str
