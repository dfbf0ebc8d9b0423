"""Disk space for checkpoints: how much one needs, how much is free, and what a failed write was.

A full disk used to surface as torch's ``basic_ios::clear: iostream error`` deep in a traceback, with the partial
checkpoint left behind to keep the disk full. The save checks free space first (against the size of the last
checkpoint, or an estimate from the parameter count for the first one) and names an I/O failure in words.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

from qa.errors import UserError


class DiskError(UserError):
    """The checkpoint directory cannot take a checkpoint (no space, or a write failed); one line, exit 2."""


def estimate_checkpoint_bytes(num_params: int, *, deepspeed: bool, mixed_precision: bool, export: bool) -> int:
    """Bytes of one checkpoint, all ranks together: weights and Adam's two moments.

    Plain DDP/fp32: fp32 weights (4 bytes a parameter) + m, v (8). DeepSpeed with fp16/bf16 also keeps the fp32
    master copy beside the 16-bit weights: 2 + 4 + 8. ``export``: a loadable fp32 model/ on top (4).
    """
    per_param = 14 if deepspeed and mixed_precision else 12
    return num_params * (per_param + (4 if export else 0))


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 if it is gone)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                continue
    return total


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds ``path`` (or would, once its missing parents exist)."""
    probe = Path(os.path.abspath(path))
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def shortfall(directory: Path, needed: int) -> str | None:
    """Why ``directory`` cannot take ``needed`` more bytes, or None if it can."""
    free = free_bytes(directory)
    if free >= needed:
        return None
    return (f"not enough space in {directory} for the next checkpoint: needs {needed} bytes "
            f"({format_bytes(needed)}), {free} bytes ({format_bytes(free)}) free")


def is_write_failure(error: BaseException) -> bool:
    """A failed write to disk, ENOSPC included, however the writer reported it."""
    # torch.save's C++ writer reports a failed write (ENOSPC included) as RuntimeError without an errno, and
    # safetensors as SafetensorError ("I/O error: ... (os error 28)"): neither is an OSError.
    if isinstance(error, OSError):
        return True
    text = str(error)
    return any(s in text for s in ("iostream error", "unexpected pos", "PytorchStreamWriter", "file write failed",
                                   "I/O error", "No space left"))


def describe_write_error(error: BaseException, directory: Path) -> str:
    """An I/O failure in words: ENOSPC as 'no space left on device' also when torch's C++ writer hides the errno
    (it raises RuntimeError 'basic_ios::clear: iostream error'); then the filesystem is checked for room."""
    code = getattr(error, "errno", None)
    if code is None and isinstance(error.__cause__, OSError):
        code = error.__cause__.errno
    if code is None and (found := re.search(r"os error (\d+)", str(error))):  # safetensors' Rust I/O errors
        code = int(found.group(1))
    if code == errno.ENOSPC or (code is None and free_bytes(directory) < 1024 * 1024):
        return f"no space left on device ({format_bytes(free_bytes(directory))} free in {directory})"
    if code is not None:
        return f"{errno.errorcode.get(code, code)}: {os.strerror(code)}"
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
