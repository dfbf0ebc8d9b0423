"""The data and batch sections: what is read, how it is cut into windows, and how windows are batched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from qa.data.global_batch import global_batch
from qa.keys import key, need

# How the global batch is split over ranks and accumulation; any split of the same global batch gives the same
# data per optimizer step (qa.data.sampler.StepBatchSampler).
BATCH_SPLIT_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps")


@dataclass(frozen=True)
class DataSettings:
    TITLE: ClassVar[str] = "data"
    dataset_name: str | None = key(None, "Hub dataset (squad, squad_v2) instead of local files")
    dataset_config_name: str | None = key(None, "Configuration name of the Hub dataset")
    train_file: str | None = key(None, "Training data: SQuAD-format JSON or JSONL, relative to the working directory")
    validation_file: str | None = key(None, "Evaluation data: SQuAD-format JSON or JSONL")
    test_file: str | None = key(None, "Prediction data (do_predict): SQuAD-format JSON or JSONL")
    max_seq_length: int = key(384, "Tokens per window (question + context)")
    doc_stride: int = key(128, "Tokens shared by consecutive windows of a long context")
    max_train_samples: int | None = key(None, "Keep only the first N training examples (not features)")
    max_eval_samples: int | None = key(None, "Keep only the first N evaluation examples")
    max_predict_samples: int | None = key(None, "Keep only the first N prediction examples")
    preprocessing_num_workers: int | None = key(None, "Processes for tokenizing the data (datasets.map num_proc)")
    overwrite_cache: bool = key(False, "Rebuild cached features")
    # An answer whose answer_start does not point at its text is an error by default; this drops such examples
    # instead (counted and logged, never trained on with a wrong label).
    skip_misaligned_answers: bool = key(
        False, "Drop (and count) answers whose answer_start does not match the text instead of stopping")
    version_2_with_negative: bool = key(False, "SQuAD v2: some questions have no answer")
    dataloader_num_workers: int = key(2, "DataLoader worker processes")

    def check(self) -> None:
        need(self.max_seq_length > 0, "max_seq_length", "must be positive")
        need(0 <= self.doc_stride < self.max_seq_length, "doc_stride",
             f"must be >= 0 and smaller than max_seq_length ({self.max_seq_length}), got {self.doc_stride}")
        for name in ("max_train_samples", "max_eval_samples", "max_predict_samples", "preprocessing_num_workers"):
            v = getattr(self, name)
            need(v is None or v >= 1, name, f"must be >= 1 or null, got {v}")
        need(self.dataloader_num_workers >= 0, "dataloader_num_workers", "must not be negative")
        need(self.dataset_name != "squad_v2" or self.version_2_with_negative, "version_2_with_negative",
             "dataset_name is squad_v2, so set version_2_with_negative: true")


@dataclass(frozen=True)
class BatchSettings:
    TITLE: ClassVar[str] = "batch"
    per_device_train_batch_size: int = key(12, "Training windows per process per micro-batch")
    gradient_accumulation_steps: int = key(1, "Micro-batches per optimizer step")
    # When set, the dry run and start-up check that this launch makes exactly this global batch, so a plan
    # written for 8 GPUs cannot silently run with another batch on 4.
    total_train_batch_size: int | None = key(None, "Expected global batch; the launch must make exactly this many")
    group_by_length: bool = key(True, "Batch windows of similar length together")

    def check(self) -> None:
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            need(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        t = self.total_train_batch_size
        need(t is None or t >= 1, "total_train_batch_size", f"must be >= 1 or null, got {t}")

    def global_batch(self, world_size: int) -> int:
        """The one global-batch rule: windows per optimizer step over all ranks."""
        return global_batch(self.per_device_train_batch_size, world_size, self.gradient_accumulation_steps)


@dataclass(frozen=True)
class DataOrder:
    """What the epoch's global batch order depends on (qa.data.sampler.StepBatchSampler), and its split.

    A checkpoint records :meth:`key`; its data position means the same samples only under an equal key (the
    split may differ: qa.checkpoint.reshard)."""

    seed: int
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    group_by_length: bool
    max_seq_length: int
    doc_stride: int
    max_train_samples: int | None
    train_file: str | None
    dataset_name: str | None

    @classmethod
    def of(cls, data: DataSettings, batch: BatchSettings, seed: int) -> DataOrder:
        return cls(seed=seed, per_device_train_batch_size=batch.per_device_train_batch_size,
                   gradient_accumulation_steps=batch.gradient_accumulation_steps,
                   group_by_length=batch.group_by_length, max_seq_length=data.max_seq_length,
                   doc_stride=data.doc_stride, max_train_samples=data.max_train_samples,
                   train_file=data.train_file, dataset_name=data.dataset_name)

    def key(self, world_size: int) -> dict[str, Any]:
        return {"seed": self.seed, "per_device_train_batch_size": self.per_device_train_batch_size,
                "gradient_accumulation_steps": self.gradient_accumulation_steps,
                "global_batch_size": self.global_batch(world_size), "group_by_length": self.group_by_length,
                "max_seq_length": self.max_seq_length, "doc_stride": self.doc_stride,
                "max_train_samples": self.max_train_samples, "train_file": self.train_file,
                "dataset_name": self.dataset_name}

    def global_batch(self, world_size: int) -> int:
        return global_batch(self.per_device_train_batch_size, world_size, self.gradient_accumulation_steps)
