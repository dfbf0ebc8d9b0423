"""The rules a store location follows: what ``s3_uri`` accepts, S3 bucket naming, ``file://`` paths and safe
keys. Pure string rules without boto3, so configuration checks apply exactly what the backends accept."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

# S3 bucket naming rules (3-63 chars, lowercase, digits, dots, hyphens).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


STORE_SCHEMES = ("s3://", "file://")


def is_store_uri(spec: str) -> bool:
    """Whether ``spec`` names a location in a store rather than a local path (which it may still be, for
    ``open_store``: an absolute path is a filesystem store too)."""
    return spec.startswith(STORE_SCHEMES)


def check_location(uri: str) -> None:
    """ValueError with a one-line message unless ``uri`` is a valid ``s3://bucket[/prefix]`` (S3's bucket naming
    rules, no '.', '..' or empty prefix segments) or ``file:///absolute/path``.

    Without boto3, for configuration checks: what it accepts, ``open_store`` accepts too."""
    expected = f"expected s3://bucket/prefix or file:///absolute/path, got {uri!r}"
    if uri.startswith("s3://"):
        parse_s3_uri(uri)
        return
    if not uri.startswith("file:///"):
        raise ValueError(f"not a store location: {expected}")
    if local_path(uri) == Path("/"):
        raise ValueError(f"the filesystem root is not a store location: {expected}")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/some/prefix`` into ``("bucket", "some/prefix")`` (prefix may be "").

    Here rather than in qa.checkpoint.s3 so that configuration checks can apply S3's rules without boto3."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ValueError(f"not an S3 URI (expected s3://bucket/prefix): {uri!r}")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"S3 URI has no bucket name: {uri!r}")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ValueError(
            f"invalid S3 bucket name {bucket!r} in {uri!r}: use 3-63 lowercase letters, digits, '.' or '-'"
        )
    prefix = prefix.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ValueError(f"S3 prefix must not contain empty, '.' or '..' segments: {uri!r}")
    return bucket, prefix


def local_path(uri: str) -> Path:
    """The directory named by ``file:///abs/path`` or ``/abs/path``; ValueError for anything else."""
    if uri.startswith("file:"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise ValueError(f"expected file:///absolute/path (no host, query or fragment), got {uri!r}")
        path = unquote(parts.path)
    else:
        path = uri
    if not path or not os.path.isabs(path):
        raise ValueError(f"not a store location (expected s3://bucket/prefix, file:///absolute/path or an "
                         f"absolute path): {uri!r}")
    return Path(path)


def key_parts(*prefixes: str) -> list[str]:
    """The path segments of ``prefixes`` joined; ValueError on '.' or '..' (a key must never leave its root)."""
    parts = [p for prefix in prefixes for p in prefix.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"key must not contain '.' or '..' segments: {'/'.join(prefixes)!r}")
    return parts
