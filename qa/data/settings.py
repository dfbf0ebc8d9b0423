"""The data section of the run config: what is read, how it is cut into windows, and how windows are batched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# How the global batch is split over ranks and accumulation; any split of the same global batch gives the same
# data per optimizer step (qa.data.sampler.StepBatchSampler).
BATCH_SPLIT_KEYS = ("per_device_train_batch_size", "gradient_accumulation_steps")


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

    def key(self, world_size: int) -> dict[str, Any]:
        return {"seed": self.seed, "per_device_train_batch_size": self.per_device_train_batch_size,
                "gradient_accumulation_steps": self.gradient_accumulation_steps,
                "global_batch_size": self.global_batch(world_size), "group_by_length": self.group_by_length,
                "max_seq_length": self.max_seq_length, "doc_stride": self.doc_stride,
                "max_train_samples": self.max_train_samples, "train_file": self.train_file,
                "dataset_name": self.dataset_name}

    def global_batch(self, world_size: int) -> int:
        return self.per_device_train_batch_size * world_size * self.gradient_accumulation_steps


@dataclass(frozen=True)
class DataSettings:
    dataset_name: str | None
    dataset_config_name: str | None
    train_file: str | None
    validation_file: str | None
    test_file: str | None
    do_train: bool  # which splits are read
    do_eval: bool
    do_predict: bool
    version_2_with_negative: bool
    skip_misaligned_answers: bool
    max_seq_length: int
    doc_stride: int
    max_train_samples: int | None
    max_eval_samples: int | None
    max_predict_samples: int | None
    preprocessing_num_workers: int | None
    overwrite_cache: bool
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    group_by_length: bool
    dataloader_num_workers: int
    seed: int

    @property
    def order(self) -> DataOrder:
        return DataOrder(seed=self.seed, per_device_train_batch_size=self.per_device_train_batch_size,
                         gradient_accumulation_steps=self.gradient_accumulation_steps,
                         group_by_length=self.group_by_length, max_seq_length=self.max_seq_length,
                         doc_stride=self.doc_stride, max_train_samples=self.max_train_samples,
                         train_file=self.train_file, dataset_name=self.dataset_name)
