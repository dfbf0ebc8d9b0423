"""The typed parts of a run, each built complete in one place (``qa.trainer.setup``), and the small config
sections the loop and the evaluation read. Components get the section they need, never the whole config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from qa.eval.settings import DecodeSettings

if TYPE_CHECKING:
    import datasets
    import torch
    from accelerate import Accelerator
    from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

    from qa.checkpoint.manager import Checkpointer
    from qa.checkpoint.state import TrainState
    from qa.config import TrainConfig
    from qa.data.sampler import StepBatchSampler
    from qa.eval.evaluator import EvalExamples, EvalFeatures
    from qa.tracking.tracker import Tracker
    from qa.trainer.preemption import PreemptionHandler


# ---- config sections ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSettings:
    batch_size: int
    max_seq_length: int
    seed: int
    output_dir: Path
    save_logits: bool
    sample_table_size: int
    decode: DecodeSettings

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> EvalSettings:
        return cls(batch_size=cfg.per_device_eval_batch_size, max_seq_length=cfg.max_seq_length, seed=cfg.seed,
                   output_dir=Path(cfg.output_dir), save_logits=cfg.save_logits,
                   sample_table_size=cfg.eval_sample_table_size,
                   decode=DecodeSettings(cfg.n_best_size, cfg.max_answer_length, cfg.version_2_with_negative,
                                         cfg.null_score_diff_threshold))


@dataclass(frozen=True)
class LoopSettings:
    max_grad_norm: float
    logging_steps: int
    do_eval: bool
    eval_strategy: Literal["epoch", "steps", "end"]
    eval_steps: int | None
    checkpointing_steps: int | Literal["epoch"] | None
    export_every_checkpoint: bool
    preemption_grace_seconds: float
    output_dir: Path

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> LoopSettings:
        return cls(max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps, do_eval=cfg.do_eval,
                   eval_strategy=cfg.eval_strategy, eval_steps=cfg.eval_steps,
                   checkpointing_steps=cfg.checkpointing_steps, export_every_checkpoint=cfg.export_every_checkpoint,
                   preemption_grace_seconds=cfg.preemption_grace_seconds, output_dir=Path(cfg.output_dir))


# ---- what set-up builds ------------------------------------------------------------------------------------


@dataclass
class Session:
    """The run's services, built by ``setup.start`` before any data or model; ``state`` is the mutable counters."""

    accelerator: Accelerator
    precision: str
    tracker: Tracker
    checkpointer: Checkpointer
    preemption: PreemptionHandler
    state: TrainState
    resume_path: Path | None = None
    last_eval: dict[str, float] = field(default_factory=dict)  # final/f1, final/exact_match of the last eval


@dataclass(frozen=True)
class EvalSet:
    features: datasets.Dataset
    examples: EvalExamples
    arrays: EvalFeatures | None  # rank 0 only: what decoding needs besides the logits


@dataclass(frozen=True)
class Data:
    tokenizer: PreTrainedTokenizerBase
    train: datasets.Dataset | None
    eval: EvalSet | None


@dataclass(frozen=True)
class StepPlan:
    total_steps: int
    num_epochs: int
    batches_per_epoch: int  # micro-batches per rank per epoch
    accumulation: int = 1  # micro-batches per rank per optimizer step

    @property
    def steps_per_epoch(self) -> int:
        return self.batches_per_epoch // self.accumulation  # the sampler yields whole steps only


@dataclass(frozen=True)
class Model:
    """The prepared model and what feeds it; the training fields are None for an evaluation-only run."""

    module: torch.nn.Module
    collator: DataCollatorWithPadding
    eval_input_names: list[str]
    train_input_names: list[str] = field(default_factory=list)
    optimizer: Any = None  # torch or DeepSpeed optimizer, as Accelerate prepared it
    scheduler: Any = None
    train_loader: Any = None  # Accelerate's DataLoaderShard
    sampler: StepBatchSampler | None = None
    plan: StepPlan | None = None
