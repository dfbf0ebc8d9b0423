"""The manifest of an upload: built, encoded, validated and checked here only (qa.checkpoint.store says why
it is written last)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from qa.checkpoint.store import CorruptObjectError, MiB, StorageError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


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


def encode_json(manifest: Mapping[str, Any], redact: Callable[[str], str]) -> bytes:
    """A manifest or a part record as the JSON bytes written to the store; refuses one holding a store secret."""
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
