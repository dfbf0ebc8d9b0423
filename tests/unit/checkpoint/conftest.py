"""Fixtures for the checkpoint tests: every Store backend under one harness, and checkpoint-like trees."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from qa.checkpoint.local import LocalStore
from qa.checkpoint.location import key_parts
from qa.checkpoint.objects import ObjectStore
from qa.checkpoint.store import StorageError, Store


@dataclass
class Backend:
    """A store plus raw access that bypasses it (to plant stray or corrupted objects, as a crash or bit rot would)."""

    kind: str
    store: Store
    write_raw: Callable[[str, bytes], None]
    delete_raw: Callable[[str], None]


class MemoryStore(ObjectStore):
    """A dict as a backend: the primitives and nothing else, which is all a new backend (e.g. GCS) writes."""

    _backend_errors = (KeyError,)

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def uri_for(self, key_prefix: str) -> str:
        return f"memory:///{'/'.join(key_parts(key_prefix))}"

    def check(self) -> None:
        pass

    def _put_file(self, path: Path, key: str, size: int, sha256: str, progress: Callable[[int], None] | None) -> None:
        body = path.read_bytes()
        if progress is not None:
            progress(len(body))
        if (len(body), hashlib.sha256(body).hexdigest()) != (size, sha256):
            raise StorageError(f"{path} changed while it was uploaded")
        self.objects[key] = body

    def _put_bytes(self, key: str, body: bytes) -> None:
        self.objects[key] = body

    def _get_bytes(self, key: str) -> bytes | None:
        return self.objects.get(key)

    def _get_file(self, key: str, target: Path) -> None:
        target.write_bytes(self.objects[key])

    def _list(self, key_prefix: str) -> list[str]:
        return [k for k in list(self.objects) if not key_prefix or k.startswith(f"{key_prefix}/")]

    def _delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.objects.pop(key, None)


def _memory_backend() -> Backend:
    store = MemoryStore()
    return Backend("memory", store, store.objects.__setitem__, store.objects.__delitem__)


def _local_backend(root: Path) -> Backend:
    store = LocalStore(root, create=True)
    store.check()

    def write_raw(key: str, data: bytes) -> None:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return Backend("local", store, write_raw, lambda key: (root / key).unlink())


def _s3_backend(request: pytest.FixtureRequest) -> Backend:
    request.getfixturevalue("isolated_aws_env")
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    store = server.store(f"s3://{bucket}/exp")

    def write_raw(key: str, data: bytes) -> None:
        store.client.put_object(Bucket=bucket, Key=f"exp/{key}", Body=data)

    return Backend("s3", store, write_raw, lambda key: store.client.delete_object(Bucket=bucket, Key=f"exp/{key}"))


@pytest.fixture(params=["memory", "local", pytest.param("s3", marks=pytest.mark.s3)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """The Store contract runs against each backend: a dict, a directory, and a real SeaweedFS bucket."""
    if request.param == "memory":
        return _memory_backend()
    if request.param == "local":
        return _local_backend(tmp_path / "store")
    return _s3_backend(request)


def make_tree(root: Path, *, marker: bool = True, size: int = 4096) -> Path:
    """A checkpoint-like tree: nested files, an empty file, random bytes and (by default) the COMPLETE marker."""
    (root / "tokenizer").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model": "tiny", "hidden": 8}))
    (root / "tokenizer" / "vocab.txt").write_text("\n".join(f"tok{i}" for i in range(500)))
    (root / "tokenizer" / "empty.txt").write_bytes(b"")
    (root / "rng_state_0.pth").write_bytes(os.urandom(size))
    if marker:
        (root / "COMPLETE").write_text("ok")
    return root


@pytest.fixture
def tree() -> Callable[..., Path]:
    return make_tree
