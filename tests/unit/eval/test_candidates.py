"""Each window's candidate answers (qa.eval.candidates), checked on hand-made logits where the answer is known."""

from __future__ import annotations

import numpy as np

from qa.eval.candidates import Candidates, null_candidates, span_candidates
from qa.eval.trim import SpanTrimmer

CONTEXT = "ab cd ef"
# Two question positions, then "ab", a whitespace-only token, "cd", "ef".
OFFSETS = np.array([[[-1, -1], [-1, -1], [0, 2], [2, 3], [3, 5], [6, 8]]], dtype=np.int32)


def _spans(start: list[float], end: list[float], *, n_best_size: int = 2, max_answer_length: int = 2) -> set:
    got = span_candidates(OFFSETS, np.array([start], dtype=np.float32), np.array([end], dtype=np.float32),
                          np.zeros(1, dtype=np.int64), SpanTrimmer([CONTEXT]), n_best_size, max_answer_length)
    assert (got.feature == 0).all() and got.score.dtype == np.float64
    return {(int(s), int(e), float(score)) for s, e, score in zip(got.start, got.end, got.score, strict=True)}


def test_spans_start_and_end_on_visible_context_within_the_length_limit() -> None:
    # The highest logits sit on a question position (0) and on the whitespace token (3): neither may be used.
    # (2, 4) would score 1 + 2.5 but is 3 tokens long, over max_answer_length 2.
    start = [9.0, 0.0, 1.0, 8.0, 3.0, 0.0]
    end = [9.0, 0.0, 0.0, 8.0, 2.5, 5.0]
    assert _spans(start, end) == {(4, 5, 8.0), (4, 4, 5.5)}
    assert _spans(start, end, n_best_size=5) == {(4, 5, 8.0), (4, 4, 5.5), (5, 5, 5.0), (2, 2, 1.0)}
    assert _spans(start, end, n_best_size=5, max_answer_length=1) == {(4, 4, 5.5), (5, 5, 5.0), (2, 2, 1.0)}


def test_a_window_without_context_has_no_candidates() -> None:
    offsets = np.full((1, 4, 2), -1, dtype=np.int32)
    got = span_candidates(offsets, np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32),
                          np.zeros(1, dtype=np.int64), SpanTrimmer([CONTEXT]), 3, 5)
    assert got.feature.shape == (0,)


def test_an_examples_null_comes_from_its_least_confident_window() -> None:
    start = np.array([[1.0, 9.0], [-2.0, 9.0], [3.0, 0.0]])
    end = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    # Windows 0 and 1 belong to example 0 (null scores 2 and -1), window 2 to example 1; example 2 has none.
    null_score, nulls = null_candidates(start, end, np.array([0, 0, 1]), np.zeros(3, dtype=np.int64), 3)
    assert null_score[:2].tolist() == [-1.0, 4.0] and np.isnan(null_score[2])
    assert nulls.feature.tolist() == [1, 2] and nulls.start.tolist() == [0, 0] and nulls.end.tolist() == [0, 0]
    assert nulls.start_logit.tolist() == [-2.0, 3.0] and nulls.end_logit.tolist() == [1.0, 1.0]
    both = Candidates.concat([Candidates.none(np.dtype(np.float64)), nulls, nulls])
    assert both.feature.tolist() == [1, 2, 1, 2] and both.score.tolist() == [-1.0, 4.0, -1.0, 4.0]
