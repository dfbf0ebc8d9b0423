"""The run configuration: one typed dataclass, field names as in Hugging Face's ``run_qa_no_trainer.py``.

Every field carries ``metadata={"help": ...}``: ``HfArgumentParser`` (qa/config/load.py) turns it into the
``train.py --help`` line. Help text goes through argparse's %-formatting, so it must not contain a bare ``%``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qa.eval.settings import DecodeSettings


def _key(default: Any, text: str) -> Any:
    """A config key: its default and the one-line description ``--help`` prints."""
    return field(default=default, metadata={"help": text})


@dataclass
class TrainConfig:
    # --- model -------------------------------------------------------------------------------
    model_name_or_path: str = _key("distilbert-base-cased", "Hub model id or local directory of the encoder")
    tokenizer_name: str | None = _key(None, "Tokenizer id or directory, if not the model's own")
    attn_implementation: str | None = _key(
        "sdpa", "Attention kernel passed to from_pretrained (sdpa, eager, ...)")
    dropout: float | None = _key(
        None, "Hidden and attention dropout of the encoder (0 turns it off); null keeps the model's own")
    # --- data --------------------------------------------------------------------------------
    dataset_name: str | None = _key(None, "Hub dataset (squad, squad_v2) instead of local files")
    dataset_config_name: str | None = _key(None, "Configuration name of the Hub dataset")
    train_file: str | None = _key(
        None, "Training data: SQuAD-format JSON or JSONL, relative to the working directory")
    validation_file: str | None = _key(None, "Evaluation data: SQuAD-format JSON or JSONL")
    test_file: str | None = _key(None, "Prediction data (do_predict): SQuAD-format JSON or JSONL")
    max_seq_length: int = _key(384, "Tokens per window (question + context)")
    doc_stride: int = _key(128, "Tokens shared by consecutive windows of a long context")
    max_train_samples: int | None = _key(None, "Keep only the first N training examples (not features)")
    max_eval_samples: int | None = _key(None, "Keep only the first N evaluation examples")
    max_predict_samples: int | None = _key(None, "Keep only the first N prediction examples")
    preprocessing_num_workers: int | None = _key(
        None, "Processes for tokenizing the data (datasets.map num_proc)")
    overwrite_cache: bool = _key(False, "Rebuild cached features")
    # An answer whose ``answer_start`` does not point at its text is an error by default; set this to
    # drop such examples instead (they are counted and logged, never trained on with a wrong label).
    skip_misaligned_answers: bool = _key(
        False, "Drop (and count) answers whose answer_start does not match the text instead of stopping")
    version_2_with_negative: bool = _key(False, "SQuAD v2: some questions have no answer")
    # --- training ----------------------------------------------------------------------------
    do_train: bool = _key(True, "Train")
    do_eval: bool = _key(True, "Evaluate on validation_file / the dataset's dev split")
    do_predict: bool = _key(False, "Predict answers for test_file (answers optional): test_predictions.json")
    per_device_train_batch_size: int = _key(12, "Training windows per process per step")
    per_device_eval_batch_size: int = _key(64, "Evaluation windows per process")
    learning_rate: float = _key(3e-5, "Peak learning rate (AdamW)")
    weight_decay: float = _key(0.01, "AdamW weight decay (not on biases and norms)")
    adam_beta1: float = _key(0.9, "AdamW beta1")
    adam_beta2: float = _key(0.999, "AdamW beta2")
    adam_epsilon: float = _key(1e-8, "AdamW epsilon")
    max_grad_norm: float = _key(1.0, "Gradient clipping norm")
    num_train_epochs: float = _key(2.0, "Epochs (may be fractional)")
    max_train_steps: int | None = _key(None, "Optimizer steps; overrides num_train_epochs when set")
    gradient_accumulation_steps: int = _key(1, "Micro-batches per optimizer step")
    # Optional global batch (per_device_train_batch_size x world size x accumulation); when set, the
    # dry run and start-up check that this launch can make it, so a plan written for 8 GPUs cannot
    # silently run with another batch on 4.
    total_train_batch_size: int | None = _key(
        None, "Expected global batch; the launch must make exactly this many")
    # Checked against transformers.SchedulerType by the loader (qa/config/load.py), not here: the enum's
    # module imports torch, and qa.config must stay light for the launch scripts.
    lr_scheduler_type: str = _key("linear", "Learning-rate schedule after warmup")
    num_warmup_steps: int = _key(0, "Linear warmup optimizer steps")
    warmup_ratio: float = _key(
        0.0, "Warmup as a fraction of all optimizer steps (instead of num_warmup_steps)")
    seed: int = _key(42, "Random seed")
    # "auto": fp16 where CUDA is present, fp32 elsewhere (fp16 is GPU-only).
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = _key(
        "auto", "auto: fp16 on CUDA, bf16 on CPUs with a bf16 unit (AVX512-BF16, AMX), fp32 elsewhere")
    # DeepSpeed JSON (batch sizes, precision, optimizer values are "auto" and filled from this config);
    # null runs plain DDP. A relative path is found as qa/config/load.py:resolve_repo_path says.
    deepspeed: str | None = _key(
        "configs/deepspeed/zero2.json",
        "DeepSpeed JSON; null runs plain DDP. Relative: the working directory, else the repo")
    group_by_length: bool = _key(True, "Batch windows of similar length together")
    dataloader_num_workers: int = _key(2, "DataLoader worker processes")
    torch_compile: bool = _key(False, "torch.compile the model")
    tf32: bool = _key(True, "Allow TF32 matmuls on Ampere+ GPUs")
    logging_steps: int = _key(10, "Log every N optimizer steps")
    # When to evaluate during training (as HF Trainer's eval_strategy): after each epoch, every
    # `eval_steps` optimizer steps, or only at the end. The end of training is always evaluated.
    eval_strategy: Literal["epoch", "steps", "end"] = _key(
        "epoch", "Evaluate after each epoch, every eval_steps, or only at the end")
    eval_steps: int | None = _key(None, "Evaluate every N steps (eval_strategy steps)")
    # --- evaluation ---------------------------------------------------------------------------
    n_best_size: int = _key(DecodeSettings.n_best_size, "Start/end candidates per window when decoding")
    max_answer_length: int = _key(DecodeSettings.max_answer_length, "Longest answer span in tokens")
    null_score_diff_threshold: float = _key(
        0.0, "SQuAD v2: predict no answer when null beats the best span by more")
    save_logits: bool = _key(False, "Also save start/end logits of evaluation")
    # Also evaluate before the first step (the demo prints EM/F1 before and after training).
    eval_before_training: bool = _key(False, "Also evaluate before the first step")
    eval_sample_table_size: int = _key(16, "Predictions shown in the W&B sample table")
    # --- outputs, checkpoints, resume ----------------------------------------------------------
    output_dir: str = _key("outputs/run", "Where checkpoints, metrics and the model go")
    # A fresh run refuses an output_dir holding another run's checkpoints or final model; this moves that
    # directory aside (to <output_dir>.old-<UTC time>, nothing deleted) first. See qa/trainer/output_dir.py.
    overwrite_output_dir: bool = _key(
        False, "Start fresh in an output_dir that holds a run: the old one is moved aside to "
               "<output_dir>.old-<UTC time> (nothing is deleted)")
    run_name: str | None = _key(None, "Run name; null: output_dir's last part")
    # An int (every N optimizer steps), "epoch", or null (no intermediate checkpoints). HfArgumentParser
    # cannot take this Union; the loader parses it as a string and turns digits into an int.
    checkpointing_steps: int | Literal["epoch"] | None = _key(
        None, "Checkpoint every N optimizer steps, every epoch, or never (null)")
    save_total_limit: int | None = _key(3, "Checkpoints kept (oldest removed)")
    export_every_checkpoint: bool = _key(False, "Also export a loadable model with every checkpoint")
    # null, "auto" (newest complete local checkpoint, else newest in the store), a path, or a checkpoint's
    # s3:// or file:// URI in a store.
    resume_from_checkpoint: str | None = _key(
        None, "auto (newest local, else the store), a checkpoint directory, or an s3:// URI")
    resume_weights_only: bool = _key(
        False, "Resume model weights only (fresh optimizer, schedule and data order)")
    # A save that finds too little free space (or fails to write) stops the run with the previous checkpoint
    # intact; with s3_uri the user may rather skip that checkpoint and keep training (uploads go on, and rotation
    # may free space for the next save).
    keep_training_when_disk_full: bool = _key(
        False, "With s3_uri: skip a checkpoint the local disk has no room for and keep training (default: stop)")
    # --- S3 ---------------------------------------------------------------------------------------
    # Where checkpoints and the final model are copied: s3://bucket/prefix, or file:///absolute/path for a
    # shared or mounted filesystem (e.g. NFS; s3_create_bucket then creates the directory, s3_sse must be null).
    s3_uri: str | None = _key(None, "s3://bucket/prefix (or file:///abs/path) for checkpoints and the model")
    s3_create_bucket: bool = _key(False, "Create the bucket if missing")
    s3_sse: Literal["AES256", "aws:kms"] | None = _key(None, "Server-side encryption of uploads")
    s3_sse_kms_key_id: str | None = _key(None, "KMS key for s3_sse aws:kms")
    s3_upload_timeout: float = _key(1800.0, "Seconds an upload may take")
    # --- preemption -------------------------------------------------------------------------------
    # Seconds after SIGTERM/SIGUSR1 within which the checkpoint must be saved and uploaded.
    preemption_grace_seconds: float = _key(
        110.0, "Seconds after SIGTERM/SIGUSR1 to save and upload a checkpoint")
    # --- tracking -------------------------------------------------------------------------------
    report_to: Literal["wandb", "none"] = _key(
        "wandb", "Experiment tracker (--with_tracking is --report_to wandb)")
    wandb_project: str = _key("squad-qa", "W&B project")
    wandb_entity: str | None = _key(None, "W&B entity (team or user)")
    wandb_tags: list[str] = field(default_factory=list, metadata={"help": "W&B tags: --wandb_tags a b"})
    wandb_group: str | None = _key(None, "W&B group; null: the run name")
    # --- planning -------------------------------------------------------------------------------
    dry_run: bool = _key(False, "Print the resolved plan and exit; load no weights")

    # Resolved names that other modules use, so they need not repeat the defaulting rules.
    @property
    def resolved_run_name(self) -> str:
        return self.run_name or Path(self.output_dir).resolve().name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ``--help`` groups: the first key of each section -> its title (the sections above, in order).
SECTIONS = {
    "model_name_or_path": "model",
    "dataset_name": "data",
    "do_train": "training",
    "n_best_size": "evaluation",
    "output_dir": "outputs, checkpoints, resume",
    "s3_uri": "S3",
    "preemption_grace_seconds": "preemption",
    "report_to": "tracking",
    "dry_run": "planning",
}
