"""The model and optimizer sections of the run config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSettings:
    model_name_or_path: str
    tokenizer_name: str | None
    attn_implementation: str | None
    torch_compile: bool
    dropout: float | None = None  # hidden and attention dropout; None: the model's own

    @property
    def tokenizer_source(self) -> str:
        return self.tokenizer_name or self.model_name_or_path


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW and the learning-rate schedule (also the values filled into a DeepSpeed JSON's "auto")."""

    learning_rate: float
    weight_decay: float
    adam_beta1: float
    adam_beta2: float
    adam_epsilon: float
    lr_scheduler_type: str
    num_warmup_steps: int
    warmup_ratio: float
