"""Vectorised n-best span decoding for extractive QA (the post-processing step of SQuAD evaluation).

Every feature is a window over one example's context. For each feature we take the ``n_best_size``
highest start and end logits among *context* positions, score all k x k (start, end) pairs at once with
broadcasting, keep each feature's best ``n_best_size`` valid pairs (qa.eval.candidates), then pool the candidates of all
features of an example with one sort keyed by (example, -score). Python only runs over the final,
already-chosen n-best entries to build the output dicts.

Char spans are trimmed of surrounding whitespace (``qa.eval.trim``) and a token holding no visible
character is never a span's start or end, so answers are clean whatever the tokenizer's offsets include.
The rule, written as plain loops, is ``reference_decode.reference_decode (tests/support)``.

Span scores are float64 sums of the logits, so ranking never depends on float32 rounding of a sum;
``start_logit``/``end_logit`` in the n-best lists are the logits themselves. Ties are broken
deterministically but arbitrarily, except that a span tied with the null answer ranks before it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from qa.eval.candidates import Candidates, group_starts, null_candidates, span_candidates
from qa.eval.settings import DecodeSettings
from qa.eval.trim import SpanTrimmer

__all__ = ["Decoded", "decode", "pack_offsets"]

_NO_OFFSET = (-1, -1)


@dataclass
class Decoded:
    predictions: dict[str, str]
    """Example id -> predicted answer text ("" = no answer)."""
    nbest: dict[str, list[dict[str, Any]]]
    """Example id -> best candidates first: ``text, probability, start_logit, end_logit`` (Python floats)."""
    null_odds: dict[str, float] = field(default_factory=dict)
    """v2 only: null score - best span score (``inf`` when the example has no valid span)."""
    spans: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    """Example id -> ``(start, end)`` character span in the context of each n-best entry, same order;
    ``context[start:end] == text``; ``(0, 0)`` for the null answer and the no-candidate placeholder."""
    prediction_spans: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Example id -> character span of the prediction (``(0, 0)`` for "")."""


def pack_offsets(offset_mapping: Sequence[Sequence[tuple[int, int] | list[int] | None]] | np.ndarray,
                 seq_len: int | None = None) -> np.ndarray:
    """Ragged per-feature offset lists -> int32 ``[n_features, L, 2]``, -1 for non-context and padding.

    ``None`` entries (the usual marker for question/special tokens) become ``(-1, -1)``, as do
    positions past a row's end; rows longer than ``seq_len`` are cut. ``L`` defaults to the longest row.
    """
    if isinstance(offset_mapping, np.ndarray) and offset_mapping.dtype != object:
        arr = offset_mapping.reshape(offset_mapping.shape[0], -1, 2)
        length = arr.shape[1] if seq_len is None else seq_len
        out = np.full((arr.shape[0], length, 2), -1, dtype=np.int32)
        n = min(length, arr.shape[1])
        out[:, :n] = arr[:, :n]
        return out
    lengths = np.fromiter((len(row) for row in offset_mapping), dtype=np.int64, count=len(offset_mapping))
    length = int(lengths.max(initial=0)) if seq_len is None else seq_len
    out = np.full((lengths.shape[0], length, 2), -1, dtype=np.int32)
    kept = np.minimum(lengths, length)
    rows = (row if len(row) <= length else row[:length] for row in offset_mapping)
    # One flat stream of ints into one fromiter: ~10x cheaper than a NumPy array per row.
    values = np.fromiter(chain.from_iterable(_NO_OFFSET if p is None else p for row in rows for p in row),
                         dtype=np.int32, count=2 * int(kept.sum()))
    out[np.arange(length) < kept[:, None]] = values.reshape(-1, 2)
    return out


def _as_float(x: Any) -> np.ndarray:
    arr = np.asarray(x)
    # float16 and integers go to float32: the fill values below do not fit in float16.
    return arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float32)


def _group_sort(group: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Permutation sorting by (group asc, score desc), ties in input order: ``np.lexsort((-score, group))``.

    Done as two plain argsorts (score, then an exact int64 composite key) because numpy's SIMD
    quicksort is several times faster than lexsort here. Only a tie inside one group makes the
    (unstable) first sort observable; then, and only then, it is redone stably.
    """
    n = score.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    group = group.astype(np.int64)

    def by(score_order: np.ndarray) -> np.ndarray:
        rank = np.empty(n, dtype=np.int64)
        rank[score_order] = np.arange(n)
        return np.argsort(group * n + rank)

    order = by(np.argsort(-score))
    g, sc = group[order], score[order]
    if ((g[1:] == g[:-1]) & (sc[1:] == sc[:-1])).any():
        order = by(np.argsort(-score, kind="stable"))
    return order


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Building ~n_examples x n_best small dicts triggers collector passes over the whole heap (which,
    # in a training process, holds the previous evaluation's results too); with it paused the build
    # is ~2x faster. The objects built here cannot form reference cycles.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def decode(example_ids: Sequence[str], contexts: Sequence[str], feature_example_index: np.ndarray,
           offsets: np.ndarray, start_logits: np.ndarray, end_logits: np.ndarray, *,
           n_best_size: int = DecodeSettings.n_best_size, max_answer_length: int = DecodeSettings.max_answer_length,
           version_2_with_negative: bool = False, null_score_diff_threshold: float = DecodeSettings.null_score_diff_threshold,
           cls_index: np.ndarray | None = None) -> Decoded:
    """Best answer text and n-best list per example from per-feature start/end logits.

    ``offsets``: ``[n_features, L, 2]`` char spans into the example's context, negative where the
    position is not context. ``start_logits``/``end_logits``: ``[n_features, L2]``; only positions below
    ``min(L, L2)`` are candidates, so logits padded (or truncated) across ranks are harmless.

    A span's text is ``context[offsets[s][0]:offsets[e][1]]`` trimmed of surrounding whitespace; positions
    whose offsets hold only whitespace are not context for this purpose.

    v1: the prediction is the best span ("" when an example has no valid span). v2: the null answer
    (score = min over the example's features of start[cls] + end[cls]) joins the n-best list, and the
    prediction is "" when null score - best span score > ``null_score_diff_threshold``.
    """
    if n_best_size < 1 or max_answer_length < 1:
        raise ValueError(f"n_best_size ({n_best_size}) and max_answer_length ({max_answer_length}) "
                         "must be >= 1")
    if len(contexts) != len(example_ids):
        raise ValueError(f"{len(example_ids)} example ids but {len(contexts)} contexts")
    feat_ex, offsets, start_all, end_all, cls = _checked_arrays(
        len(example_ids), feature_example_index, offsets, start_logits, end_logits, cls_index,
        check_cls=version_2_with_negative)
    trimmer = SpanTrimmer(contexts)
    spans = span_candidates(offsets, start_all, end_all, feat_ex, trimmer, n_best_size, max_answer_length)
    null_score = np.full(len(example_ids), np.nan)
    pool = spans
    if version_2_with_negative:
        # Nulls come last in the pool so that a span tied with the null score ranks first (as in HF).
        null_score, nulls = null_candidates(start_all, end_all, feat_ex, cls, len(example_ids))
        pool = Candidates.concat([spans, nulls])
    ranked = _rank(pool, feat_ex, spans.feature.shape[0], n_best_size)

    kept = ranked.order[ranked.keep]
    k_ex = ranked.example[ranked.keep]
    k_score = pool.score[kept]
    k_cs, k_ce = _char_spans(offsets, pool.feature[kept], pool.start[kept], pool.end[kept],
                             ranked.is_null[ranked.keep], trimmer, k_ex)
    kg_start = group_starts(k_ex)
    kg_size = np.diff(np.r_[kg_start, kept.shape[0]]).astype(np.int64)
    prob = _group_softmax(k_score, kg_start, kg_size)
    best = ranked.best_entry
    best_ex = ranked.group_example[ranked.has_span]
    b_cs, b_ce = _char_spans(offsets, pool.feature[best], pool.start[best], pool.end[best], None, trimmer, best_ex)
    odds: np.ndarray | None = None
    if version_2_with_negative:
        # inf when there is no span at all: "" then wins under any threshold, as the prediction says.
        odds = np.full(len(example_ids), np.inf)
        odds[best_ex] = null_score[best_ex] - pool.score[best]

    with _gc_paused():
        nbest_lists, span_lists = _nbest_lists(
            contexts, k_ex, k_cs, k_ce, prob, pool.start_logit[kept], pool.end_logit[kept], kg_start, kg_size)
        best_span = [(0, 0)] * len(example_ids)
        for e, a, b in zip(best_ex.tolist(), b_cs.tolist(), b_ce.tolist(), strict=True):
            best_span[e] = (a, b)
        return _assemble(example_ids, contexts, nbest_lists, span_lists, best_span, odds, null_score_diff_threshold)


def _group_softmax(score: np.ndarray, g_start: np.ndarray, g_size: np.ndarray) -> np.ndarray:
    """Softmax of ``score`` within each contiguous group (max-shifted, so large logits do not overflow)."""
    if not score.shape[0]:
        return np.zeros(0, dtype=np.float64)
    shifted = np.exp(score - np.repeat(np.maximum.reduceat(score, g_start), g_size))
    return shifted / np.repeat(np.add.reduceat(shifted, g_start), g_size)


def _nbest_lists(contexts: Sequence[str], k_ex: np.ndarray, k_cs: np.ndarray, k_ce: np.ndarray, prob: np.ndarray,
                 start_logit: np.ndarray, end_logit: np.ndarray, g_start: np.ndarray, g_size: np.ndarray,
                 ) -> tuple[list[list[dict[str, Any]] | None], list[list[tuple[int, int]] | None]]:
    """Per example (None where it kept nothing): its n-best entry dicts and their char spans, best first."""
    k_spans = list(zip(k_cs.tolist(), k_ce.tolist(), strict=True))
    texts = [contexts[e][a:b] for e, (a, b) in zip(k_ex.tolist(), k_spans, strict=True)]
    entries = [
        {"text": t, "probability": p, "start_logit": s, "end_logit": e}
        for t, p, s, e in zip(texts, prob.tolist(), start_logit.tolist(), end_logit.tolist(), strict=True)
    ]
    nbest_lists: list[list[dict[str, Any]] | None] = [None] * len(contexts)
    span_lists: list[list[tuple[int, int]] | None] = [None] * len(contexts)
    for e, a, n in zip(k_ex[g_start].tolist(), g_start.tolist(), g_size.tolist(), strict=True):
        nbest_lists[e] = entries[a:a + n]
        span_lists[e] = k_spans[a:a + n]
    return nbest_lists, span_lists


def _checked_arrays(n_ex: int, feature_example_index: np.ndarray, offsets: np.ndarray, start_logits: np.ndarray,
                    end_logits: np.ndarray, cls_index: np.ndarray | None, *,
                    check_cls: bool) -> tuple[np.ndarray, ...]:
    """The decoder's inputs as contiguous arrays of the shapes it needs; ValueError naming the first misfit."""
    feat_ex = np.asarray(feature_example_index, dtype=np.int64).reshape(-1)
    n_feat = feat_ex.shape[0]
    offsets = np.ascontiguousarray(offsets)
    start_all = np.ascontiguousarray(_as_float(start_logits))
    end_all = np.ascontiguousarray(_as_float(end_logits))
    if start_all.ndim != 2 or start_all.shape != end_all.shape or start_all.shape[0] != n_feat:
        raise ValueError(f"logits must both be [n_features={n_feat}, L]; "
                         f"got {start_all.shape} and {end_all.shape}")
    if offsets.ndim != 3 or offsets.shape[0] != n_feat or offsets.shape[2] != 2:
        raise ValueError(f"offsets must be [n_features={n_feat}, L, 2]; got {offsets.shape}")
    if n_feat and (feat_ex.min() < 0 or feat_ex.max() >= n_ex):
        raise ValueError(f"feature_example_index out of range for {n_ex} examples")
    cls = (np.zeros(n_feat, dtype=np.int64) if cls_index is None
           else np.asarray(cls_index, dtype=np.int64).reshape(-1))
    if cls.shape[0] != n_feat:
        raise ValueError(f"cls_index has {cls.shape[0]} entries for {n_feat} features")
    if check_cls and n_feat and (cls.min() < 0 or cls.max() >= start_all.shape[1]):
        raise ValueError(f"cls_index out of range for logits of width {start_all.shape[1]}")
    return feat_ex, offsets, start_all, end_all, cls


@dataclass(frozen=True)
class _Ranking:
    order: np.ndarray  # pool rows sorted by (example, -score)
    example: np.ndarray  # example of each sorted row
    is_null: np.ndarray  # sorted row is a v2 null
    keep: np.ndarray  # sorted row is in its example's n-best list
    group_example: np.ndarray  # the examples that have candidates, ascending
    has_span: np.ndarray  # per such example: it has a span (not only a null)
    best_entry: np.ndarray  # pool row of the best span of each example with one


def _rank(pool: Candidates, feat_ex: np.ndarray, n_spans: int, n_best_size: int) -> _Ranking:
    """Sort the pool by (example, -score) and mark each example's n-best and best span."""
    order = _group_sort(feat_ex[pool.feature], pool.score)
    example = feat_ex[pool.feature[order]]
    is_null = order >= n_spans
    n_pool = order.shape[0]
    g_start = group_starts(example)
    g_size = np.diff(np.r_[g_start, n_pool]).astype(np.int64)
    rank = np.arange(n_pool) - np.repeat(g_start, g_size)
    # HF semantics: the top n_best of spans + null; a null that falls off the end is appended after
    # them, which is exactly where the sort already put it.
    keep = (rank < n_best_size) | is_null
    # Best span of each group: spans are sorted, and a v2 group holds exactly one null.
    best = g_start + is_null[g_start] if n_pool else g_start
    has_span = best < g_start + g_size
    best_entry = order[np.minimum(best, n_pool - 1)[has_span]] if n_pool else best
    return _Ranking(order, example, is_null, keep, example[g_start], has_span, best_entry)


def _assemble(example_ids: Sequence[str], contexts: Sequence[str],
              nbest_lists: list[list[dict[str, Any]] | None], span_lists: list[list[tuple[int, int]] | None],
              best_span: list[tuple[int, int]], odds: np.ndarray | None, threshold: float) -> Decoded:
    """The per-example dicts; an example without candidates gets the empty answer."""
    nbest = {qid: lst if lst is not None else [{"text": "", "probability": 1.0, "start_logit": 0.0, "end_logit": 0.0}]
             for qid, lst in zip(example_ids, nbest_lists, strict=True)}
    spans = {qid: lst if lst is not None else [(0, 0)] for qid, lst in zip(example_ids, span_lists, strict=True)}
    null_odds: dict[str, float] = {}
    if odds is not None:  # v2: "" where the null beats the best span by more than the threshold
        odds_list = odds.tolist()
        null_odds = dict(zip(example_ids, odds_list, strict=True))
        best_span = [(0, 0) if o > threshold else s for o, s in zip(odds_list, best_span, strict=True)]
    texts = [context[a:b] for context, (a, b) in zip(contexts, best_span, strict=True)]
    return Decoded(predictions=dict(zip(example_ids, texts, strict=True)), nbest=nbest, spans=spans,
                   null_odds=null_odds,
                   prediction_spans=dict(zip(example_ids, best_span, strict=True)))


def _char_spans(offsets: np.ndarray, feat: np.ndarray, start: np.ndarray, end: np.ndarray,
                is_null: np.ndarray | None, trimmer: SpanTrimmer,
                example: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trimmed context character span [cs, ce) of each (feature, start token, end token); nulls get [0, 0)."""
    flat = offsets.reshape(-1)
    row = feat * offsets.shape[1]
    if flat.shape[0] == 0:  # no positions at all: only nulls can exist
        return np.zeros(feat.shape[0], dtype=np.int64), np.zeros(feat.shape[0], dtype=np.int64)
    if is_null is None:
        return trimmer.trim(example, flat[(row + start) * 2], flat[(row + end) * 2 + 1])
    # A null's cls position may lie beyond the offsets (L2 > L): read position 0 instead, then zero it.
    span = ~is_null
    cs, ce = trimmer.trim(example, flat[(row + np.where(span, start, 0)) * 2],
                          flat[(row + np.where(span, end, 0)) * 2 + 1])
    return np.where(span, cs, 0), np.where(span, ce, 0)
