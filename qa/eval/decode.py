"""Vectorised n-best span decoding for extractive QA (the post-processing step of SQuAD evaluation).

Every feature is a window over one example's context. For each feature we take the ``n_best_size``
highest start and end logits among *context* positions, score all k x k (start, end) pairs at once with
broadcasting, keep each feature's best ``n_best_size`` valid pairs, then pool the candidates of all
features of an example with one sort keyed by (example, -score). Python only runs over the final,
already-chosen n-best entries to build the output dicts.

Char spans are trimmed of surrounding whitespace (``qa.eval.trim``) and a token holding no visible
character is never a span's start or end, so answers are clean whatever the tokenizer's offsets include.
The rule, written as plain loops, is ``qa.eval.reference.reference_decode``.

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

from qa.eval.settings import DecodeSettings
from qa.eval.trim import SpanTrimmer

__all__ = ["Decoded", "decode", "pack_offsets"]

_NO_OFFSET = (-1, -1)
# Features per vectorised block: ~[2048, k*k] float64 temporaries (a few MB at n_best 20).
_CHUNK = 2048


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


def _fill(n: int, dtype: np.dtype) -> np.ndarray:
    """``n`` distinct values far below any real logit, for positions that must never win a top-k.

    Distinct rather than a constant -inf because selection on rows full of equal values is several
    times slower (quickselect degenerates on duplicates), and most rows are mostly non-context.
    """
    if np.dtype(dtype) == np.float32:
        return (-3.0e38 + np.arange(n) * 1.0e32).astype(np.float32)  # step ~5 float32 ulps
    return -1.0e300 + np.arange(n) * 1.0e286  # step ~7 float64 ulps


def _top_k_indices(values: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k largest entries of each row, ascending by column: ``[rows, k]``."""
    n_rows, n = values.shape
    if k >= n:
        return np.broadcast_to(np.arange(n), values.shape)
    # np.partition (values only) is SIMD-accelerated and several times faster than np.argpartition;
    # a row has exactly k entries >= its k-th largest value unless there are ties there (or NaNs).
    mask = values >= np.partition(values, n - k, axis=1)[:, n - k:n - k + 1]
    flat = np.flatnonzero(mask)
    if flat.shape[0] == n_rows * k:
        rows = flat // n
        if (rows == np.repeat(np.arange(n_rows), k)).all():  # exactly k per row: no ties, no NaNs
            return (flat - rows * n).reshape(n_rows, k)
    exact = np.count_nonzero(mask, axis=1) == k
    out = np.empty((n_rows, k), dtype=np.int64)
    out[exact] = (np.flatnonzero(mask[exact]) % n).reshape(-1, k)
    tied = ~exact
    out[tied] = np.sort(np.argpartition(values[tied], n - k, axis=1)[:, n - k:], axis=1)
    return out


# Position sentinels for top-k picks outside the context: any pair using one gets a negative length.
_BAD_START = 1 << 24
_BAD_END = -(1 << 24)


def _span_candidates(start: np.ndarray, end: np.ndarray, is_ctx: np.ndarray, n_best_size: int,
                     max_answer_length: int) -> tuple[np.ndarray, ...]:
    """Each row's best ``n_best_size`` valid (start, end) pairs.

    Columns: row, start position, end position, score (float64), start logit, end logit.

    Ties at a feature's n-th best score may let a few more through; the per-example cut happens later.
    """
    n_feat, length = start.shape
    k = min(n_best_size, length)
    fill = _fill(length, start.dtype)
    s_idx = _top_k_indices(np.where(is_ctx, start, fill), k)
    e_idx = _top_k_indices(np.where(is_ctx, end, fill), k)
    # Validity comes from the mask, not from the fill: a row with fewer than k context positions
    # still yields k indices, some of them outside the context.
    s_pos = np.where(np.take_along_axis(is_ctx, s_idx, 1), s_idx, _BAD_START).astype(np.int32)
    e_pos = np.where(np.take_along_axis(is_ctx, e_idx, 1), e_idx, _BAD_END).astype(np.int32)
    # 0 <= end - start < max_answer_length as one unsigned comparison (negatives wrap to huge).
    ok = ((e_pos[:, None, :] - s_pos[:, :, None]).view(np.uint32) < max_answer_length).reshape(n_feat, k * k)
    s_val = np.take_along_axis(start, s_idx, 1)
    e_val = np.take_along_axis(end, e_idx, 1)
    n_pairs = k * k
    if n_best_size < n_pairs:
        # Pre-selection in the logits' own dtype (half the memory traffic for float32). Rounding the
        # exact sum is monotonic, so ">= the n-th best rounded sum" keeps every true top-n pair (plus
        # possibly a few tied after rounding): a superset, cut exactly per example later. Invalid
        # pairs get distinct fill values (not -inf) so that the partition stays fast.
        key = np.where(ok, (s_val[:, :, None] + e_val[:, None, :]).reshape(n_feat, n_pairs),
                       _fill(n_pairs, start.dtype))
        ok &= key >= np.partition(key, n_pairs - n_best_size, axis=1)[:, n_pairs - n_best_size:][:, :1]
    flat = np.flatnonzero(ok)
    rows = flat // n_pairs
    pair = flat - rows * n_pairs
    s_at = rows * k + pair // k
    e_at = rows * k + pair % k
    s_logit = s_val.ravel()[s_at]
    e_logit = e_val.ravel()[e_at]
    # Exact scores (float64 sum of the logits) only for the survivors.
    score = s_logit.astype(np.float64) + e_logit.astype(np.float64)
    return rows, s_idx.ravel()[s_at], e_idx.ravel()[e_at], score, s_logit, e_logit


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


def _group_starts(sorted_groups: np.ndarray) -> np.ndarray:
    n = sorted_groups.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])


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
           offsets: np.ndarray, start_logits: np.ndarray, end_logits: np.ndarray, *, n_best_size: int = DecodeSettings.n_best_size,
           max_answer_length: int = DecodeSettings.max_answer_length, version_2_with_negative: bool = False,
           null_score_diff_threshold: float = 0.0, cls_index: np.ndarray | None = None) -> Decoded:
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
    n_ex = len(example_ids)
    if len(contexts) != n_ex:
        raise ValueError(f"{n_ex} example ids but {len(contexts)} contexts")
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
    if version_2_with_negative and n_feat and (cls.min() < 0 or cls.max() >= start_all.shape[1]):
        raise ValueError(f"cls_index out of range for logits of width {start_all.shape[1]}")
    length = min(offsets.shape[1], start_all.shape[1])
    trimmer = SpanTrimmer(contexts)

    # -- spans: each feature's best n_best valid pairs ---------------------------------------------
    sp_feat = sp_start = sp_end = np.zeros(0, dtype=np.int64)
    sp_score = np.zeros(0, dtype=np.float64)
    sp_sl = sp_el = np.zeros(0, dtype=start_all.dtype)
    if length > 0 and n_feat > 0:
        is_ctx = offsets[:, :length, 0] >= 0
        # Windows are mostly shorter than the padded length (SQuAD dev: median context end ~170 of
        # 384), so process them in chunks of similar extent, each cut to its longest context: about
        # half the top-k work. Chunking also bounds the k x k temporaries on large eval sets.
        extent = np.where(is_ctx.any(axis=1), length - np.argmax(is_ctx[:, ::-1], axis=1), 0)
        by_extent = np.argsort(extent, kind="stable")
        parts = []
        for lo in range(0, n_feat, _CHUNK):
            rows = by_extent[lo:lo + _CHUNK]
            width = int(extent[rows[-1]])
            if width == 0:
                continue
            win = offsets[rows, :width]
            # A whitespace-only token ("▁", "Ġ", "Ċ") would give an empty or blank answer: not a boundary.
            ctx = is_ctx[rows, :width] & trimmer.visible(feat_ex[rows, None], win[..., 0], win[..., 1])
            f, *cols = _span_candidates(start_all[rows, :width], end_all[rows, :width], ctx,
                                        n_best_size, max_answer_length)
            parts.append((rows[f], *cols))
        if parts:
            sp_feat, sp_start, sp_end, sp_score, sp_sl, sp_el = (
                np.concatenate(cols) for cols in zip(*parts, strict=True))

    # -- v2 nulls: an example's null answer comes from its least confident feature ---------------------
    null_score = np.full(n_ex, np.nan)
    nl_feat = np.zeros(0, dtype=np.int64)
    if version_2_with_negative and n_feat > 0:
        feats = np.arange(n_feat)
        null_feat_score = start_all[feats, cls].astype(np.float64) + end_all[feats, cls].astype(np.float64)
        by_ex = np.lexsort((null_feat_score, feat_ex))
        nl_feat = by_ex[_group_starts(feat_ex[by_ex])]
        null_score[feat_ex[nl_feat]] = null_feat_score[nl_feat]

    # -- pool spans and nulls, sort by (example, -score) -------------------------------------------
    # Nulls come last in the pool so that a span tied with the null score ranks first (as in HF).
    n_sp = sp_feat.shape[0]
    p_feat = np.concatenate([sp_feat, nl_feat])
    p_start = np.concatenate([sp_start, cls[nl_feat]])
    p_end = np.concatenate([sp_end, cls[nl_feat]])
    p_score = np.concatenate([sp_score, null_score[feat_ex[nl_feat]]])
    p_sl = np.concatenate([sp_sl, start_all[nl_feat, cls[nl_feat]]])
    p_el = np.concatenate([sp_el, end_all[nl_feat, cls[nl_feat]]])
    order = _group_sort(feat_ex[p_feat], p_score)
    o_ex = feat_ex[p_feat[order]]
    o_null = order >= n_sp
    n_pool = order.shape[0]
    g_start = _group_starts(o_ex)
    g_size = np.diff(np.r_[g_start, n_pool]).astype(np.int64)
    g_ex = o_ex[g_start]
    rank = np.arange(n_pool) - np.repeat(g_start, g_size)
    # HF semantics: the top n_best of spans + null; a null that falls off the end is appended after
    # them, which is exactly where the sort already put it.
    keep = (rank < n_best_size) | o_null

    # Best span of each group: spans are sorted, and a v2 group holds exactly one null.
    best = g_start + o_null[g_start] if n_pool else g_start
    has_span = best < g_start + g_size
    best_entry = order[np.minimum(best, n_pool - 1)[has_span]] if n_pool else best

    # -- kept entries: logits, char spans, softmax per example ------------------------------------------
    kept = order[keep]
    k_ex = o_ex[keep]
    k_null = o_null[keep]
    k_feat = p_feat[kept]
    k_start_logit = p_sl[kept]
    k_end_logit = p_el[kept]
    k_cs, k_ce = _char_spans(offsets, k_feat, p_start[kept], p_end[kept], k_null, trimmer, k_ex)
    k_score = p_score[kept]
    n_keep = kept.shape[0]
    kg_start = _group_starts(k_ex)
    kg_size = np.diff(np.r_[kg_start, n_keep]).astype(np.int64)
    if n_keep:
        shifted = np.exp(k_score - np.repeat(np.maximum.reduceat(k_score, kg_start), kg_size))
        prob = shifted / np.repeat(np.add.reduceat(shifted, kg_start), kg_size)
    else:
        prob = np.zeros(0, dtype=np.float64)
    b_cs, b_ce = _char_spans(offsets, p_feat[best_entry], p_start[best_entry], p_end[best_entry], None, trimmer,
                             g_ex[has_span])

    odds: np.ndarray | None = None
    if version_2_with_negative:
        # inf when there is no span at all: "" then wins under any threshold, as the prediction says.
        odds = np.full(n_ex, np.inf)
        span_ex = g_ex[has_span]
        odds[span_ex] = null_score[span_ex] - p_score[best_entry]

    with _gc_paused():
        ex_list = k_ex.tolist()
        k_spans = list(zip(k_cs.tolist(), k_ce.tolist(), strict=True))
        texts = [contexts[e][a:b] for e, (a, b) in zip(ex_list, k_spans, strict=True)]
        entries = [
            {"text": t, "probability": p, "start_logit": s, "end_logit": e}
            for t, p, s, e in zip(texts, prob.tolist(), k_start_logit.tolist(), k_end_logit.tolist(),
                                  strict=True)
        ]
        nbest_lists: list[list[dict[str, Any]] | None] = [None] * n_ex
        span_lists: list[list[tuple[int, int]] | None] = [None] * n_ex
        for e, a, n in zip(k_ex[kg_start].tolist(), kg_start.tolist(), kg_size.tolist(), strict=True):
            nbest_lists[e] = entries[a:a + n]
            span_lists[e] = k_spans[a:a + n]
        best_text = [""] * n_ex
        best_span = [(0, 0)] * n_ex
        for e, a, b in zip(g_ex[has_span].tolist(), b_cs.tolist(), b_ce.tolist(), strict=True):
            best_text[e] = contexts[e][a:b]
            best_span[e] = (a, b)
        nbest = {
            qid: lst if lst is not None else [{"text": "", "probability": 1.0, "start_logit": 0.0,
                                               "end_logit": 0.0}]
            for qid, lst in zip(example_ids, nbest_lists, strict=True)
        }
        spans = {qid: lst if lst is not None else [(0, 0)] for qid, lst in zip(example_ids, span_lists, strict=True)}
        if odds is None:
            return Decoded(predictions=dict(zip(example_ids, best_text, strict=True)), nbest=nbest, spans=spans,
                           prediction_spans=dict(zip(example_ids, best_span, strict=True)))
        odds_list = odds.tolist()
        null = [o > null_score_diff_threshold for o in odds_list]
        return Decoded(
            predictions={qid: "" if n else t for qid, n, t in zip(example_ids, null, best_text, strict=True)},
            nbest=nbest, null_odds=dict(zip(example_ids, odds_list, strict=True)), spans=spans,
            prediction_spans={qid: (0, 0) if n else s for qid, n, s in zip(example_ids, null, best_span, strict=True)})


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
