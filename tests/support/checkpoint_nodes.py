"""Checkpointers playing the nodes of a multi-node run in one process (qa.checkpoint.parts tests)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qa.checkpoint.manager import Checkpointer
from qa.checkpoint.parts import NodeLayout
from qa.config import make_config
from qa.trainer.setup import build_checkpointer


def node(tmp_path: Path, k: int, layout: NodeLayout, store: Any = None, uploader: Any = None) -> Checkpointer:
    """Node ``k``'s checkpointer, with its own output_dir under ``tmp_path``."""
    cfg = make_config(output_dir=str(tmp_path / f"node{k}"), run_name="run", save_total_limit=3)
    ckpt = build_checkpointer(cfg, None, store, uploader)
    ckpt.layout = layout
    return ckpt


def wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)  # polling a condition, not waiting for time to pass
