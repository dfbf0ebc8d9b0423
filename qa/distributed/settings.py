"""The distributed section: precision, the DeepSpeed JSON and TF32."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from qa.keys import key


@dataclass(frozen=True)
class DistributedSettings:
    TITLE: ClassVar[str] = "precision and DeepSpeed"
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = key(
        "auto", "auto: fp16 on CUDA, bf16 on CPUs with a bf16 unit (AVX512-BF16, AMX), fp32 elsewhere")
    # Its batch sizes, precision and optimizer values are "auto" and filled from the run config. A relative path
    # is found as qa/config/load.py:resolve_repo_path says.
    deepspeed: str | None = key("configs/deepspeed/zero2.json",
                                "DeepSpeed JSON; null runs plain DDP. Relative: the working directory, else the repo")
    tf32: bool = key(True, "Allow TF32 matmuls on Ampere+ GPUs")
