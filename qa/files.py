"""Writing a file so that no reader ever sees it half written: used by evaluation outputs, markers and stores."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write via a temp file in the same directory, fsync, then os.replace: readers never see a partial file,
    and a crash leaves the old file (or none), never a torn one."""
    # A uniquely named temp opened with "xb" (not mkstemp) so the final file gets normal, umask-based
    # permissions instead of 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))
