"""``ObjectStore``: the ``Store`` protocol (qa.checkpoint.store) written once, over a few backend primitives.

Manifest-last uploads, re-hashed downloads that land in a temporary directory or sibling file, manifest-first
deletion, listing and small JSON records live here, so every backend keeps the same guarantees. The
primitives see keys relative to the store's location (``run/checkpoints/step_0000100/config.json``), already
checked by ``key_parts`` never to leave it, and run inside ``_errors`` (their failures become StorageError).

To add a backend (e.g. GCS): subclass ObjectStore, set ``_backend_errors`` to the exceptions of its client
(or override ``_errors``), and implement
  * ``uri_for(key)``: the URI of a key, for messages, logs and the tracker;
  * ``check()``: fail fast with an actionable StorageError if the location is unusable;
  * ``_put_file(path, key, size, sha256, progress)``: write a local file durably, and verify what landed;
  * ``_put_bytes(key, body)``: write a small object durably;
  * ``_get_bytes(key)``: an object's bytes, None if there is none;
  * ``_get_file(key, target)``: copy an object into a local file;
  * ``_list(key_prefix)``: the keys of every object under ``key_prefix/``;
  * ``_delete(keys)``: delete these objects (an absent one is no error);
  * ``redact(text)`` if it holds a secret, and ``_drop_empty(key)`` if deleting objects can leave something
    behind (a filesystem's directories);
then add its scheme to ``STORE_SCHEMES`` and ``check_location`` in qa.checkpoint.location (what the config accepts)
and to ``open_store`` in qa.checkpoint.backends. Nothing outside qa/checkpoint/ names a scheme."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from qa.checkpoint.location import key_parts
from qa.checkpoint.manifest import (
    MANIFEST_NAME,
    build_manifest,
    encode_json,
    files_to_upload,
    hash_file,
    parse_manifest,
    parse_record,
    verify_file,
)
from qa.checkpoint.store import MiB, StorageError

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]


class ObjectStore(ABC):
    """A ``Store`` over a backend's objects; see the module docstring for what a backend implements.

    Thread-safe as long as the primitives are: uploads run on a background thread while training reads names.
    """

    # Raised by the backend's client; ``_errors`` turns them into StorageError (retried by the uploader,
    # caught by resume), so callers never need to know the backend's exception types.
    _backend_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    # -- what a backend implements ---------------------------------------------------------------

    @abstractmethod
    def uri_for(self, key_prefix: str) -> str:
        """The URI of ``key_prefix`` (for messages, logs and the tracker)."""

    @abstractmethod
    def check(self) -> None:
        """Fail fast with an actionable StorageError if the location is unusable (call at start-up)."""

    @abstractmethod
    def _put_file(self, path: Path, key: str, size: int, sha256: str, progress: Progress | None) -> None:
        """Write ``path`` (``size`` bytes with this SHA-256) durably at ``key``; StorageError unless what landed
        is verified to match. ``progress`` gets byte counts as they are sent."""

    @abstractmethod
    def _put_bytes(self, key: str, body: bytes) -> None:
        """Write a small object (a manifest or record) durably at ``key``."""

    @abstractmethod
    def _get_bytes(self, key: str) -> bytes | None:
        """The bytes of the object at ``key``; None if there is no such object."""

    @abstractmethod
    def _get_file(self, key: str, target: Path) -> None:
        """Copy the object at ``key`` into the local file ``target`` (verified by the caller)."""

    @abstractmethod
    def _list(self, key_prefix: str) -> list[str]:
        """The keys of every object under ``key_prefix/`` (every object for "")."""

    @abstractmethod
    def _delete(self, keys: Sequence[str]) -> None:
        """Delete the objects at ``keys`` durably; an absent one is no error."""

    def _drop_empty(self, key_prefix: str) -> None:
        """Remove what is left under ``key_prefix`` once its objects are deleted (a filesystem's directories)."""
        return None  # an object store keeps nothing but objects

    def redact(self, text: str) -> str:
        """``text`` with any secret this store holds replaced by ``***``; a backend without secrets has none."""
        return text

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except StorageError:
            raise
        except self._backend_errors as e:
            # A server may echo anything back, so scrub whatever secret the store holds.
            raise StorageError(self.redact(f"{what} failed: {e}")) from e

    # -- keys ------------------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        return self.uri_for("")

    @staticmethod
    def _join(*parts: str) -> str:
        return "/".join(key_parts(*parts))

    def _upload_key(self, key_prefix: str) -> str:
        key = self._join(key_prefix)
        if not key:
            raise ValueError("give a non-empty key prefix: the store's root holds uploads, it is not one")
        return key

    # -- upload ------------------------------------------------------------------------------------

    def upload_dir(self, local_dir: str | os.PathLike[str], key_prefix: str,
                   metadata: Mapping[str, Any] | None = None, *,
                   progress: Progress | None = None) -> dict[str, Any]:
        """Write and verify every file of ``local_dir``, then the manifest (last); returns the manifest."""
        t0 = time.monotonic()
        self._upload_key(key_prefix)
        root = Path(local_dir)
        if not root.is_dir():
            raise StorageError(f"not a directory: {root}")
        # Readers must not see an old manifest describing objects that are being replaced.
        self.drop_manifest(key_prefix)
        entries = self.upload_files(root, key_prefix, [rel for rel, _ in files_to_upload(root)], progress=progress)
        manifest = self.write_manifest(key_prefix, entries, metadata)
        total = sum(e["size"] for e in entries.values())
        logger.info("uploaded %d files (%.1f MiB) to %s in %.1fs", len(entries), total / MiB,
                    self.uri_for(key_prefix), time.monotonic() - t0)
        return manifest

    def drop_manifest(self, key_prefix: str) -> None:
        key = self._join(self._upload_key(key_prefix), MANIFEST_NAME)
        with self._errors(f"removing {self.uri_for(key)}"):
            self._delete([key])

    def upload_files(self, local_dir: str | os.PathLike[str], key_prefix: str, rels: Sequence[str], *,
                     progress: Progress | None = None) -> dict[str, dict[str, Any]]:
        base = self._upload_key(key_prefix)
        entries: dict[str, dict[str, Any]] = {}
        for rel in rels:
            path = Path(local_dir).joinpath(*key_parts(rel))
            key = self._join(base, rel)
            with self._errors(f"upload of {path} to {self.uri_for(key)}"):
                size, digest = hash_file(path)
                self._put_file(path, key, size, digest, progress)
            entries[rel] = {"size": size, "sha256": digest}
        return entries

    def write_manifest(self, key_prefix: str, entries: Mapping[str, Mapping[str, Any]],
                       metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        manifest = build_manifest(entries, metadata)
        self._put_json(self._join(self._upload_key(key_prefix), MANIFEST_NAME), manifest)
        return manifest

    def put_record(self, key: str, record: Mapping[str, Any]) -> None:
        self._put_json(self._join(key), record)

    def _put_json(self, key: str, value: Mapping[str, Any]) -> None:
        body = encode_json(value, self.redact)
        with self._errors(f"upload of {self.uri_for(key)}"):
            self._put_bytes(key, body)

    # -- read side ---------------------------------------------------------------------------------

    def read_record(self, key: str) -> dict[str, Any] | None:
        key = self._join(key)
        body = self._read(key)
        return None if body is None else parse_record(body, self.uri_for(key))

    def read_manifest(self, key_prefix: str) -> dict[str, Any]:
        key = self._join(key_prefix, MANIFEST_NAME)
        body = self._read(key)
        if body is None:
            raise StorageError(f"no complete upload at {self.uri_for(key_prefix)} (no {MANIFEST_NAME})")
        return parse_manifest(body, self.uri_for(key))

    def _read(self, key: str) -> bytes | None:
        with self._errors(f"reading {self.uri_for(key)}"):
            return self._get_bytes(key)

    def list_complete(self, key_prefix: str = "") -> list[str]:
        base = self._join(key_prefix)
        start = len(base) + 1 if base else 0
        names = []
        for key in self.list_keys(base):
            name, _, rest = key[start:].partition("/")
            if name and rest == MANIFEST_NAME:
                names.append(name)
        return sorted(names)

    def list_keys(self, key_prefix: str = "") -> list[str]:
        base = self._join(key_prefix)
        with self._errors(f"listing {self.uri_for(base)}"):
            return sorted(self._list(base))

    def download_files(self, key_prefix: str, local_dir: str | os.PathLike[str], manifest: Mapping[str, Any],
                       rels: Sequence[str]) -> None:
        """Each file goes to a temporary sibling, verified and only then renamed over ``local_dir/rel``. The
        directory is shared (the nodes of a shared filesystem each fill in their ranks'
        files), so it is the caller's marker, not the directory, that says when the whole is there."""
        dest = Path(local_dir)
        for rel in rels:
            info = manifest["files"].get(rel)
            if info is None:
                raise StorageError(f"{self.uri_for(self._join(key_prefix, rel))} is not in the manifest")
            target = dest.joinpath(*rel.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
            try:
                self._fetch(key_prefix, rel, info, tmp)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)

    def _fetch(self, key_prefix: str, rel: str, entry: Mapping[str, Any], target: Path) -> None:
        key = self._join(key_prefix, rel)
        with self._errors(f"download of {self.uri_for(key)}"):
            self._get_file(key, target)
        verify_file(target, entry, self.uri_for(key))

    # -- deletion ----------------------------------------------------------------------------------

    def delete_prefix(self, key_prefix: str) -> int:
        """Delete everything under ``key_prefix``, the manifest first; returns how many objects."""
        base = self._join(key_prefix)
        if not base:
            raise ValueError("refusing to delete the whole store: give a non-empty key prefix")
        manifest = self._join(base, MANIFEST_NAME)
        with self._errors(f"deleting {self.uri_for(base)}"):
            keys = self._list(base)
            if manifest in keys:
                # On its own, first: from that instant readers no longer see the upload as complete.
                self._delete([manifest])
            self._delete([k for k in keys if k != manifest])
            self._drop_empty(base)
        return len(keys)
