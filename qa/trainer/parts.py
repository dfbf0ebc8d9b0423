"""The typed parts of a run, each built complete in one place (``qa.trainer.setup``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets
    import torch
    from accelerate import Accelerator
    from accelerate.data_loader import DataLoaderDispatcher, DataLoaderShard
    from accelerate.optimizer import AcceleratedOptimizer
    from accelerate.scheduler import AcceleratedScheduler
    from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

    from qa.checkpoint.manager import Checkpointer
    from qa.checkpoint.state import TrainState
    from qa.data.sampler import StepBatchSampler
    from qa.eval.evaluator import EvalExamples, EvalFeatures
    from qa.lifecycle.preemption import PreemptionHandler
    from qa.tracking.tracker import Tracker


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
    """Windows to run the model on and what rank 0 decodes them with: the evaluation set, and the test set of
    ``--do_predict`` (answers optional: ``labeled`` says whether every example has them, to score)."""

    features: datasets.Dataset
    examples: EvalExamples
    arrays: EvalFeatures | None  # rank 0 only: what decoding needs besides the logits
    labeled: bool = True


@dataclass(frozen=True)
class Data:
    tokenizer: PreTrainedTokenizerBase
    train: datasets.Dataset | None
    eval: EvalSet | None
    test: EvalSet | None = None  # --do_predict


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
    # As Accelerate prepared them (under DeepSpeed its DeepSpeedOptimizerWrapper / DeepSpeedSchedulerWrapper).
    optimizer: AcceleratedOptimizer | None = None
    scheduler: AcceleratedScheduler | None = None
    train_loader: DataLoaderShard | DataLoaderDispatcher | None = None
    sampler: StepBatchSampler | None = None
    plan: StepPlan | None = None
