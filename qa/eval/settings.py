"""The evaluation section, and decoding settings with their defaults written once (the run config, ``qa.eval``
and ``qa.predict`` use them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from qa.keys import key, need


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
    """How a run evaluates (and predicts): batch, decoding, outputs."""

    TITLE: ClassVar[str] = "evaluation"
    per_device_eval_batch_size: int = key(64, "Evaluation windows per process")
    n_best_size: int = key(DecodeSettings.n_best_size, "Start/end candidates per window when decoding")
    max_answer_length: int = key(DecodeSettings.max_answer_length, "Longest answer span in tokens")
    null_score_diff_threshold: float = key(
        DecodeSettings.null_score_diff_threshold, "SQuAD v2: predict no answer when null beats the best span by more")
    save_logits: bool = key(False, "Also save start/end logits of evaluation")
    # The demo prints EM/F1 before and after training.
    eval_before_training: bool = key(False, "Also evaluate before the first step")
    eval_sample_table_size: int = key(16, "Predictions shown in the W&B sample table")

    def check(self) -> None:
        for name in ("per_device_eval_batch_size", "n_best_size", "max_answer_length"):
            need(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")

    def decode(self, version_2_with_negative: bool) -> DecodeSettings:
        return DecodeSettings(self.n_best_size, self.max_answer_length, version_2_with_negative,
                              self.null_score_diff_threshold)
