"""Rank-0 evaluation: decode gathered logits into answers and score them (pure: arrays in, answers out)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qa.eval.decode import Decoded, decode, pack_offsets
from qa.eval.settings import DecodeSettings
from qa.eval.squad_metrics import squad_v1, squad_v2

LOGITS_FILE = "eval_logits.npz"
FEATURES_FILE = "eval_features.npz"
EXAMPLES_FILE = "eval_examples.jsonl"
RUN_CONFIG_FILE = "run_config.yaml"  # what train.py writes; qa.eval reads its decoding settings
DECODE_DEFAULTS: dict[str, Any] = DecodeSettings().as_kwargs()  # the defaults live in qa/eval/settings.py


@dataclass
class EvalFeatures:
    """Per-feature arrays decoding needs, in feature order (the order of the gathered logits)."""

    example_index: np.ndarray  # int [n_features]: index into EvalExamples
    offsets: np.ndarray  # int32 [n_features, L, 2]: char spans, -1 outside the context
    cls_index: np.ndarray  # int [n_features]: position of the null answer

    @classmethod
    def of_windows(cls, windows: Any, seq_len: int) -> EvalFeatures:
        """From evaluation windows (a datasets.Dataset or a dict of columns, qa.data.features)."""
        return cls(example_index=np.asarray(windows["example_index"], dtype=np.int64),
                   offsets=pack_offsets(windows["offset_mapping"], seq_len),
                   cls_index=np.asarray(windows["cls_index"], dtype=np.int64))


@dataclass
class EvalExamples:
    ids: list[str]
    contexts: list[str]
    answers: list[list[str]]  # gold texts; [] = unanswerable (v2)
    questions: list[str] | None = None


@dataclass
class EvalOutcome:
    decoded: Decoded
    metrics: dict[str, float]
    timings: dict[str, float] = field(default_factory=dict)  # decode_s, score_s


def _as_logits(x: Any) -> np.ndarray:
    # float32 always: it is what save_eval_arrays stores, so a re-decode from disk sees bit-identical
    # inputs and reproduces the run's numbers exactly. Tensors (bf16 included) are converted here.
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def decode_features(examples: EvalExamples, feats: EvalFeatures, start_logits: Any, end_logits: Any, *,
                    n_best_size: int = DecodeSettings.n_best_size, max_answer_length: int = DecodeSettings.max_answer_length, version_2_with_negative: bool = False,
                    null_score_diff_threshold: float = DecodeSettings.null_score_diff_threshold) -> Decoded:
    """Answers from per-window logits ([n_features, L]): evaluation, prediction and the API all decode here."""
    return decode(
        examples.ids, examples.contexts, feats.example_index, feats.offsets,
        _as_logits(start_logits), _as_logits(end_logits),
        n_best_size=n_best_size, max_answer_length=max_answer_length,
        version_2_with_negative=version_2_with_negative, null_score_diff_threshold=null_score_diff_threshold,
        cls_index=feats.cls_index,
    )


def decode_and_score(examples: EvalExamples, feats: EvalFeatures, start_logits: Any, end_logits: Any, *,
                     n_best_size: int = DecodeSettings.n_best_size, max_answer_length: int = DecodeSettings.max_answer_length,
                     version_2_with_negative: bool = False,
                     null_score_diff_threshold: float = DecodeSettings.null_score_diff_threshold) -> EvalOutcome:
    """Decode gathered logits ([n_features, L]) into answers and score them against the gold answers.

    v2 scoring passes the null odds as ``na_probs`` with ``na_prob_thresh = null_score_diff_threshold``:
    the official script's "predict no-answer when na_prob > thresh" is then the very rule the decoder
    applied, so ``exact``/``f1`` score the predictions as decoded. ``best_*`` is the official sweep over
    the null odds; like the official script (and HF's run_qa) it re-scores the predictions as given, so
    an example already decoded as "" cannot gain from a higher threshold there.
    """
    t0 = time.perf_counter()
    decoded = decode_features(examples, feats, start_logits, end_logits, n_best_size=n_best_size,
                              max_answer_length=max_answer_length,
                              version_2_with_negative=version_2_with_negative,
                              null_score_diff_threshold=null_score_diff_threshold)
    t1 = time.perf_counter()
    references = dict(zip(examples.ids, examples.answers, strict=True))
    if version_2_with_negative:
        metrics = squad_v2(decoded.predictions, references, na_probs=decoded.null_odds,
                           na_prob_thresh=null_score_diff_threshold)
    else:
        metrics = squad_v1(decoded.predictions, references)
    t2 = time.perf_counter()
    return EvalOutcome(decoded=decoded, metrics=metrics, timings={"decode_s": t1 - t0, "score_s": t2 - t1})
