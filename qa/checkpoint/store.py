"""Where checkpoint copies live: the ``Store`` protocol every backend implements, the manifest they share,
their error types, and ``open_store`` to pick a backend from a location.

A directory uploaded to ``<location>/<key_prefix>/`` exists for readers only once
``<key_prefix>/manifest.json`` is there. The manifest (size and SHA-256 of every file, plus free-form
metadata) is written last, after every file was written and verified, so a crash or outage mid-upload
leaves nothing a reader could pick up; an upload to a prefix that already has one drops it first, and a
deletion removes it first. Readers trust nothing but the manifest: every downloaded file is re-hashed.
An upload assembled by several writers (each node its ranks' part, qa.checkpoint.parts) uses the pieces of
``upload_dir``: ``drop_manifest``, ``upload_files`` (verified, no manifest), small JSON records, and
``write_manifest`` by one writer once all parts are in; ``download_files`` fetches part of an upload.

Backends: ``s3://bucket/prefix`` (qa.checkpoint.s3, the only boto3 importer) and ``file:///abs/path`` or an
absolute path (qa.checkpoint.local: a local or mounted filesystem such as NFS). Both are ``ObjectStore``
subclasses (qa.checkpoint.objects), which implements this protocol once over a few primitives per backend."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
MiB = 1024 * 1024
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# S3 bucket naming rules (3-63 chars, lowercase, digits, dots, hyphens).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


class StorageError(RuntimeError):
    """A store operation failed; the message is safe to log (it never contains credentials)."""


class CorruptObjectError(StorageError):
    """An object's size or SHA-256 does not match its manifest, or a manifest is malformed."""


class UploadError(StorageError):
    """Background uploads did not all reach the store; ``missing`` lists their URIs."""

    def __init__(self, message: str, missing: list[str]) -> None:
        super().__init__(message)
        self.missing = missing


class Store(Protocol):
    """Directory trees under one location, published with a manifest. ``key_prefix`` is relative to it.

    Implementations are thread-safe: uploads run on a background thread while training reads names.
    """

    @property
    def uri(self) -> str: ...

    def uri_for(self, key_prefix: str) -> str:
        """The URI of ``key_prefix`` (for messages, logs and the tracker)."""
        ...

    def check(self) -> None:
        """Fail fast with an actionable StorageError if the location is unusable (call at start-up)."""
        ...

    def upload_dir(self, local_dir: str | os.PathLike[str], key_prefix: str,
                   metadata: Mapping[str, Any] | None = None, *,
                   progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Write and verify every file of ``local_dir``, then the manifest (last); returns the manifest."""
        ...

    # The pieces of upload_dir, for an upload assembled from several writers (one part per node):
    def drop_manifest(self, key_prefix: str) -> None:
        """Remove ``key_prefix``'s manifest, if any: from then on readers see no complete upload there."""
        ...

    def upload_files(self, local_dir: str | os.PathLike[str], key_prefix: str, rels: Sequence[str], *,
                     progress: Callable[[int], None] | None = None) -> dict[str, dict[str, Any]]:
        """Write, verify and make durable these files of ``local_dir`` (relative posix paths) under
        ``key_prefix``, leaving the manifest alone; returns their entries ``{rel: {"size", "sha256"}}``."""
        ...

    def write_manifest(self, key_prefix: str, entries: Mapping[str, Mapping[str, Any]],
                       metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Publish the manifest of ``entries`` (files already written and verified); returns it."""
        ...

    def put_record(self, key: str, record: Mapping[str, Any]) -> None:
        """Write a small JSON object durably (a node's part record); it is not data of any upload."""
        ...

    def read_record(self, key: str) -> dict[str, Any] | None:
        """The object :meth:`put_record` wrote at ``key``; None if there is none."""
        ...

    def read_manifest(self, key_prefix: str) -> dict[str, Any]:
        """The manifest of a complete upload; StorageError if there is none."""
        ...

    def list_complete(self, key_prefix: str = "") -> list[str]:
        """Sorted names of the direct sub-prefixes of ``key_prefix`` that have a manifest."""
        ...

    def list_keys(self, key_prefix: str = "") -> list[str]:
        """Sorted keys of every object under ``key_prefix``, complete or not, relative to the location."""
        ...

    def download_dir(self, key_prefix: str, local_dir: str | os.PathLike[str]) -> dict[str, Any]:
        """Fetch a complete upload into ``local_dir`` (absent or empty); CorruptObjectError names a bad object."""
        ...

    def download_files(self, key_prefix: str, local_dir: str | os.PathLike[str], manifest: Mapping[str, Any],
                       rels: Sequence[str]) -> None:
        """Fetch these files of a complete upload (``manifest``: its manifest) into ``local_dir``, each verified
        before it is renamed into place; other files there are left alone."""
        ...

    def delete_prefix(self, key_prefix: str) -> int:
        """Delete everything under ``key_prefix``, manifest first; returns how many objects."""
        ...

    def redact(self, text: str) -> str:
        """``text`` with any secret this store holds replaced by ``***``."""
        ...


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


def open_store(uri: str, **s3_options: Any) -> Store:
    """The backend for ``uri``: ``s3://bucket/prefix`` or ``file:///abs/path`` / an absolute path.

    ``s3_options`` go to S3Store; for a filesystem only ``create_bucket`` means something (create the directory).
    """
    if uri.startswith("s3://"):
        from qa.checkpoint.s3 import S3Store  # boto3 is loaded only when S3 is used

        return S3Store(uri, **s3_options)
    from qa.checkpoint.local import LocalStore

    root = local_path(uri)
    create = bool(s3_options.pop("create_bucket", False))
    unused = sorted(k for k, v in s3_options.items() if v is not None)
    if unused:
        raise ValueError(f"{', '.join(unused)} only apply to s3:// locations, not {uri!r}")
    return LocalStore(root, create=create)


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


# -- the manifest: built, validated and checked here only ---------------------------------------------


def hash_file(path: Path) -> tuple[int, str]:
    """(size, SHA-256 hex) of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def files_to_upload(root: Path) -> list[tuple[str, Path]]:
    """(relative posix path, path) of every file under ``root``, sorted; a manifest there is not data."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return [(p.relative_to(root).as_posix(), p) for p in files if p.relative_to(root).as_posix() != MANIFEST_NAME]


def build_manifest(entries: Mapping[str, Mapping[str, Any]], metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The manifest of files ``{rel: {"size", "sha256"}}`` plus free-form metadata."""
    return {
        "format": MANIFEST_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(),
        "files": {rel: dict(info) for rel, info in entries.items()},
        "metadata": dict(metadata or {}),
    }


def manifest_body(manifest: Mapping[str, Any], redact: Callable[[str], str]) -> bytes:
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    if redact(text) != text:
        raise StorageError("refusing to write a manifest that contains a secret of the store (check metadata)")
    return text.encode()


def validate_manifest(manifest: Any, where: str) -> dict[str, Any]:
    """``manifest`` if well formed (safe relative paths, sizes, SHA-256 digests); CorruptObjectError otherwise."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CorruptObjectError(f"{where} is not a valid manifest")
    if manifest.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
        raise StorageError(f"{where} has manifest format {manifest.get('format')!r}; this version reads "
                           f"{MANIFEST_FORMAT}")
    for rel, info in manifest["files"].items():
        segments = rel.split("/") if isinstance(rel, str) else [""]
        if rel == MANIFEST_NAME or any(s in ("", ".", "..") for s in segments):
            raise CorruptObjectError(f"manifest {where} has an unsafe path {rel!r}")
        ok = (isinstance(info, dict) and type(info.get("size")) is int and info["size"] >= 0
              and isinstance(info.get("sha256"), str) and _SHA256_RE.match(info["sha256"]))
        if not ok:
            raise CorruptObjectError(f"manifest {where} has an invalid entry for {rel!r}: {info!r}")
    return manifest


def _load_json(body: bytes) -> Any:
    # None for bytes that are not JSON: the caller's check of the value then names what was expected.
    try:
        return json.loads(body)
    except ValueError:
        return None


def parse_manifest(body: bytes, where: str) -> dict[str, Any]:
    return validate_manifest(_load_json(body), where)


def parse_record(body: bytes, where: str) -> dict[str, Any]:
    record = _load_json(body)
    if not isinstance(record, dict):
        raise CorruptObjectError(f"{where} is not a JSON object")
    return record


def verify_file(path: Path, entry: Mapping[str, Any], where: str) -> None:
    """CorruptObjectError naming ``where`` unless ``path`` has the manifest entry's size and SHA-256."""
    size, digest = hash_file(path)
    if size != entry["size"] or digest != entry["sha256"]:
        raise CorruptObjectError(f"{where} is corrupt: expected size {entry['size']} sha256 {entry['sha256']}, "
                                 f"got size {size} sha256 {digest}")
