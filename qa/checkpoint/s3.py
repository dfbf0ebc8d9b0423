"""Checkpoint storage on S3 (AWS or any S3-compatible server such as SeaweedFS / MinIO): a ``Store``.

This is the only module that imports boto3/botocore. Endpoint, region and credentials come from
the standard boto3 chain: AWS_* environment variables (AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 are
honoured natively by boto3 >= 1.28), shared config/credentials files, instance/IRSA roles.

Layout and manifest-last semantics are those of every store (qa.checkpoint.objects).

Integrity (works against both AWS S3 and SeaweedFS, verified against ``weed mini`` 4.x):
  * every PUT / UploadPart carries an ``x-amz-checksum-sha256`` of its body
    (``ChecksumAlgorithm="SHA256"``); the server recomputes it and rejects a mismatch with
    BadDigest, so bytes corrupted in transit never land.
  * the whole-file SHA-256 is stored as user metadata ``x-amz-meta-sha256`` and in the manifest.
    S3's own SHA-256 of a multipart object is COMPOSITE (a hash of the part hashes, "...-N"), on
    AWS and SeaweedFS alike, so it cannot be compared with a plain file digest; AWS offers
    full-object checksums only for the CRC family. After the upload, HEAD checks size and that
    metadata, and for single-part objects also the server-computed full-object SHA-256.
  * readers trust nothing but the manifest: every downloaded file is re-hashed and compared."""

from __future__ import annotations

import base64
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import boto3
import boto3.exceptions
import botocore.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from qa.checkpoint.location import key_parts, parse_s3_uri
from qa.checkpoint.objects import ObjectStore
from qa.checkpoint.store import CorruptObjectError, MiB, StorageError

logger = logging.getLogger(__name__)

_SSE_MODES = ("AES256", "aws:kms", "aws:kms:dsse")
_CREDENTIAL_ERRORS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "InvalidClientTokenId",
}
REACH_WAIT_S = 60.0  # how long start-up waits for an S3 endpoint that refuses connections
_BOTO_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, boto3.exceptions.Boto3Error)
# Test hook, MiB: files larger than this go up as multipart uploads (parts of at least 5 MiB, boto3's floor). The
# storage fault tests (tests/e2e/test_storage_faults.py) kill the server in the middle of a multipart upload of a
# real checkpoint of a few MiB; boto3 reads no transfer setting from the environment, and the alternative, a
# model with checkpoint files over 64 MiB, would cost CI about a hundred times the I/O.
MULTIPART_ENV = "QA_S3_MULTIPART_THRESHOLD_MIB"


def _default_multipart_threshold() -> int:
    value = os.environ.get(MULTIPART_ENV)
    return max(1, int(float(value) * MiB)) if value else 64 * MiB


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


class S3Store(ObjectStore):
    """Directory trees under one ``s3://bucket/prefix``; keys are relative to the prefix.

    Thread-safe (boto3 clients are).
    """

    _backend_errors: ClassVar[tuple[type[BaseException], ...]] = _BOTO_ERRORS

    def __init__(
        self,
        uri: str,
        *,
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
        create_bucket: bool = False,
        endpoint_url: str | None = None,
        region: str | None = None,
        multipart_threshold: int | None = None,
        multipart_chunksize: int = 64 * MiB,
        max_concurrency: int = 8,
        retry_attempts: int = 5,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 120.0,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
    ) -> None:
        """Normally leave credentials None (standard chain); explicit keys exist for local servers.
        ``multipart_threshold`` None: 64 MiB, or ``QA_S3_MULTIPART_THRESHOLD_MIB`` (a test hook)."""
        self.bucket, self.prefix = parse_s3_uri(uri)
        if sse is not None and sse not in _SSE_MODES:
            raise ValueError(f"sse must be one of {_SSE_MODES} or None, got {sse!r}")
        if sse_kms_key_id is not None and not (sse or "").startswith("aws:kms"):
            raise ValueError("sse_kms_key_id only applies with sse='aws:kms'")
        self.sse = sse
        self.sse_kms_key_id = sse_kms_key_id
        self.create_bucket = create_bucket
        self.transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold or _default_multipart_threshold(),
            multipart_chunksize=multipart_chunksize,
            max_concurrency=max_concurrency,
            use_threads=True,
        )
        # A private session: boto3's default session is not safe to create clients from
        # concurrently, and we run uploads from a background thread.
        self._session = boto3.session.Session(
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            region_name=region,
        )
        config = Config(
            retries={"mode": "standard", "max_attempts": retry_attempts},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            max_pool_connections=max(10, max_concurrency + 2),
        )
        self.client = self._session.client("s3", endpoint_url=endpoint_url, config=config)
        if not self._is_aws(self.client.meta.endpoint_url):
            # S3-compatible servers generally do not do virtual-host buckets (bucket.localhost).
            config = config.merge(Config(s3={"addressing_style": "path"}))
            self.client = self._session.client("s3", endpoint_url=endpoint_url, config=config)
        self.endpoint_url: str = self.client.meta.endpoint_url

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _is_aws(endpoint: str) -> bool:
        host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
        return host.endswith((".amazonaws.com", ".amazonaws.com.cn"))

    def uri_for(self, key_prefix: str) -> str:
        """The s3:// URI of ``key_prefix`` (relative to this store's prefix)."""
        return f"s3://{self.bucket}/{self._key(key_prefix)}".rstrip("/")

    def _key(self, key: str) -> str:
        """The bucket's key for a key relative to the store."""
        return "/".join(key_parts(self.prefix, key))

    def _sse_args(self) -> dict[str, str]:
        args: dict[str, str] = {}
        if self.sse:
            args["ServerSideEncryption"] = self.sse
        if self.sse_kms_key_id:
            args["SSEKMSKeyId"] = self.sse_kms_key_id
        return args

    def upload_extra_args(self, sha256_hex: str) -> dict[str, Any]:
        """ExtraArgs passed to boto3's managed upload for each file (exposed for tests)."""
        return {**self._sse_args(), "ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": sha256_hex}}

    def redact(self, text: str) -> str:
        # Belt and braces: our messages are built from error codes, never from the client config,
        # but a server could echo anything back, so scrub whatever secret we hold.
        creds = self._session.get_credentials()
        if creds is not None:
            frozen = creds.get_frozen_credentials()
            for secret in (frozen.secret_key, frozen.token):
                if secret:
                    text = text.replace(secret, "***")
        return text

    # -- start-up validation -----------------------------------------------------------------

    def _list_once_reachable(self, where: str, wait_s: float = REACH_WAIT_S) -> None:
        """ListObjectsV2, retried while the endpoint cannot be reached at all, for up to ``wait_s``: a store that
        is down for moments at start-up (found by the fault campaign: a restart during an S3 outage was refused as
        a config error, exit 2, which fails a Kubernetes Job) is waited for; a wrong endpoint still fails."""
        deadline, delay = time.monotonic() + wait_s, 0.5
        while True:
            try:
                # ListObjectsV2 rather than HeadBucket: HEAD answers carry no body, so a 403 would not
                # tell a bad key from a bad signature or a missing permission.
                self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(""), MaxKeys=1)
                return
            except botocore.exceptions.EndpointConnectionError as e:
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning("cannot reach S3 %s (%s); retrying for up to %.0fs", where, e, wait_s)
                time.sleep(delay)  # backoff between attempts to reach a store that is down
                delay = min(delay * 2, 8.0)

    def check(self) -> None:
        """Fail fast with an actionable message if the bucket is unusable (call at start-up)."""
        where = f"bucket {self.bucket!r} at endpoint {self.endpoint_url}"
        try:
            self._list_once_reachable(where)
        except botocore.exceptions.NoCredentialsError as e:
            raise StorageError(
                f"no AWS credentials found for {where}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "AWS_PROFILE or an instance role"
            ) from e
        except botocore.exceptions.ClientError as e:
            code = _error_code(e)
            message = e.response.get("Error", {}).get("Message", "")
            if code in _CREDENTIAL_ERRORS:
                raise StorageError(self.redact(
                    f"S3 credentials were rejected for {where}: {code}: {message} "
                    "(check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the AWS profile)"
                )) from e
            if code != "NoSuchBucket":
                raise StorageError(self.redact(f"cannot list s3://{self.bucket}/{self.prefix} ({where}): "
                                                f"{code}: {message}")) from e
            if not self.create_bucket:
                raise StorageError(
                    f"S3 {where} does not exist: create it, or set s3_create_bucket: true"
                ) from e
            self._create_bucket()
        except _BOTO_ERRORS as e:
            raise StorageError(self.redact(f"cannot reach S3 {where}: {e}")) from e
        self._probe_write()

    def _create_bucket(self) -> None:
        # No ACL argument on purpose: new buckets stay private (and AWS blocks public access).
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self.client.meta.region_name
        if self._is_aws(self.endpoint_url) and region and region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**kwargs)
        except botocore.exceptions.ClientError as e:
            if _error_code(e) != "BucketAlreadyOwnedByYou":
                raise StorageError(self.redact(f"cannot create bucket {self.bucket!r}: {e}")) from e
        logger.info("created S3 bucket %s at %s", self.bucket, self.endpoint_url)

    def _probe_write(self) -> None:
        # Listing proves read access only; a write probe (with the SSE settings, which also checks
        # KMS key access) catches read-only credentials before hours of training.
        key = self._key(f".write-probe-{uuid.uuid4().hex}")
        with self._errors(f"write probe s3://{self.bucket}/{key} (is write access granted?)"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=b"", **self._sse_args())
            self.client.delete_object(Bucket=self.bucket, Key=key)

    # -- the primitives of ObjectStore -------------------------------------------------------------

    def _put_file(self, path: Path, key: str, size: int, sha256: str,
                  progress: Callable[[int], None] | None) -> None:
        # ``progress`` is called from transfer threads.
        self.client.upload_file(str(path), self.bucket, self._key(key), ExtraArgs=self.upload_extra_args(sha256),
                                Config=self.transfer_config, Callback=progress)
        self._verify_remote(self._key(key), size, sha256)

    def _put_bytes(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body, ContentType="application/json",
                               ChecksumAlgorithm="SHA256", **self._sse_args())

    def _get_bytes(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except botocore.exceptions.ClientError as e:
            if _error_code(e) in ("NoSuchKey", "404"):
                return None
            raise

    def _get_file(self, key: str, target: Path) -> None:
        self.client.download_file(self.bucket, self._key(key), str(target), Config=self.transfer_config)

    def _list(self, key_prefix: str) -> list[str]:
        base = self._key(key_prefix)
        strip = len(f"{self.prefix}/") if self.prefix else 0
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                        Prefix=f"{base}/" if base else "")
        return [obj["Key"][strip:] for page in pages for obj in page.get("Contents", [])]

    def _delete(self, keys: Sequence[str]) -> None:
        # Keys exactly as listed, not re-normalised by _key: an object named "step_1/" (a folder marker some
        # tools write) or "a//b" must go by its own name, or it would outlive its checkpoint.
        names = [f"{self.prefix}/{k}" if self.prefix else k for k in keys]
        if len(names) == 1:
            self.client.delete_object(Bucket=self.bucket, Key=names[0])
            return
        for i in range(0, len(names), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in names[i : i + 1000]]
            result = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            # DeleteObjects answers 200 even when some keys failed (AccessDenied...); they are listed here.
            if errors := result.get("Errors"):
                first = errors[0]
                raise StorageError(f"{len(errors)} of {len(batch)} objects were not deleted, e.g. "
                                   f"s3://{self.bucket}/{first.get('Key')}: {first.get('Code')} "
                                   f"{first.get('Message', '')}".rstrip())

    def _verify_remote(self, key: str, size: int, sha256_hex: str) -> None:
        head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        remote_size = head.get("ContentLength")
        remote_sha = head.get("Metadata", {}).get("sha256")
        checksum = head.get("ChecksumSHA256")
        if checksum and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT" and "-" not in checksum:
            # Single-part upload: the server hashed the whole object itself, compare that too.
            server_hex = base64.b64decode(checksum).hex()
            if server_hex != sha256_hex:
                remote_sha = f"{server_hex} (server checksum)"
        if remote_size != size or remote_sha != sha256_hex:
            raise CorruptObjectError(
                f"s3://{self.bucket}/{key} does not match after upload: expected size {size} sha256 "
                f"{sha256_hex}, got size {remote_size} sha256 {remote_sha}"
            )
