"""A real, small filesystem for full-disk tests: a tmpfs of a given size (needs root / CAP_SYS_ADMIN), else skip."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_filesystem(where: Path, size_mb: int) -> Iterator[Path]:
    """``where`` becomes the mount point of a ``size_mb`` MiB tmpfs for the block; skips the test if it cannot."""
    where.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        # A loop device would need losetup and mkfs, which need the same privilege; a size-limited directory
        # (quota) needs it too. Without it there is no way to make a real small filesystem here.
        pytest.skip(f"cannot mount a {size_mb} MiB tmpfs at {where} (needs root or CAP_SYS_ADMIN): "
                    f"{(mount.stderr or mount.stdout).strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(directory: Path, leave_bytes: int) -> Path:
    """A filler file that leaves about ``leave_bytes`` free on the filesystem of ``directory``."""
    import shutil

    free = shutil.disk_usage(directory).free
    filler = directory / "filler.bin"
    with open(filler, "wb") as f:
        f.truncate(0)
        chunk = b"\0" * (1 << 20)
        left = max(free - leave_bytes, 0)
        while left > 0:
            f.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))
    return filler
