"""Where the benchmarks find the official SQuAD v1.1 dev set and the bert-base-cased tokenizer: ``../shared/data``
beside the checkout (see shared/README.md), or ``SQUAD_DEV`` / ``QA_TOKENIZER``. They are read there, never
copied into the project."""

from __future__ import annotations

import os
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def squad_dev_and_tokenizer() -> tuple[Path, Path] | None:
    """(dev set, tokenizer directory); None, after printing which one is missing and where it was looked for."""
    dev = Path(os.environ.get("SQUAD_DEV", SHARED / "squad-v1.1" / "dev-v1.1.json"))
    tokenizer = Path(os.environ.get("QA_TOKENIZER", SHARED / "tokenizers" / "bert-base-cased"))
    for what, path in (("SQuAD v1.1 dev set", dev), ("tokenizer", tokenizer)):
        if not path.exists():
            print(f"skipped: {what} not found at {path} (set SQUAD_DEV / QA_TOKENIZER)")
            return None
    return dev, tokenizer
