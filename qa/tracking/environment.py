"""What the run ran on: world size, GPU, library versions, git commit."""

from __future__ import annotations

import logging
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from accelerate import Accelerator



logger = logging.getLogger(__name__)


# Distributions whose versions are recorded with every run (read from package metadata, so that
# e.g. deepspeed is never imported just to learn its version).
TRACKED_PACKAGES = ("torch", "transformers", "accelerate", "deepspeed", "datasets", "wandb")


def git_commit(repo_dir: str | os.PathLike[str] | None = None) -> str | None:
    """``git rev-parse HEAD`` of ``repo_dir`` (default: this package's checkout), or None."""
    cwd = Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def _package_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu() -> str:
    """``AMD EPYC, AVX2``: the CPU model and the SIMD level torch's kernels use (speed figures depend on both)."""
    from qa.distributed.precision import cpu_capabilities, describe_cpu

    return describe_cpu(cpu_capabilities())


def collect_environment(accelerator: Accelerator, repo_dir: str | os.PathLike[str] | None = None) -> dict:
    """World size, device model, library versions and git commit, for the run's config."""
    import torch

    device = accelerator.device
    if device.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(device)
    else:
        gpu = "cpu"
    return {
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": str(accelerator.mixed_precision),
        "gpu": gpu,
        "cpu": _cpu(),
        "torch_threads": torch.get_num_threads(),
        "local_gpu_count": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "python": platform.python_version(),
        "hostname": platform.node(),
        "versions": {name: _package_version(name) for name in TRACKED_PACKAGES},
        "git_commit": git_commit(repo_dir),
    }
