"""The checkpoint and storage sections: what is kept, what a run resumes from, and where copies go."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from qa.keys import key, need


@dataclass(frozen=True)
class CheckpointSettings:
    TITLE: ClassVar[str] = "checkpoints and resume"
    save_total_limit: int | None = key(3, "Checkpoints kept (oldest removed)")
    export_every_checkpoint: bool = key(False, "Also export a loadable model with every checkpoint")
    # null, "auto" (newest complete local checkpoint, else newest in the store), a path, or a checkpoint's
    # s3:// or file:// URI in a store.
    resume_from_checkpoint: str | None = key(
        None, "auto (newest local, else the store), a checkpoint directory, or an s3:// URI")
    resume_weights_only: bool = key(False, "Resume model weights only (fresh optimizer, schedule and data order)")
    # A save that finds too little free space (or fails to write) stops the run with the previous checkpoint
    # intact; with s3_uri the user may rather skip that checkpoint and keep training (uploads go on, and rotation
    # may free space for the next save).
    keep_training_when_disk_full: bool = key(
        False, "With s3_uri: skip a checkpoint the local disk has no room for and keep training (default: stop)")

    def check(self) -> None:
        v = self.save_total_limit
        need(v is None or v >= 1, "save_total_limit", f"must be >= 1 or null, got {v}")


@dataclass(frozen=True)
class StorageSettings:
    """Where checkpoint copies go besides output_dir. The keys say s3_ for run_qa users; a ``file://`` location
    (a shared or mounted filesystem) is a store too, so code calls it the store."""

    TITLE: ClassVar[str] = "storage (S3 or a shared filesystem)"
    # s3://bucket/prefix, or file:///absolute/path for a shared or mounted filesystem (e.g. NFS; s3_create_bucket
    # then creates the directory, s3_sse must be null).
    s3_uri: str | None = key(None, "s3://bucket/prefix (or file:///abs/path) for checkpoints and the model")
    s3_create_bucket: bool = key(False, "Create the bucket (or directory) if missing")
    s3_sse: Literal["AES256", "aws:kms"] | None = key(None, "Server-side encryption of uploads")
    s3_sse_kms_key_id: str | None = key(None, "KMS key for s3_sse aws:kms")
    s3_upload_timeout: float = key(1800.0, "Seconds an upload may take")

    @property
    def store_uri(self) -> str | None:
        return self.s3_uri

    def check(self) -> None:
        from qa.checkpoint.location import check_location  # pure string rules, no boto3

        need(self.s3_upload_timeout >= 0, "s3_upload_timeout", f"must not be negative, got {self.s3_upload_timeout}")
        if self.s3_uri is not None:
            try:
                check_location(self.s3_uri)
            except ValueError as e:
                need(False, "s3_uri", str(e))
            need(self.s3_uri.startswith("s3://") or self.s3_sse is None, "s3_sse", "only applies to an s3:// s3_uri")
        need(self.s3_sse_kms_key_id is None or self.s3_sse == "aws:kms", "s3_sse_kms_key_id",
             "only applies with s3_sse: aws:kms")
