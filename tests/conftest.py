"""Test-session environment: offline, CPU DeepSpeed, W&B offline; set before any library is imported."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

# Test helpers (tests/support) and the non-shipped tools (local S3 server, demo) are importable by name.
_ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(_ROOT / "support"), str(_ROOT.parent / "tools")]

os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="qa-test-hf-"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
pytest_plugins = ["s3_fixtures", "train_entry"]  # real-S3 fixtures (s3_server, ...), train.py in process
