"""The ``Store`` protocol every checkpoint store implements, and its errors.

A directory uploaded to ``<location>/<key_prefix>/`` exists for readers only once
``<key_prefix>/manifest.json`` is there (qa.checkpoint.manifest). The manifest (size and SHA-256 of every file,
plus free-form metadata) is written last, after every file was written and verified, so a crash or outage
mid-upload leaves nothing a reader could pick up; an upload to a prefix that already has one drops it first, and
a deletion removes it first. Readers trust nothing but the manifest: every downloaded file is re-hashed.
An upload assembled by several writers (each node its ranks' part, qa.checkpoint.parts) uses the pieces of
``upload_dir``: ``drop_manifest``, ``upload_files`` (verified, no manifest), small JSON records, and
``write_manifest`` by one writer once all parts are in; ``download_files`` fetches part of an upload.

Backends: ``s3://bucket/prefix`` (qa.checkpoint.s3, the only boto3 importer) and ``file:///abs/path`` or an
absolute path (qa.checkpoint.local: a local or mounted filesystem such as NFS). Both are ``ObjectStore``
subclasses (qa.checkpoint.objects), which implements this protocol once over a few primitives per backend;
``qa.checkpoint.backends.open_store`` picks one for a location, and ``qa.checkpoint.location`` holds the
rules a location must follow (checked at configuration time, without boto3)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

MiB = 1024 * 1024


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
