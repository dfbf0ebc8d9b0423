"""One typed run configuration: YAML file + ``--key value`` overrides, validated before any GPU work.

Field names follow Hugging Face's ``run_qa_no_trainer.py`` wherever that script has one, so a user
switching over can keep their flags.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml


class ConfigError(ValueError):
    """A bad configuration value; the message names the key."""


@dataclass
class TrainConfig:
    # --- model -------------------------------------------------------------------------------
    model_name_or_path: str = "distilbert-base-cased"
    tokenizer_name: str | None = None
    attn_implementation: str | None = "sdpa"
    # --- data --------------------------------------------------------------------------------
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    max_seq_length: int = 384
    doc_stride: int = 128
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    preprocessing_num_workers: int | None = None
    overwrite_cache: bool = False
    # An answer whose ``answer_start`` does not point at its text is an error by default; set this to
    # drop such examples instead (they are counted and logged, never trained on with a wrong label).
    skip_misaligned_answers: bool = False
    version_2_with_negative: bool = False
    # --- training ----------------------------------------------------------------------------
    do_train: bool = True
    do_eval: bool = True
    per_device_train_batch_size: int = 12
    per_device_eval_batch_size: int = 64
    learning_rate: float = 3e-5
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    num_train_epochs: float = 2.0
    max_train_steps: int | None = None
    gradient_accumulation_steps: int = 1
    # Optional global batch (per_device_train_batch_size x world size x accumulation); when set, the
    # dry run and start-up check that this launch can make it, so a plan written for 8 GPUs cannot
    # silently run with another batch on 4.
    total_train_batch_size: int | None = None
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    num_warmup_steps: int = 0
    seed: int = 42
    # "auto": fp16 where CUDA is present, fp32 elsewhere (fp16 is GPU-only).
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    # DeepSpeed JSON (batch sizes, precision, optimizer values are "auto" and filled from this config);
    # null runs plain DDP.
    deepspeed: str | None = "configs/deepspeed/zero2.json"
    group_by_length: bool = True
    dataloader_num_workers: int = 2
    torch_compile: bool = False
    tf32: bool = True
    logging_steps: int = 10
    # When to evaluate during training (as HF Trainer's eval_strategy): after each epoch, every
    # `eval_steps` optimizer steps, or only at the end. The end of training is always evaluated.
    eval_strategy: Literal["epoch", "steps", "end"] = "epoch"
    eval_steps: int | None = None
    # --- evaluation ---------------------------------------------------------------------------
    n_best_size: int = 20
    max_answer_length: int = 30
    null_score_diff_threshold: float = 0.0
    save_logits: bool = False
    # Also evaluate before the first step (the demo prints EM/F1 before and after training).
    eval_before_training: bool = False
    eval_sample_table_size: int = 16
    # --- outputs, checkpoints, resume ----------------------------------------------------------
    output_dir: str = "outputs/run"
    run_name: str | None = None
    # An int (every N optimizer steps), "epoch", or null (no intermediate checkpoints).
    checkpointing_steps: int | Literal["epoch"] | None = None
    save_total_limit: int | None = 3
    export_every_checkpoint: bool = False
    # null, "auto" (newest complete local checkpoint, else newest in S3), a path, or an s3:// URI.
    resume_from_checkpoint: str | None = None
    resume_weights_only: bool = False
    # --- S3 ---------------------------------------------------------------------------------------
    s3_uri: str | None = None
    s3_create_bucket: bool = False
    s3_sse: Literal["AES256", "aws:kms"] | None = None
    s3_sse_kms_key_id: str | None = None
    s3_upload_timeout: float = 1800.0
    # --- preemption -------------------------------------------------------------------------------
    # Seconds after SIGTERM/SIGUSR1 within which the checkpoint must be saved and uploaded.
    preemption_grace_seconds: float = 110.0
    # --- tracking -------------------------------------------------------------------------------
    report_to: Literal["wandb", "none"] = "wandb"
    wandb_project: str = "squad-qa"
    wandb_entity: str | None = None
    wandb_tags: list[str] = field(default_factory=list)
    wandb_group: str | None = None
    # --- planning -------------------------------------------------------------------------------
    dry_run: bool = False

    # Resolved names that other modules use, so they need not repeat the defaulting rules.
    @property
    def resolved_run_name(self) -> str:
        return self.run_name or Path(self.output_dir).resolve().name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PREEMPTED_EXIT_CODE = 42  # launch/ scripts requeue on this code; chosen to clash with no signal (128+N).

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the annotation; accept YAML-ish strings from the command line."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            if type(None) in options:
                return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(key, value, opt)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not valid ({'; '.join(errors)})")
    if origin is Literal:
        allowed = get_args(hint)
        if isinstance(value, bool):
            # YAML 1.1 reads a bare `no` as False: `mixed_precision: no` must still mean "no".
            value = {False: "no", True: "yes"}[value]
        for a in allowed:
            if value == a or (isinstance(value, str) and str(a) == value):
                return a
        raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
    if origin is list:
        (item,) = get_args(hint)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(key, v, item) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover - guards new fields


def _check(cfg: TrainConfig, *, check_files: bool = True) -> None:
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
    need(cfg.learning_rate > 0 or not cfg.do_train, "learning_rate", "must be positive when training")
    for key in ("adam_beta1", "adam_beta2"):
        need(0 <= getattr(cfg, key) < 1, key, f"must be in [0, 1), got {getattr(cfg, key)}")
    for key in ("max_train_samples", "max_eval_samples", "max_train_steps", "eval_steps", "total_train_batch_size",
                "preprocessing_num_workers", "save_total_limit"):
        v = getattr(cfg, key)
        need(v is None or v >= 1, key, f"must be >= 1 or null, got {v}")
    if cfg.eval_strategy == "steps":
        need(cfg.eval_steps is not None, "eval_steps", "set eval_steps when eval_strategy is steps")
    need(cfg.dataloader_num_workers >= 0, "dataloader_num_workers", "must not be negative")
    if isinstance(cfg.checkpointing_steps, int):
        need(cfg.checkpointing_steps >= 1, "checkpointing_steps", "must be >= 1, 'epoch' or null")
    need(cfg.do_train or cfg.do_eval, "do_train", "nothing to do: do_train and do_eval are both false")
    if cfg.do_train:
        need(cfg.num_train_epochs > 0 or cfg.max_train_steps is not None, "num_train_epochs",
             "must be positive unless max_train_steps is set")
    has_hub = cfg.dataset_name is not None
    if cfg.do_train:
        need(has_hub or cfg.train_file is not None, "train_file", "set train_file or dataset_name to train")
    if cfg.do_eval:
        need(has_hub or cfg.validation_file is not None, "validation_file",
             "set validation_file or dataset_name to evaluate")
    if cfg.dataset_name == "squad_v2" and not cfg.version_2_with_negative:
        raise ConfigError("version_2_with_negative: dataset_name is squad_v2, so set version_2_with_negative: true")
    if cfg.s3_uri is not None:
        need(cfg.s3_uri.startswith("s3://") and len(cfg.s3_uri) > 5, "s3_uri",
             f"must look like s3://bucket/prefix, got {cfg.s3_uri!r}")
    if cfg.s3_sse_kms_key_id is not None:
        need(cfg.s3_sse == "aws:kms", "s3_sse_kms_key_id", "only applies with s3_sse: aws:kms")
    r = cfg.resume_from_checkpoint
    if r is not None and not cfg.do_train:
        raise ConfigError("resume_from_checkpoint: only for training; to evaluate a run, pass its exported model "
                          "(model_name_or_path: OUTPUT_DIR/final) and resume_from_checkpoint: null")
    if check_files:
        for key in ("train_file", "validation_file", "deepspeed"):
            path = getattr(cfg, key)
            if key == "train_file" and not cfg.do_train or key == "validation_file" and not cfg.do_eval:
                continue
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{key}: file not found: {path}")
        if r is not None and r != "auto" and not r.startswith("s3://") and not Path(r).is_dir():
            raise ConfigError(f"resume_from_checkpoint: directory not found: {r}")


def from_dict(values: dict[str, Any], *, source: str = "config", check_files: bool = True) -> TrainConfig:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; see qa/config.py for the valid keys")
    kwargs = {k: _coerce(k, v, _HINTS[k]) for k, v in values.items()}
    cfg = TrainConfig(**kwargs)
    _check(cfg, check_files=check_files)
    return cfg


def _parse_overrides(argv: Sequence[str]) -> tuple[str | None, dict[str, Any]]:
    config_path = None
    overrides: dict[str, Any] = {}
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; use --key value")
        key, eq, val = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            if key == "help":
                raise ConfigError("usage: train.py --config FILE.yaml [--key value ...]; keys: "
                                  + ", ".join(_FIELDS))
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is None or nxt.startswith("--"):
                # A bare boolean flag such as --dry_run means true.
                if key in _HINTS and _HINTS[key] is bool:
                    val = "true"
                else:
                    raise ConfigError(f"--{key}: missing value")
            else:
                val = nxt
                i += 1
        i += 1
        if key == "config":
            config_path = val
        else:
            if key not in _FIELDS:
                raise ConfigError(f"--{key}: unknown option; see qa/config.py for the valid keys")
            # Let YAML type plain scalars (numbers, null, lists) but keep strings as typed.
            try:
                parsed = yaml.safe_load(val)
            except yaml.YAMLError:
                parsed = val
            overrides[key] = val if isinstance(parsed, dict) else parsed
    return config_path, overrides


def load_config(argv: Sequence[str] | None = None, *, check_files: bool = True) -> TrainConfig:
    """``--config FILE`` (YAML), then ``--key value`` overrides; raises ConfigError naming the key."""
    argv = sys.argv[1:] if argv is None else argv
    config_path, overrides = _parse_overrides(argv)
    values: dict[str, Any] = {}
    if config_path is not None:
        p = Path(config_path)
        if not p.is_file():
            raise ConfigError(f"--config: file not found: {config_path}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{config_path}: invalid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_path}: expected a mapping of key: value")
        unknown = sorted(set(loaded) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"{config_path}: unknown key(s) {unknown}")
        values.update(loaded)
    values.update(overrides)
    return from_dict(values, source=config_path or "command line", check_files=check_files)


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """The resolved config, secrets redacted: it lands in output dirs, checkpoints and buckets."""
    from qa.tracking import redact

    Path(path).write_text(yaml.safe_dump(redact(cfg.to_dict()), sort_keys=False))
