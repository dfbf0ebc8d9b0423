"""The run configuration: one typed dataclass, field names as in Hugging Face's ``run_qa_no_trainer.py``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


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
    # A fresh run refuses an output_dir holding another run's checkpoints or final model; this moves that
    # directory aside (to <output_dir>.old-<UTC time>, nothing deleted) first. See qa/trainer/output_dir.py.
    overwrite_output_dir: bool = False
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
