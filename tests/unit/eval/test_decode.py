"""qa.eval.decode: hand-made logits with known answers, and equivalence with the plain reference loop
(qa.eval.reference, the documented rule) on random problems, clean and whitespace-laden."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qa.eval.decode import decode, pack_offsets
from reference_decode import reference_decode

CONTEXT = "The quick brown fox jumps over the lazy dog"
WORDS = [(0, 3), (4, 9), (10, 15), (16, 19), (20, 25), (26, 30), (31, 34), (35, 39), (40, 43)]
Q = 3  # positions 0..2 of every window: [CLS] + two question tokens


def window(first: int, last: int, length: int | None = None) -> list:
    """Offsets of a window [CLS] q q w_first..w_last [SEP] (+ padding up to length)."""
    row = [None] * Q + list(WORDS[first:last + 1]) + [None]
    if length is not None:
        row += [None] * (length - len(row))
    return row


def pos(word: int, first: int = 0) -> int:
    """Token position of WORDS[word] in a window starting at WORDS[first]."""
    return Q + word - first


def flat_logits(n_feat: int, length: int, base: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    # Distinct small values everywhere (no ties), so only the boosted positions matter.
    rng = np.random.default_rng(123)
    start = (base + rng.uniform(-0.5, 0.5, (n_feat, length))).astype(np.float32)
    end = (base + rng.uniform(-0.5, 0.5, (n_feat, length))).astype(np.float32)
    return start, end


# ---------------------------------------------------------------------------------------------------
# pack_offsets
# ---------------------------------------------------------------------------------------------------


def test_pack_offsets_marks_non_context_and_padding():
    packed = pack_offsets([[None, (0, 3), [4, 9], None], [None, (10, 15)]])
    assert packed.dtype == np.int32 and packed.shape == (2, 4, 2)
    assert packed.tolist() == [
        [[-1, -1], [0, 3], [4, 9], [-1, -1]],
        [[-1, -1], [10, 15], [-1, -1], [-1, -1]],
    ]


def test_pack_offsets_seq_len_pads_and_truncates():
    rows = [[(0, 1), (2, 3), (4, 5)], [None]]
    assert pack_offsets(rows, seq_len=2).tolist() == [[[0, 1], [2, 3]], [[-1, -1], [-1, -1]]]
    assert pack_offsets(rows, seq_len=4)[0].tolist() == [[0, 1], [2, 3], [4, 5], [-1, -1]]
    assert pack_offsets([], seq_len=3).shape == (0, 3, 2)
    arr = np.array([[[0, 1], [-1, -1]]])
    assert pack_offsets(arr, seq_len=3).tolist() == [[[0, 1], [-1, -1], [-1, -1]]]


# ---------------------------------------------------------------------------------------------------
# Hand-made cases
# ---------------------------------------------------------------------------------------------------


def test_answer_found_in_second_window():
    offsets = pack_offsets([window(0, 4), window(3, 8)])
    start, end = flat_logits(2, offsets.shape[1])
    start[1, pos(7, 3)] = 6.0   # "lazy" in window 2
    end[1, pos(8, 3)] = 6.0     # "dog" in window 2
    start[0, pos(1)] = 4.5      # a weaker "quick brown" in window 1, still ahead of the rest
    end[0, pos(2)] = 4.5
    out = decode(["q"], [CONTEXT], np.array([0, 0]), offsets, start, end, n_best_size=5)
    assert out.predictions == {"q": "lazy dog"}
    best = out.nbest["q"][0]
    assert best["text"] == "lazy dog"
    assert (best["start_logit"], best["end_logit"]) == (6.0, 6.0)
    assert type(best["probability"]) is float and type(best["start_logit"]) is float
    texts = [e["text"] for e in out.nbest["q"]]
    assert texts[1] == "quick brown"   # candidates of both windows are pooled
    assert len(texts) == 5
    scores = [e["start_logit"] + e["end_logit"] for e in out.nbest["q"]]
    assert scores == sorted(scores, reverse=True)
    assert math.isclose(sum(e["probability"] for e in out.nbest["q"]), 1.0)
    assert out.null_odds == {}


def test_too_long_span_is_rejected():
    offsets = pack_offsets([window(0, 8)])
    start, end = flat_logits(1, offsets.shape[1])
    start[0, pos(0)] = 9.0          # "The" ... "dog" would be 9 tokens
    end[0, pos(8)] = 9.0
    end[0, pos(2)] = 4.0            # best valid end within 3 tokens of "The"
    kwargs = dict(n_best_size=20, max_answer_length=3)
    out = decode(["q"], [CONTEXT], np.array([0]), offsets, start, end, **kwargs)
    assert out.predictions["q"] == "The quick brown"
    assert all(len(e["text"].split()) <= 3 for e in out.nbest["q"])
    # With room for 9 tokens the long span wins.
    out = decode(["q"], [CONTEXT], np.array([0]), offsets, start, end, n_best_size=20, max_answer_length=9)
    assert out.predictions["q"] == CONTEXT


def test_spans_touching_the_question_are_rejected():
    offsets = pack_offsets([window(0, 8)])
    start, end = flat_logits(1, offsets.shape[1])
    start[0, 1] = 50.0              # question token: never a start
    end[0, 2] = 50.0                # question token: never an end
    start[0, 0] = end[0, 0] = 40.0  # CLS: never a span in v1
    end[0, offsets.shape[1] - 1] = 60.0   # [SEP]
    start[0, pos(3)] = 2.0          # "fox jumps"
    end[0, pos(4)] = 2.0
    out = decode(["q"], [CONTEXT], np.array([0]), offsets, start, end, n_best_size=20)
    assert out.predictions["q"] == "fox jumps"
    assert all(e["start_logit"] < 40 and e["end_logit"] < 40 for e in out.nbest["q"])


def test_end_before_start_is_rejected():
    offsets = pack_offsets([window(0, 8)])
    start, end = flat_logits(1, offsets.shape[1])
    start[0, pos(6)] = 8.0          # "the" (second one)
    end[0, pos(2)] = 8.0            # "brown": before the best start
    end[0, pos(7)] = 3.0            # "the lazy" is the best valid pair
    out = decode(["q"], [CONTEXT], np.array([0]), offsets, start, end)
    assert out.predictions["q"] == "the lazy"


def test_padding_beyond_offsets_and_longer_logits_are_ignored():
    # Offsets are 12 wide (window + padding), logits 20 wide (padded across ranks) with huge values
    # in both the offset padding and the logit padding.
    offsets = pack_offsets([window(0, 7, length=12)])
    assert offsets.shape == (1, 12, 2)
    start, end = flat_logits(1, 20)
    start[0, 12:] = end[0, 12:] = 1e9
    start[0, 11] = end[0, 11] = 1e9          # offset padding inside L
    start[0, pos(5)] = 3.0                   # "over the lazy"
    end[0, pos(7)] = 3.0
    out = decode(["q"], [CONTEXT], np.array([0]), offsets, start, end)
    assert out.predictions["q"] == "over the lazy"
    # -inf padding works too.
    start[0, 12:] = end[0, 12:] = -np.inf
    assert decode(["q"], [CONTEXT], np.array([0]), offsets, start, end).predictions["q"] == "over the lazy"


@pytest.mark.parametrize("logit_len", [Q + 9, Q + 12])
def test_answer_at_the_last_position(logit_len):
    # Context running to the very last offset position (no [SEP], no padding), logits as wide or wider.
    offsets = pack_offsets([[None] * Q + WORDS])
    start, end = flat_logits(1, logit_len)
    start[0, pos(8)] = end[0, pos(8)] = 5.0
    out = decode(["q"], [CONTEXT], np.array([0]), offsets, start, end)
    assert out.predictions["q"] == "dog"


def test_logits_shorter_than_offsets():
    # L2 < L: positions past the logits are not candidates even though the offsets say context.
    offsets = pack_offsets([window(0, 8)])   # 13 positions; "lazy dog" at 10, 11
    start, end = flat_logits(1, 10)
    start[0, pos(5)] = 2.0                   # "over"
    end[0, pos(6)] = 2.0                     # "the"
    out = decode(["q"], [CONTEXT], np.array([0]), offsets, start, end)
    assert out.predictions["q"] == "over the"
    assert all("dog" not in e["text"] for e in out.nbest["q"])


def _v2_case(null_boost: float):
    offsets = pack_offsets([window(0, 4), window(3, 8)])
    start, end = flat_logits(2, offsets.shape[1])
    start[1, pos(7, 3)] = end[1, pos(8, 3)] = 3.0      # best span "lazy dog": 6.0 (+ noise below)
    start[0, 0], end[0, 0] = null_boost, 1.0           # CLS of window 1
    start[1, 0], end[1, 0] = null_boost + 2.0, 1.0     # CLS of window 2: larger, so not the null
    return offsets, start, end


def test_v2_null_wins_and_loses_by_threshold():
    offsets, start, end = _v2_case(null_boost=6.5)      # null 7.5 (min over windows) vs span 6.0
    ids, ctx, fei = ["q"], [CONTEXT], np.array([0, 0])
    out = decode(ids, ctx, fei, offsets, start, end, version_2_with_negative=True)
    assert out.predictions["q"] == ""
    assert out.null_odds["q"] == pytest.approx(1.5)
    assert out.null_odds["q"] == 7.5 - (float(start[1, pos(7, 3)]) + float(end[1, pos(8, 3)]))
    null = [e for e in out.nbest["q"] if e["text"] == ""]
    assert len(null) == 1 and (null[0]["start_logit"], null[0]["end_logit"]) == (6.5, 1.0)
    assert out.nbest["q"][0]["text"] == ""
    # Threshold above the odds: the span is predicted.
    out = decode(ids, ctx, fei, offsets, start, end, version_2_with_negative=True,
                 null_score_diff_threshold=2.0)
    assert out.predictions["q"] == "lazy dog"
    # A weak null loses at threshold 0.
    offsets, start, end = _v2_case(null_boost=-3.0)
    out = decode(ids, ctx, fei, offsets, start, end, version_2_with_negative=True)
    assert out.predictions["q"] == "lazy dog"
    assert out.null_odds["q"] == pytest.approx(-2.0 - 6.0)
    # ... unless the threshold is below the (negative) odds.
    out = decode(ids, ctx, fei, offsets, start, end, version_2_with_negative=True,
                 null_score_diff_threshold=-9.0)
    assert out.predictions["q"] == ""


def test_v2_threshold_is_strict():
    # The null is predicted only when its odds exceed the threshold, not when they equal it.
    offsets, start, end = _v2_case(null_boost=6.5)
    ids, ctx, fei = ["q"], [CONTEXT], np.array([0, 0])
    odds = decode(ids, ctx, fei, offsets, start, end, version_2_with_negative=True).null_odds["q"]
    at = decode(ids, ctx, fei, offsets, start, end, version_2_with_negative=True,
                null_score_diff_threshold=odds)
    assert at.predictions["q"] == "lazy dog"
    below = decode(ids, ctx, fei, offsets, start, end, version_2_with_negative=True,
                   null_score_diff_threshold=float(np.nextafter(odds, -np.inf)))
    assert below.predictions["q"] == ""


def test_v2_null_is_kept_even_outside_the_top_n():
    offsets, start, end = _v2_case(null_boost=-30.0)
    out = decode(["q"], [CONTEXT], np.array([0, 0]), offsets, start, end, n_best_size=3,
                 version_2_with_negative=True)
    texts = [e["text"] for e in out.nbest["q"]]
    assert len(texts) == 4 and texts[-1] == ""
    assert out.predictions["q"] == "lazy dog"


def test_cls_index_picks_the_null_position():
    offsets = pack_offsets([window(0, 8)])
    start, end = flat_logits(1, offsets.shape[1])
    start[0, offsets.shape[1] - 1] = end[0, offsets.shape[1] - 1] = 20.0   # "CLS" at the end (XLNet style)
    out = decode(["q"], [CONTEXT], np.array([0]), offsets, start, end, version_2_with_negative=True,
                 cls_index=np.array([offsets.shape[1] - 1]))
    assert out.predictions["q"] == ""
    assert out.nbest["q"][0] == {"text": "", "probability": out.nbest["q"][0]["probability"],
                                 "start_logit": 20.0, "end_logit": 20.0}


def test_examples_without_features_or_valid_spans_predict_empty():
    # Example "b" has no feature; example "c" has a window with no context token at all.
    offsets = pack_offsets([window(0, 8), [None] * 5])
    offsets = np.ascontiguousarray(offsets)
    start, end = flat_logits(2, offsets.shape[1])
    start[0, pos(1)] = end[0, pos(1)] = 5.0
    ids, ctxs, fei = ["a", "b", "c"], [CONTEXT] * 3, np.array([0, 2])
    out = decode(ids, ctxs, fei, offsets, start, end)
    assert out.predictions == {"a": "quick", "b": "", "c": ""}
    assert list(out.nbest) == ids
    assert out.nbest["b"] == out.nbest["c"] == [{"text": "", "probability": 1.0, "start_logit": 0.0,
                                                 "end_logit": 0.0}]
    out = decode(ids, ctxs, fei, offsets, start, end, version_2_with_negative=True,
                 null_score_diff_threshold=1e9)
    assert out.predictions == {"a": "quick", "b": "", "c": ""}
    assert out.null_odds["b"] == out.null_odds["c"] == math.inf
    assert [e["text"] for e in out.nbest["c"]] == [""]


def test_rejects_mismatched_shapes():
    offsets = pack_offsets([window(0, 8)])
    start, end = flat_logits(1, offsets.shape[1])
    with pytest.raises(ValueError):
        decode(["q"], [CONTEXT], np.array([0, 0]), offsets, start, end)
    with pytest.raises(ValueError):
        decode(["q"], [CONTEXT], np.array([0]), offsets, start, end[:, :5])
    with pytest.raises(ValueError):
        decode(["q"], [CONTEXT], np.array([1]), offsets, start, end)


# ---------------------------------------------------------------------------------------------------
# Randomised equivalence with a plain loop
# ---------------------------------------------------------------------------------------------------


def random_problem(rng: np.random.Generator, n_ex: int, length: int, logit_len: int, dtype, messy: bool = False):
    """Random contexts, windows and logits. ``messy``: words separated by runs of spaces, tabs and
    newlines; some token offsets start at the whitespace before the word (SentencePiece "▁word",
    byte-level "Ġword" untrimmed), and some tokens are whitespace only ("▁", "Ċ")."""
    contexts, rows, feat_ex, cls = [], [], [], []
    for ei in range(n_ex):
        n_words = int(rng.integers(3, 40))
        spans, text = [], ""
        for w in range(n_words):
            sep = "" if w == 0 else (str(rng.choice([" ", "  ", "\n", " \t", "\u3000"])) if messy else " ")
            word = "".join(rng.choice(list("abcdefgh"), size=int(rng.integers(1, 6))))
            lead = len(text)
            text += sep
            roll = rng.random() if messy else 1.0
            if roll < 0.15 and sep:
                spans.append((lead, len(text)))             # a whitespace-only token
                spans.append((len(text), len(text) + len(word)))
            elif roll < 0.5:
                spans.append((lead, len(text) + len(word)))  # offsets include the leading whitespace
            else:
                spans.append((len(text), len(text) + len(word)))
            text += word
        if messy and rng.random() < 0.5:
            spans.append((len(text), len(text) + 1))        # a trailing newline token
            text += "\n"
        contexts.append(text)
        n_q = int(rng.integers(2, 6))
        room = length - n_q - 1
        stride = max(1, room // 2)
        n_windows = int(rng.integers(0, 4))     # 0: an example without features
        for w in range(n_windows):
            lo = min(w * stride, max(0, len(spans) - 1))
            chunk = spans[lo:lo + room]
            rows.append([None] * n_q + chunk + [None])
            feat_ex.append(ei)
            cls.append(int(rng.integers(0, n_q)))
    perm = rng.permutation(len(rows))         # features need not be grouped by example
    rows = [rows[i] for i in perm]
    feat_ex = np.array(feat_ex, dtype=np.int64)[perm]
    cls = np.array(cls, dtype=np.int64)[perm]
    offsets = pack_offsets(rows, seq_len=length)
    start = rng.normal(0, 3, (len(rows), logit_len)).astype(dtype)
    end = rng.normal(0, 3, (len(rows), logit_len)).astype(dtype)
    return [f"id{i}" for i in range(n_ex)], contexts, feat_ex, offsets, start, end, cls


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("messy", [False, True])
def test_matches_reference_loop(seed, v2, messy):
    rng = np.random.default_rng(seed)
    length = 24
    logit_len = [24, 30, 18][seed % 3]        # equal, padded, truncated
    n_best, max_len = [(5, 4), (3, 2), (20, 30)][seed % 3]
    dtype = np.float32 if seed % 2 == 0 else np.float64
    ids, ctxs, fei, offsets, start, end, cls = random_problem(rng, 40, length, logit_len, dtype, messy)
    if logit_len > length:
        start[:, length:] = 1e6                 # padding across ranks: never a candidate
        end[:, length:] = -np.inf
    thresh = float(rng.normal())
    kwargs = dict(n_best_size=n_best, max_answer_length=max_len, version_2_with_negative=v2,
                  null_score_diff_threshold=thresh, cls_index=cls)
    got = decode(ids, ctxs, fei, offsets, start, end, **kwargs)
    ref = reference_decode(ids, ctxs, fei, offsets, start, end, **kwargs)
    assert got.predictions == ref.predictions
    assert got.prediction_spans == ref.prediction_spans
    assert list(got.predictions) == ids
    assert got.null_odds == ref.null_odds
    assert list(got.nbest) == ids
    for qid in ids:
        g, r = got.nbest[qid], ref.nbest[qid]
        assert [(e["text"], e["start_logit"], e["end_logit"]) for e in g] == \
               [(e["text"], e["start_logit"], e["end_logit"]) for e in r], qid
        assert [e["probability"] for e in g] == pytest.approx([e["probability"] for e in r], rel=1e-12,
                                                               abs=1e-300)
        assert got.spans[qid] == ref.spans[qid]
    # Non-trivial problem: some examples answered, some not (v2), some n-best lists full.
    assert any(p for p in ref.predictions.values())
    assert any(len(v) >= n_best for v in ref.nbest.values())


@pytest.mark.parametrize("v2", [False, True])
def test_answers_are_trimmed_and_point_into_the_context(v2):
    rng = np.random.default_rng(11)
    ids, ctxs, fei, offsets, start, end, cls = random_problem(rng, 60, 24, 24, np.float32, messy=True)
    out = decode(ids, ctxs, fei, offsets, start, end, n_best_size=10, max_answer_length=6,
                 version_2_with_negative=v2, cls_index=cls)
    untrimmed = 0
    for qid, ctx in zip(ids, ctxs, strict=True):
        a, b = out.prediction_spans[qid]
        assert ctx[a:b] == out.predictions[qid] == out.predictions[qid].strip()
        for entry, (a, b) in zip(out.nbest[qid], out.spans[qid], strict=True):
            assert ctx[a:b] == entry["text"] == entry["text"].strip()
            assert entry["text"] or (a, b) == (0, 0)   # "" only for the null answer / no candidate
        untrimmed += sum(ctx[o[0]:o[1]] != ctx[o[0]:o[1]].strip() for o in offsets.reshape(-1, 2) if o[0] >= 0)
    assert untrimmed > 50   # the offsets really did include whitespace
    assert sum(bool(p) for p in out.predictions.values()) > 20


def test_whitespace_only_tokens_are_never_a_boundary():
    # "a", "▁" (a lone space token), "b": the space token has the best start and end logits.
    ctx = "a  b"
    offsets = pack_offsets([[None, (0, 1), (1, 3), (3, 4), None]])
    start = np.array([[0.0, 1.0, 9.0, 2.0, 0.0]], dtype=np.float32)
    end = np.array([[0.0, 1.0, 9.0, 0.5, 0.0]], dtype=np.float32)
    out = decode(["q"], [ctx], np.array([0]), offsets, start, end, n_best_size=5)
    # Without the rule the space token would win (9 + 9) with an empty answer.
    assert out.predictions["q"] == "b"     # 2 + 0.5
    assert [e["text"] for e in out.nbest["q"]] == ["b", "a", "a  b"]
    assert out.spans["q"] == [(3, 4), (0, 1), (0, 4)]


@pytest.mark.parametrize("quantum", [0.0, 0.5])
def test_tied_logits_still_give_valid_n_best(quantum):
    # Constant (untrained head) or coarsely quantised (bf16-like) logits tie everywhere; which tied
    # candidate wins is unspecified, but every entry must still be a valid, correctly scored span.
    rng = np.random.default_rng(5)
    ids, ctxs, fei, offsets, start, end, cls = random_problem(rng, 30, 24, 24, np.float32)
    if quantum:
        start = (np.round(start / quantum) * quantum).astype(np.float32)
        end = (np.round(end / quantum) * quantum).astype(np.float32)
    else:
        start[:] = 0.0
        end[:] = 0.0
    out = decode(ids, ctxs, fei, offsets, start, end, n_best_size=4, max_answer_length=3)
    for qid, ctx in zip(ids, ctxs, strict=True):
        entries = out.nbest[qid]
        scores = [e["start_logit"] + e["end_logit"] for e in entries]
        assert scores == sorted(scores, reverse=True)
        assert 1 <= len(entries) <= 4
        assert math.isclose(sum(e["probability"] for e in entries), 1.0)
        assert out.predictions[qid] == entries[0]["text"]
        for e in entries:
            if e["text"]:
                assert e["text"] in ctx and 1 <= len(e["text"].split()) <= 3
    assert sum(bool(p) for p in out.predictions.values()) > 10
