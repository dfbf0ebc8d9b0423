"""Which DeepSpeed ops a launch JIT-builds, and whether this environment's cache already holds them.

DeepSpeed compiles some C++ ops on first use (``torch.utils.cpp_extension.load``) into ``TORCH_EXTENSIONS_DIR``
(train.py and launch/ default it to ``<sys.prefix>/torch_extensions``): on CPU its shared-memory collectives
(``deepspeed_shm_comm``, every DeepSpeed launch; about 2.5 minutes on 2 cores), and with optimizer offload its
CPU Adam (``cpu_adam``). ``make venv`` prebuilds the first on CPU machines. Built ops are reused by every later
launch from the same environment; the dry run says whether this launch will wait for a build.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def extensions_dir() -> Path:
    """Where DeepSpeed's JIT ops are built and cached for this environment (what train.py sets when unset)."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or Path(sys.prefix) / "torch_extensions")


def expected_ops(ds_config: dict[str, Any] | None, cuda: bool) -> list[tuple[str, str]]:
    """(op name, what it is for) for the ops this launch loads."""
    if ds_config is None:
        return []
    ops = []
    if not cuda:
        ops.append(("deepspeed_shm_comm", "DeepSpeed's CPU collectives"))
    z = ds_config.get("zero_optimization", {})
    if z.get("offload_optimizer", {}).get("device", "none") not in ("none", None):
        ops.append(("cpu_adam", "CPU Adam for the offloaded optimizer"))
    return ops


def is_cached(name: str, root: Path | None = None) -> bool:
    return ((root or extensions_dir()) / name / f"{name}.so").is_file()


def describe_ops(ds_config: dict[str, Any] | None, cuda: bool) -> str:
    ops = expected_ops(ds_config, cuda)
    if not ops:
        return "none to build"
    root = extensions_dir()
    parts = [f"{name} ({why}): " + ("cached" if is_cached(name, root) else "not cached, built on first launch "
                                    "(minutes; `make venv` prebuilds deepspeed_shm_comm)") for name, why in ops]
    return "; ".join(parts) + f" [in {root}]"
