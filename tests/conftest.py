"""Test-session environment: offline, CPU DeepSpeed, W&B offline; set before any library is imported."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="qa-test-hf-"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
