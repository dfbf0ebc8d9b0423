"""Checkpoint storage in a directory of a local or mounted filesystem (e.g. NFS shared by the nodes): a ``Store``.

Same layout and manifest-last semantics as S3 (qa.checkpoint.objects): each file is written under a temporary
name, fsynced and renamed into place, and its directory fsynced, before ``manifest.json`` is written the same
way, so after a crash or power loss a checkpoint with a manifest has all its bytes on disk."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, ClassVar

from qa.checkpoint.location import key_parts
from qa.checkpoint.manifest import MANIFEST_NAME
from qa.checkpoint.objects import ObjectStore
from qa.checkpoint.store import MiB, StorageError
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


def _raise_unless_gone(error: OSError) -> None:
    # os.walk ignores every error unless told otherwise: a listing cut short by EIO, ESTALE or a permission
    # would look like an empty store, and resume would start fresh over checkpoints it could not read.
    if not isinstance(error, (FileNotFoundError, NotADirectoryError)):
        raise error


class LocalStore(ObjectStore):
    """Directory trees under one filesystem directory ``root``; an object is a file, its key a relative path.

    ``create``: make ``root`` in :meth:`check` if it is missing (off by default: a missing directory on a
    shared mount usually means the mount is missing, and writing to the local disk instead would lose the
    checkpoints with the machine). Thread-safe: every operation works on its own files.
    """

    _backend_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError,)

    def __init__(self, root: str | os.PathLike[str], *, create: bool = False) -> None:
        self.root = Path(os.path.abspath(root))
        self.create = create

    def uri_for(self, key_prefix: str) -> str:
        return self._path(key_prefix).as_uri()

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key_parts(key))

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

    def _put_file(self, path: Path, key: str, size: int, sha256: str,
                  progress: Callable[[int], None] | None) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        got = _write_durably(target, _chunks(path, progress))
        # The rename must be on disk before any manifest or part record vouches for the file.
        _fsync_dir(target.parent)
        if got != (size, sha256):
            raise StorageError(f"{path} changed while it was copied to {target} (expected size {size} sha256 "
                               f"{sha256}, copied size {got[0]} sha256 {got[1]})")

    def _put_bytes(self, key: str, body: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)  # e.g. an upload without files has no directory yet
        _write_durably(path, iter([body]))
        _fsync_dir(path.parent)
        _fsync_dir(path.parent.parent)  # for the directory's own entry, if it was just made

    def _get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _get_file(self, key: str, target: Path) -> None:
        shutil.copyfile(self._path(key), target)

    def list_complete(self, key_prefix: str = "") -> list[str]:
        # One directory read and a stat per upload, instead of the base class's walk over every file of every
        # checkpoint (on NFS a round trip per directory).
        base = self._path(key_prefix)
        with self._errors(f"listing {self.uri_for(key_prefix)}"):
            try:
                entries = list(base.iterdir())
            except (FileNotFoundError, NotADirectoryError):
                return []
            return sorted(p.name for p in entries if (p / MANIFEST_NAME).is_file())

    def _list(self, key_prefix: str) -> list[str]:
        keys = []
        # os.walk, not rglob: a directory that another writer removes meanwhile is skipped, not an error.
        for folder, _, files in os.walk(self._path(key_prefix), onerror=_raise_unless_gone):
            rel = Path(folder).relative_to(self.root)
            keys.extend((rel / name).as_posix() for name in files)
        return keys

    def _delete(self, keys: Sequence[str]) -> None:
        folders = set()
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            folders.add(path.parent)
        # Makes the unlinks durable: a manifest deleted first must stay deleted after a crash.
        for folder in folders:
            _fsync_dir(folder)

    def _drop_empty(self, key_prefix: str) -> None:
        path = self._path(key_prefix)
        if path.is_dir():
            shutil.rmtree(path)
            _fsync_dir(path.parent)
