"""The evaluation section of the run config, and decoding settings with their defaults written once (the run
config, ``qa.eval`` and ``qa.predict`` use them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DecodeSettings:
    n_best_size: int = 20
    max_answer_length: int = 30
    version_2_with_negative: bool = False
    null_score_diff_threshold: float = 0.0

    def as_kwargs(self) -> dict[str, Any]:
        return {"n_best_size": self.n_best_size, "max_answer_length": self.max_answer_length,
                "version_2_with_negative": self.version_2_with_negative,
                "null_score_diff_threshold": self.null_score_diff_threshold}


@dataclass(frozen=True)
class EvalSettings:
    """How a run evaluates (and predicts): batch, windows, outputs, decoding."""

    batch_size: int  # windows per process
    max_seq_length: int
    seed: int
    output_dir: Path  # predictions and eval_results.json go here
    save_logits: bool
    sample_table_size: int  # predictions shown in the W&B table
    decode: DecodeSettings = field(default_factory=DecodeSettings)
