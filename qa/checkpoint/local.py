"""Checkpoint storage in a directory of a local or mounted filesystem (e.g. NFS shared by the nodes): a ``Store``.

Same layout and manifest-last semantics as S3 (qa.checkpoint.store): each file is written under a temporary
name, fsynced and renamed into place; the directories are fsynced; only then is ``manifest.json`` written the
same way, so after a crash or power loss a checkpoint with a manifest has all its bytes on disk."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from qa.checkpoint.store import (
    MANIFEST_NAME,
    MiB,
    StorageError,
    build_manifest,
    fetch_dir,
    fetch_files,
    key_parts,
    manifest_body,
    parse_manifest,
    parse_record,
    publish_dir,
    put_files,
)
from qa.files import atomic_write

logger = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    # Makes renames and unlinks in ``path`` durable. Some filesystems refuse fsync on a directory (EINVAL);
    # they commit directory operations synchronously anyway, so that refusal is not an error.
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_durably(dest: Path, chunks: Iterator[bytes]) -> tuple[int, str]:
    """Write ``chunks`` to a temporary sibling, fsync it and rename it over ``dest``; returns (size, sha256).

    Not shutil.copyfile: the bytes are hashed as they are written (one read of the source) and fsynced
    before the rename (qa.files.atomic_write), which copyfile does neither of."""
    digest = hashlib.sha256()
    size = 0

    def write(f: IO[bytes]) -> None:
        nonlocal size
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
            f.write(chunk)

    atomic_write(dest, write)
    return size, digest.hexdigest()


def _chunks(path: Path, progress: Callable[[int], None] | None) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            yield chunk
            if progress is not None:
                progress(len(chunk))


class LocalStore:
    """Uploads, verifies, lists and downloads directory trees under one filesystem directory ``root``.

    ``create``: make ``root`` in :meth:`check` if it is missing (off by default: a missing directory on a
    shared mount usually means the mount is missing, and writing to the local disk instead would lose the
    checkpoints with the machine). Thread-safe: every operation works on its own files.
    """

    def __init__(self, root: str | os.PathLike[str], *, create: bool = False) -> None:
        self.root = Path(os.path.abspath(root))
        self.create = create

    @property
    def uri(self) -> str:
        return self.uri_for("")

    def uri_for(self, key_prefix: str) -> str:
        return self._path(key_prefix).as_uri()

    def _path(self, *parts: str) -> Path:
        return self.root.joinpath(*key_parts(*parts))

    def redact(self, text: str) -> str:
        return text  # a filesystem store holds no secret

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn OSError into StorageError (retried by the uploader, caught by resume)."""
        try:
            yield
        except StorageError:
            raise
        except OSError as e:
            raise StorageError(f"{what} failed: {e}") from e

    # -- start-up validation -----------------------------------------------------------------

    def check(self) -> None:
        if not self.root.is_dir():
            if self.root.exists():
                raise StorageError(f"checkpoint store {self.root} is not a directory")
            if not self.create:
                raise StorageError(f"checkpoint store directory {self.root} does not exist (is the filesystem "
                                   "mounted?): create it, or set s3_create_bucket: true")
            with self._errors(f"creating {self.root}"):
                self.root.mkdir(parents=True, exist_ok=True)
            logger.info("created checkpoint store directory %s", self.root)
        # Catches a read-only mount or missing permission before hours of training.
        with self._errors(f"write probe in {self.root} (is write access granted?)"):
            fd, name = tempfile.mkstemp(prefix=".write-probe-", dir=self.root)
            try:
                os.write(fd, b"probe")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(name)

    # -- upload ------------------------------------------------------------------------------

    def upload_dir(
        self,
        local_dir: str | os.PathLike[str],
        key_prefix: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Copy and verify every file of ``local_dir``, then write the manifest; returns it."""
        self._upload_base(key_prefix)
        return publish_dir(self, local_dir, key_prefix, metadata, progress=progress)

    def _upload_base(self, key_prefix: str) -> Path:
        base = self._path(key_prefix)
        if base == self.root:
            raise ValueError("give a non-empty key prefix: the store's root holds uploads, it is not one")
        return base

    def drop_manifest(self, key_prefix: str) -> None:
        base = self._upload_base(key_prefix)
        with self._errors(f"removing {base / MANIFEST_NAME}"):
            if (base / MANIFEST_NAME).is_file():
                (base / MANIFEST_NAME).unlink()
                _fsync_dir(base)

    def upload_files(self, local_dir: str | os.PathLike[str], key_prefix: str, rels: Sequence[str], *,
                     progress: Callable[[int], None] | None = None) -> dict[str, dict[str, Any]]:
        base = self._upload_base(key_prefix)
        written_dirs: set[Path] = set()

        def put_file(path: Path, rel: str, size: int, digest: str) -> None:
            target = base.joinpath(*rel.split("/"))
            with self._errors(f"copy of {path} to {target}"):
                target.parent.mkdir(parents=True, exist_ok=True)
                got = _write_durably(target, _chunks(path, progress))
            written_dirs.add(target.parent)
            if got != (size, digest):
                raise StorageError(f"{path} changed while it was copied to {target} (expected size {size} sha256 "
                                   f"{digest}, copied size {got[0]} sha256 {got[1]})")

        with self._errors(f"reading {local_dir}"):
            entries = put_files(Path(local_dir), rels, put_file)
        # The renames must be on disk before any manifest or part record vouches for them.
        for d in sorted(written_dirs, key=lambda p: len(p.parts), reverse=True):
            _fsync_dir(d)
        return entries

    def write_manifest(self, key_prefix: str, entries: Mapping[str, Mapping[str, Any]],
                       metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
        base = self._upload_base(key_prefix)
        manifest = build_manifest(entries, metadata)
        body = manifest_body(manifest, self.redact)
        with self._errors(f"writing {base / MANIFEST_NAME}"):
            base.mkdir(parents=True, exist_ok=True)  # an empty directory has no files to create it
            _write_durably(base / MANIFEST_NAME, iter([body]))
            _fsync_dir(base)
            _fsync_dir(base.parent)
        return manifest

    def put_record(self, key: str, record: Mapping[str, Any]) -> None:
        path = self._path(key)
        body = manifest_body(record, self.redact)
        with self._errors(f"writing {path}"):
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_durably(path, iter([body]))
            _fsync_dir(path.parent)

    def read_record(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            body = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise StorageError(f"reading {path} failed: {e}") from e
        return parse_record(body, path.as_uri())

    # -- read side ---------------------------------------------------------------------------

    def read_manifest(self, key_prefix: str) -> dict[str, Any]:
        path = self._path(key_prefix, MANIFEST_NAME)
        try:
            body = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError) as e:
            raise StorageError(f"no complete upload at {self.uri_for(key_prefix)} (no {MANIFEST_NAME})") from e
        except OSError as e:
            raise StorageError(f"reading {path} failed: {e}") from e
        return parse_manifest(body, path.as_uri())

    def list_complete(self, key_prefix: str = "") -> list[str]:
        base = self._path(key_prefix)
        with self._errors(f"listing {base}"):
            if not base.is_dir():
                return []
            return sorted(p.name for p in base.iterdir() if p.is_dir() and (p / MANIFEST_NAME).is_file())

    def list_keys(self, key_prefix: str = "") -> list[str]:
        base = self._path(key_prefix)
        with self._errors(f"listing {base}"):
            return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def download_dir(self, key_prefix: str, local_dir: str | os.PathLike[str]) -> dict[str, Any]:
        """Copy a complete upload into ``local_dir`` (must not exist or be empty), verified."""
        manifest = self.read_manifest(key_prefix)
        base = self._path(key_prefix)

        def get_file(rel: str, target: Path) -> None:
            with self._errors(f"copy of {self.uri_for(f'{key_prefix}/{rel}')}"):
                shutil.copyfile(base.joinpath(*rel.split("/")), target)

        return fetch_dir(manifest, local_dir, label=self.uri_for(key_prefix), get_file=get_file,
                         where=lambda rel: self.uri_for(f"{key_prefix}/{rel}"))

    def download_files(self, key_prefix: str, local_dir: str | os.PathLike[str], manifest: Mapping[str, Any],
                       rels: Sequence[str]) -> None:
        base = self._path(key_prefix)

        def get_file(rel: str, target: Path) -> None:
            with self._errors(f"copy of {self.uri_for(f'{key_prefix}/{rel}')}"):
                shutil.copyfile(base.joinpath(*rel.split("/")), target)

        fetch_files(manifest, rels, local_dir, get_file=get_file,
                    where=lambda rel: self.uri_for(f"{key_prefix}/{rel}"))

    def delete_prefix(self, key_prefix: str) -> int:
        """Delete everything under ``key_prefix``, the manifest first; returns how many files."""
        base = self._path(key_prefix)
        if base == self.root:
            raise ValueError("refusing to delete the whole store: give a non-empty key prefix")
        with self._errors(f"deleting {base}"):
            if not base.is_dir():
                return 0
            count = sum(1 for p in base.rglob("*") if not p.is_dir())
            if (base / MANIFEST_NAME).is_file():
                # Manifest first, durably: from that instant readers no longer see the upload as complete.
                (base / MANIFEST_NAME).unlink()
                _fsync_dir(base)
            shutil.rmtree(base)
            _fsync_dir(base.parent)
        return count
