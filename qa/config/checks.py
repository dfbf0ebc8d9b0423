"""Value checks on a whole config: every message names its key."""

from __future__ import annotations

from pathlib import Path

from qa.checkpoint.store import check_location, is_store_uri
from qa.config.schema import TrainConfig
from qa.errors import ConfigError

# transformers.SchedulerType values the parser offers (qa/config/load.py) that this trainer cannot run: they
# step on an evaluation metric, while the loop steps the schedule after every optimizer step, or they need
# lr_scheduler_kwargs, for which run_qa_no_trainer.py has no flag. Refused here, not minutes into the job.
_METRIC = "steps on an evaluation metric; the training loop steps the schedule every optimizer step"
UNSUPPORTED_SCHEDULERS = {
    "reduce_lr_on_plateau": _METRIC,
    "greedy": _METRIC,
    "cosine_with_min_lr": "needs min_lr or min_lr_rate (lr_scheduler_kwargs), which no key sets",
    "cosine_warmup_with_min_lr": "needs min_lr or min_lr_rate (lr_scheduler_kwargs), which no key sets",
    "warmup_stable_decay": "needs num_decay_steps (lr_scheduler_kwargs), which no key sets",
}


def check_config(cfg: TrainConfig, *, check_files: bool = True) -> None:
    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{key}: {msg}")

    need(cfg.max_seq_length > 0, "max_seq_length", "must be positive")
    need(0 <= cfg.doc_stride < cfg.max_seq_length, "doc_stride",
         f"must be >= 0 and smaller than max_seq_length ({cfg.max_seq_length}), got {cfg.doc_stride}")
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "n_best_size", "max_answer_length", "logging_steps"):
        need(getattr(cfg, key) >= 1, key, f"must be >= 1, got {getattr(cfg, key)}")
    for key in ("learning_rate", "weight_decay", "num_warmup_steps", "max_grad_norm", "num_train_epochs",
                "adam_epsilon", "s3_upload_timeout", "preemption_grace_seconds"):
        need(getattr(cfg, key) >= 0, key, f"must not be negative, got {getattr(cfg, key)}")
    need(cfg.dropout is None or 0 <= cfg.dropout < 1, "dropout", f"must be in [0, 1) or null, got {cfg.dropout}")
    need(cfg.learning_rate > 0 or not cfg.do_train, "learning_rate", "must be positive when training")
    need(cfg.lr_scheduler_type not in UNSUPPORTED_SCHEDULERS, "lr_scheduler_type",
         f"{cfg.lr_scheduler_type} {UNSUPPORTED_SCHEDULERS.get(cfg.lr_scheduler_type)}; use linear, cosine, "
         "cosine_with_restarts, polynomial, constant, constant_with_warmup or inverse_sqrt")
    need(0 <= cfg.warmup_ratio <= 1, "warmup_ratio", f"must be in [0, 1], got {cfg.warmup_ratio}")
    if cfg.warmup_ratio > 0 and cfg.num_warmup_steps > 0:
        raise ConfigError(f"num_warmup_steps ({cfg.num_warmup_steps}) and warmup_ratio ({cfg.warmup_ratio}) are "
                          "both set; set one of them (the other to 0)")
    for key in ("adam_beta1", "adam_beta2"):
        need(0 <= getattr(cfg, key) < 1, key, f"must be in [0, 1), got {getattr(cfg, key)}")
    for key in ("max_train_samples", "max_eval_samples", "max_predict_samples", "max_train_steps", "eval_steps",
                "total_train_batch_size", "preprocessing_num_workers", "save_total_limit"):
        v = getattr(cfg, key)
        need(v is None or v >= 1, key, f"must be >= 1 or null, got {v}")
    if cfg.eval_strategy == "steps":
        need(cfg.eval_steps is not None, "eval_steps", "set eval_steps when eval_strategy is steps")
    need(cfg.dataloader_num_workers >= 0, "dataloader_num_workers", "must not be negative")
    if isinstance(cfg.checkpointing_steps, int):
        need(cfg.checkpointing_steps >= 1, "checkpointing_steps", "must be >= 1, 'epoch' or null")
    need(cfg.do_train or cfg.do_eval or cfg.do_predict, "do_train",
         "nothing to do: do_train, do_eval and do_predict are all false")
    if cfg.do_train:
        need(cfg.num_train_epochs > 0 or cfg.max_train_steps is not None, "num_train_epochs",
             "must be positive unless max_train_steps is set")
    has_hub = cfg.dataset_name is not None
    if cfg.do_train:
        need(has_hub or cfg.train_file is not None, "train_file", "set train_file or dataset_name to train")
    if cfg.do_eval:
        need(has_hub or cfg.validation_file is not None, "validation_file",
             "set validation_file or dataset_name to evaluate")
    if cfg.do_predict:
        need(cfg.test_file is not None, "test_file", "set test_file (SQuAD JSON or JSONL; answers optional) "
             "to predict")
    if cfg.dataset_name == "squad_v2" and not cfg.version_2_with_negative:
        raise ConfigError("version_2_with_negative: dataset_name is squad_v2, so set version_2_with_negative: true")
    if cfg.s3_uri is not None:
        try:
            check_location(cfg.s3_uri)
        except ValueError as e:
            raise ConfigError(f"s3_uri: {e}") from e
        need(cfg.s3_uri.startswith("s3://") or cfg.s3_sse is None, "s3_sse", "only applies to an s3:// s3_uri")
    if cfg.keep_training_when_disk_full:
        need(cfg.s3_uri is not None, "keep_training_when_disk_full",
             "needs s3_uri (without a store the local checkpoints are the only copies)")
    if cfg.s3_sse_kms_key_id is not None:
        need(cfg.s3_sse == "aws:kms", "s3_sse_kms_key_id", "only applies with s3_sse: aws:kms")
    r = cfg.resume_from_checkpoint
    if r is not None and not cfg.do_train:
        raise ConfigError("resume_from_checkpoint: only for training; to evaluate a run, pass its exported model "
                          "(model_name_or_path: OUTPUT_DIR/final) and resume_from_checkpoint: null")
    if check_files:
        for key, used in (("train_file", cfg.do_train), ("validation_file", cfg.do_eval),
                          ("test_file", cfg.do_predict), ("deepspeed", True)):
            path = getattr(cfg, key)
            if not used:
                continue
            if path is not None and not Path(path).is_file():
                where = "" if Path(path).is_absolute() else f" (relative paths are read from {Path.cwd()}" + (
                    ", then the config file's directory and those above it, then the repository)"
                    if key == "deepspeed" else ")")
                raise ConfigError(f"{key}: file not found: {path}{where}")
        if r is not None and r != "auto" and not is_store_uri(r) and not Path(r).is_dir():
            where = "" if Path(r).is_absolute() else f" (relative paths are read from {Path.cwd()})"
            raise ConfigError(f"resume_from_checkpoint: directory not found: {r}{where}")
