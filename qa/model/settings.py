"""The model and optimizer sections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from qa.errors import ConfigError
from qa.keys import key, need

# transformers.SchedulerType values the parser offers that this trainer cannot run: they step on an evaluation
# metric, while the loop steps the schedule after every optimizer step, or they need lr_scheduler_kwargs, for
# which run_qa_no_trainer.py has no flag. Refused at load, not minutes into the job.
_METRIC = "steps on an evaluation metric; the training loop steps the schedule every optimizer step"
UNSUPPORTED_SCHEDULERS = {
    "reduce_lr_on_plateau": _METRIC,
    "greedy": _METRIC,
    "cosine_with_min_lr": "needs min_lr or min_lr_rate (lr_scheduler_kwargs), which no key sets",
    "cosine_warmup_with_min_lr": "needs min_lr or min_lr_rate (lr_scheduler_kwargs), which no key sets",
    "warmup_stable_decay": "needs num_decay_steps (lr_scheduler_kwargs), which no key sets",
}


@dataclass(frozen=True)
class ModelSettings:
    TITLE: ClassVar[str] = "model"
    model_name_or_path: str = key("distilbert-base-cased", "Hub model id or local directory of the encoder")
    tokenizer_name: str | None = key(None, "Tokenizer id or directory, if not the model's own")
    attn_implementation: str | None = key("sdpa", "Attention kernel passed to from_pretrained (sdpa, eager, ...)")
    torch_compile: bool = key(False, "torch.compile the model")
    dropout: float | None = key(
        None, "Hidden and attention dropout of the encoder (0 turns it off); null keeps the model's own")

    def check(self) -> None:
        need(self.dropout is None or 0 <= self.dropout < 1, "dropout", f"must be in [0, 1) or null, got {self.dropout}")

    @property
    def tokenizer_source(self) -> str:
        return self.tokenizer_name or self.model_name_or_path


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW and the learning-rate schedule (also the values filled into a DeepSpeed JSON's "auto")."""

    TITLE: ClassVar[str] = "optimizer"
    learning_rate: float = key(3e-5, "Peak learning rate (AdamW)")
    weight_decay: float = key(0.01, "AdamW weight decay (not on biases and norms)")
    adam_beta1: float = key(0.9, "AdamW beta1")
    adam_beta2: float = key(0.999, "AdamW beta2")
    adam_epsilon: float = key(1e-8, "AdamW epsilon")
    # run_qa_no_trainer.py never clips; Trainer and BERT clip at 1.0, and so do we (README: differences).
    max_grad_norm: float = key(1.0, "Gradient clipping norm")
    # Checked against transformers.SchedulerType by the parser: the enum's module imports torch, and this
    # module must stay light for the launch scripts.
    lr_scheduler_type: str = key("linear", "Learning-rate schedule after warmup")
    num_warmup_steps: int = key(0, "Linear warmup optimizer steps")
    warmup_ratio: float = key(0.0, "Warmup as a fraction of all optimizer steps (instead of num_warmup_steps)")

    def check(self) -> None:
        for name in ("learning_rate", "weight_decay", "num_warmup_steps", "max_grad_norm", "adam_epsilon"):
            need(getattr(self, name) >= 0, name, f"must not be negative, got {getattr(self, name)}")
        for name in ("adam_beta1", "adam_beta2"):
            need(0 <= getattr(self, name) < 1, name, f"must be in [0, 1), got {getattr(self, name)}")
        need(self.lr_scheduler_type not in UNSUPPORTED_SCHEDULERS, "lr_scheduler_type",
             f"{self.lr_scheduler_type} {UNSUPPORTED_SCHEDULERS.get(self.lr_scheduler_type)}; use linear, cosine, "
             "cosine_with_restarts, polynomial, constant, constant_with_warmup or inverse_sqrt")
        need(0 <= self.warmup_ratio <= 1, "warmup_ratio", f"must be in [0, 1], got {self.warmup_ratio}")
        if self.warmup_ratio > 0 and self.num_warmup_steps > 0:
            raise ConfigError(f"num_warmup_steps ({self.num_warmup_steps}) and warmup_ratio ({self.warmup_ratio}) "
                              "are both set; set one of them (the other to 0)")
