"""The dry run says which DeepSpeed ops the launch JIT-builds and whether this environment has them cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures import REPO
from qa.lifecycle.ops import describe_ops, expected_ops

ZERO2 = json.loads((REPO / "configs" / "deepspeed" / "zero2.json").read_text())
OFFLOAD = json.loads((REPO / "configs" / "deepspeed" / "zero3_offload.json").read_text())


def test_expected_ops() -> None:
    assert expected_ops(None, cuda=False) == []  # DDP: no DeepSpeed
    assert [n for n, _ in expected_ops(ZERO2, cuda=False)] == ["deepspeed_shm_comm"]
    assert [n for n, _ in expected_ops(ZERO2, cuda=True)] == []
    assert [n for n, _ in expected_ops(OFFLOAD, cuda=True)] == ["cpu_adam"]


def test_cached_or_built_on_first_launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    text = describe_ops(ZERO2, cuda=False)
    assert "deepspeed_shm_comm" in text and "not cached, built on first launch" in text and str(tmp_path) in text
    (tmp_path / "deepspeed_shm_comm").mkdir()
    (tmp_path / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").write_bytes(b"")
    assert describe_ops(ZERO2, cuda=False).startswith("deepspeed_shm_comm (DeepSpeed's CPU collectives): cached")
    assert describe_ops(None, cuda=True) == "none to build"
