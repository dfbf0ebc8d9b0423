"""Whole-upload helpers the tests use on top of the store and checkpointer API (the package itself fetches
checkpoints part by part: qa.checkpoint.parts)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from qa.checkpoint.manager import Checkpointer
from qa.checkpoint.manifest import MANIFEST_NAME
from qa.checkpoint.store import StorageError


def download_dir(store: Any, key_prefix: str, local_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Fetch a complete upload into ``local_dir`` (absent or empty), every file verified; returns its manifest.
    Either the whole directory lands (manifest beside the files) or nothing does."""
    manifest = store.read_manifest(key_prefix)
    dest = Path(local_dir)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise StorageError(f"download target {dest} already exists and is not an empty directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        store.download_files(key_prefix, tmp, manifest, list(manifest["files"]))
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def find_resume(ckpt: Checkpointer, spec: str) -> Path | None:
    """``Checkpointer.resolve`` for one process playing every node (no accelerator, no collective)."""
    found = ckpt.resume_finder().find(spec, gather=lambda value: [value], decide=lambda fn: fn(), local_main=True)
    return ckpt.remember_resume(found)
