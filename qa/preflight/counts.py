"""Examples, features and the optimizer-step schedule a config implies (tokenized exactly as the run does)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qa.config import Config
from qa.errors import ConfigError

# ---------------------------------------------------------------------------------------------------------
# Data, schedule
# ---------------------------------------------------------------------------------------------------------


@dataclass
class DataCounts:
    train_examples: int | None = None
    train_features: int | None = None
    eval_examples: int | None = None
    eval_features: int | None = None
    train_unknown: str = "unknown (needs the dataset)"
    eval_unknown: str = "unknown (needs the dataset)"


def count_data(cfg: Config) -> DataCounts:
    """Examples and features exactly as the run builds them (same functions, same cache fingerprints)."""
    import datasets

    from qa.data import features as qa_features
    from qa.data import formats as qa_formats
    from qa.errors import DataError
    from qa.model.build import load_tokenizer

    counts = DataCounts()
    tokenizer: Any = None
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        for split, want, data_file, max_samples in (
                ("train", cfg.run.do_train, cfg.data.train_file, cfg.data.max_train_samples),
                ("validation", cfg.run.do_eval, cfg.data.validation_file, cfg.data.max_eval_samples)):
            if not want:
                continue
            try:
                examples = qa_formats.load_examples(
                    dataset_name=cfg.data.dataset_name, dataset_config_name=cfg.data.dataset_config_name,
                    data_file=data_file, split=split, skip_misaligned=cfg.data.skip_misaligned_answers,
                    max_samples=max_samples, version_2_with_negative=cfg.data.version_2_with_negative)
            except DataError:
                raise  # bad data fails the dry run, exactly as it would fail the run
            except Exception as e:  # noqa: BLE001 - a hub dataset that is not cached, offline: several types
                _set(counts, split, unknown=f"unknown (needs the dataset; {type(e).__name__})")
                continue
            _set(counts, split, examples=len(examples))
            if tokenizer is None:
                try:
                    tokenizer = load_tokenizer(cfg.model)
                except ConfigError:
                    raise
                except Exception as e:  # noqa: BLE001 - a hub tokenizer that is not cached, offline
                    why = f"unknown (needs the tokenizer; {type(e).__name__})"
                    counts.train_unknown = counts.eval_unknown = why
                    tokenizer = False
            if tokenizer is False:
                continue
            kwargs = {"max_seq_length": cfg.data.max_seq_length, "doc_stride": cfg.data.doc_stride,
                      "num_proc": cfg.data.preprocessing_num_workers, "overwrite_cache": cfg.data.overwrite_cache,
                      "source": data_file or f"{cfg.data.dataset_name}:{split}"}
            build = qa_features.build_train_features if split == "train" else qa_features.build_eval_features
            _set(counts, split, features=len(build(examples, tokenizer, **kwargs)))
    finally:
        if bars:
            datasets.enable_progress_bars()
    return counts


def _set(counts: DataCounts, split: str, *, examples: int | None = None, features: int | None = None,
         unknown: str | None = None) -> None:
    prefix = "train" if split == "train" else "eval"
    if examples is not None:
        setattr(counts, f"{prefix}_examples", examples)
    if features is not None:
        setattr(counts, f"{prefix}_features", features)
    if unknown is not None:
        setattr(counts, f"{prefix}_unknown", unknown)


@dataclass(frozen=True)
class Schedule:
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    epochs: int

    def epoch_ends(self) -> list[int]:
        """Steps at which an epoch runs to its end (a max_train_steps run may stop inside its last one)."""
        ends = (k * self.steps_per_epoch for k in range(1, self.epochs + 1))
        return [s for s in ends if s <= self.total_steps]

    def epoch_evaluations(self) -> list[int]:
        """Per-epoch evaluations: every epoch end but the last epoch's, which the final evaluation replaces."""
        return [s for s in self.epoch_ends() if s // self.steps_per_epoch < self.epochs]


def training_schedule(cfg: Config, train_features: int, world_size: int) -> Schedule:
    """Optimizer steps as qa.trainer.setup computes them (whole global batches per step, the remainder dropped)."""
    from qa.data.sampler import check_fills_one_step

    global_batch = cfg.batch.global_batch(world_size)
    per_epoch = train_features // global_batch
    check_fills_one_step(train_features, cfg.batch.per_device_train_batch_size, world_size,
                         cfg.batch.gradient_accumulation_steps)
    total, epochs = cfg.schedule.total_steps(per_epoch)
    return Schedule(global_batch=global_batch, steps_per_epoch=per_epoch, total_steps=total, epochs=epochs)
