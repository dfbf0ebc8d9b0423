"""Each feature's candidate answers for the decoder (qa.eval.decode): its best ``n_best_size`` valid spans,
found with top-k selections and k x k pair scoring in NumPy, and, for SQuAD v2, each example's null answer.

Pure functions over arrays; the per-example ranking and the output dicts are the decoder's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qa.eval.trim import SpanTrimmer

# Features per vectorised block: ~[2048, k*k] float64 temporaries (a few MB at n_best 20).
_CHUNK = 2048


@dataclass(frozen=True)
class Candidates:
    """One row per candidate answer: its feature, token span, float64 score and the two logits."""

    feature: np.ndarray
    start: np.ndarray
    end: np.ndarray
    score: np.ndarray
    start_logit: np.ndarray
    end_logit: np.ndarray

    @classmethod
    def none(cls, logit_dtype: np.dtype) -> Candidates:
        ints = np.zeros(0, dtype=np.int64)
        logits = np.zeros(0, dtype=logit_dtype)
        return cls(ints, ints, ints, np.zeros(0, dtype=np.float64), logits, logits)

    @classmethod
    def concat(cls, parts: list[Candidates]) -> Candidates:
        columns = zip(*((p.feature, p.start, p.end, p.score, p.start_logit, p.end_logit) for p in parts), strict=True)
        return cls(*(np.concatenate(column) for column in columns))


def span_candidates(offsets: np.ndarray, start_logits: np.ndarray, end_logits: np.ndarray,
                    feature_example: np.ndarray, trimmer: SpanTrimmer, n_best_size: int,
                    max_answer_length: int) -> Candidates:
    """Each feature's best ``n_best_size`` valid spans among its first ``min(L, L2)`` positions.

    A span starts and ends on context positions (offsets >= 0) that hold a visible character, and is at most
    ``max_answer_length`` tokens long."""
    n_feat = feature_example.shape[0]
    length = min(offsets.shape[1], start_logits.shape[1])
    if length == 0 or n_feat == 0:
        return Candidates.none(start_logits.dtype)
    is_ctx = offsets[:, :length, 0] >= 0
    # Windows are mostly shorter than the padded length (SQuAD dev: median context end ~170 of
    # 384), so process them in chunks of similar extent, each cut to its longest context: about
    # half the top-k work. Chunking also bounds the k x k temporaries on large eval sets.
    extent = np.where(is_ctx.any(axis=1), length - np.argmax(is_ctx[:, ::-1], axis=1), 0)
    by_extent = np.argsort(extent, kind="stable")
    parts = [Candidates.none(start_logits.dtype)]
    for lo in range(0, n_feat, _CHUNK):
        rows = by_extent[lo:lo + _CHUNK]
        width = int(extent[rows[-1]])
        if width == 0:
            continue
        win = offsets[rows, :width]
        # A whitespace-only token ("▁", "Ġ", "Ċ") would give an empty or blank answer: not a boundary.
        ctx = is_ctx[rows, :width] & trimmer.visible(feature_example[rows, None], win[..., 0], win[..., 1])
        f, *cols = _span_candidates(start_logits[rows, :width], end_logits[rows, :width], ctx,
                                    n_best_size, max_answer_length)
        parts.append(Candidates(rows[f], *cols))
    return Candidates.concat(parts)


def null_candidates(start_logits: np.ndarray, end_logits: np.ndarray, feature_example: np.ndarray,
                    cls_index: np.ndarray, n_examples: int) -> tuple[np.ndarray, Candidates]:
    """SQuAD v2's null answers: (each example's null score, NaN where it has no feature; one candidate per
    example with a feature). An example's null comes from its least confident feature: the lowest
    ``start[cls] + end[cls]``."""
    null_score = np.full(n_examples, np.nan)
    n_feat = feature_example.shape[0]
    if n_feat == 0:
        return null_score, Candidates.none(start_logits.dtype)
    feats = np.arange(n_feat)
    feature_score = start_logits[feats, cls_index].astype(np.float64) + end_logits[feats, cls_index].astype(np.float64)
    by_example = np.lexsort((feature_score, feature_example))
    chosen = by_example[group_starts(feature_example[by_example])]
    null_score[feature_example[chosen]] = feature_score[chosen]
    cls = cls_index[chosen]
    return null_score, Candidates(chosen, cls, cls, feature_score[chosen], start_logits[chosen, cls],
                                  end_logits[chosen, cls])


def group_starts(sorted_groups: np.ndarray) -> np.ndarray:
    n = sorted_groups.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])


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
