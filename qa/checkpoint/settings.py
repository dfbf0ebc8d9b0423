"""The checkpoint and storage sections of the run config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qa.data.settings import DataOrder


@dataclass(frozen=True)
class StorageSettings:
    """Where checkpoint copies go besides output_dir (``s3_*`` keys): S3 or a shared filesystem, or nowhere."""

    uri: str | None
    sse: str | None
    sse_kms_key_id: str | None
    create_bucket: bool
    upload_timeout_s: float


@dataclass(frozen=True)
class CheckpointSettings:
    output_dir: Path  # local checkpoints live in output_dir/checkpoints
    run_name: str  # this run's prefix in the store
    save_total_limit: int | None
    resume_weights_only: bool
    data_order: DataOrder  # what a checkpoint's data position depends on: a resume must keep it
    config_yaml: str  # the resolved run config, secrets redacted, saved beside each checkpoint
    keep_training_when_disk_full: bool = False  # with a store: skip a save the local disk has no room for
