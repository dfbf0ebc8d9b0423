"""SQuAD v1.1 / v2.0 scoring that prints the same numbers as the official scripts.

The official ``evaluate-v1.1.py`` and ``evaluate-v2.0.py`` are the reference: every per-question value
has the same value *and Python type* as theirs, and the totals are accumulated in the same order with the
same operators (running ``+=`` in v1.1, ``sum()`` over dict values in v2.0). That matters because
``sum()`` treats ints and floats differently on Python >= 3.12 (compensated float summation), so
"equal values" alone would not guarantee digit-for-digit equal output.

What is different is only the cost: normalisation is cached (gold answers repeat across evaluations
and within a question), duplicate gold answers are scored once (they cannot change a max), and token
overlap is counted with a plain dict instead of two ``Counter`` objects and an ``&``.
"""

from __future__ import annotations

import functools
import re
import string
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["normalize_answer", "squad_v1", "squad_v2"]

# A character class removes exactly the characters the official ``''.join(ch for ch in text if ch not
# in set(string.punctuation))`` removes, and is ~3x faster than str.translate with a deletion table.
_PUNCT = re.compile("[" + re.escape(string.punctuation) + "]")
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace (official order)."""
    return " ".join(_ARTICLES.sub(" ", _PUNCT.sub("", s.lower())).split())


@functools.lru_cache(maxsize=1 << 18)
def _analyse(s: str) -> tuple[str, tuple[str, ...]]:
    # Bounded so a long-running training job that evaluates many times cannot grow it forever; SQuAD
    # dev has ~30k distinct gold strings, which all stay resident between evaluations.
    norm = normalize_answer(s)
    return norm, tuple(norm.split())


def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """Size of the multiset intersection, i.e. ``sum((Counter(a) & Counter(b)).values())``."""
    if a == b:
        return len(a)
    if len(a) > len(b):
        a, b = b, a
    if len(a) == 1:
        return 1 if a[0] in b else 0
    counts: dict[str, int] = {}
    for t in b:
        counts[t] = counts.get(t, 0) + 1
    n = 0
    for t in a:
        c = counts.get(t, 0)
        if c:
            counts[t] = c - 1
            n += 1
    return n


def _f1_of_overlap(num_same: int, n_pred: int, n_gold: int) -> float:
    # Both official scripts: int 0 when nothing overlaps, else the harmonic mean of precision and recall.
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / n_pred
    recall = 1.0 * num_same / n_gold
    return (2 * precision * recall) / (precision + recall)


def _f1_v1(pred_toks: tuple[str, ...], gold_toks: tuple[str, ...]) -> float:
    # evaluate-v1.1.py ``f1_score``: 0 when nothing overlaps, even if both are empty.
    return _f1_of_overlap(_overlap(pred_toks, gold_toks), len(pred_toks), len(gold_toks))


def _f1_v2(gold_toks: tuple[str, ...], pred_toks: tuple[str, ...]) -> float:
    # evaluate-v2.0.py ``compute_f1``: an empty side scores int(equal), i.e. no-answer vs no-answer = 1.
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    return _f1_of_overlap(_overlap(gold_toks, pred_toks), len(pred_toks), len(gold_toks))


def _unique(items: Sequence[str]) -> list[str]:
    # Order-preserving: ``max`` keeps the first of equal values, and duplicates score identically.
    return list(dict.fromkeys(items)) if len(items) > 1 else list(items)


def squad_v1(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """``evaluate-v1.1.py``: ``{"exact_match", "f1"}`` in percent over every question in ``references``.

    Questions without a prediction count as 0; predictions for ids not in ``references`` are ignored.
    """
    total = len(references)
    if total == 0:
        raise ValueError("squad_v1: no reference questions to score")
    exact_match = 0
    f1 = 0
    for qid, golds in references.items():
        pred = predictions.get(qid)
        if pred is None:
            continue
        if len(golds) == 0:
            # The official script would crash in max(); say why instead.
            raise ValueError(f"squad_v1: question {qid!r} has no gold answer (SQuAD v2 data? use squad_v2)")
        p_norm, p_toks = _analyse(pred)
        em = False
        best = None
        for g in _unique(golds):
            g_norm, g_toks = _analyse(g)
            if g_norm == p_norm:
                em = True
            v = _f1_v1(p_toks, g_toks)
            if best is None or v > best:
                best = v
        exact_match += em
        f1 += best
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def squad_v2(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
             na_probs: Mapping[str, float] | None = None, na_prob_thresh: float = 1.0) -> dict[str, float]:
    """``evaluate-v2.0.py`` (``--na-prob-file`` <=> ``na_probs``); an empty gold list means unanswerable.

    Keys: exact, f1, total, then HasAns_* / NoAns_* for non-empty subsets, then best_* when ``na_probs``
    is given. A question is predicted unanswerable when ``na_probs[qid] > na_prob_thresh``.
    """
    if len(references) == 0:
        raise ValueError("squad_v2: no reference questions to score")
    missing = [qid for qid in references if qid not in predictions]
    if missing:
        # The official script crashes (KeyError in make_eval_dict) on any missing prediction.
        raise ValueError(f"squad_v2: {len(missing)} question(s) have no prediction, e.g. {missing[:3]}")
    has_ans = {qid: bool(golds) for qid, golds in references.items()}
    exact_raw: dict[str, int] = {}
    f1_raw: dict[str, float] = {}
    for qid, golds in references.items():
        p_norm, p_toks = _analyse(predictions[qid])
        analysed = [a for a in (_analyse(g) for g in _unique(golds)) if a[0]] or [("", ())]
        em = 0
        best = None
        for g_norm, g_toks in analysed:
            if g_norm == p_norm:
                em = 1
            v = _f1_v2(g_toks, p_toks)
            if best is None or v > best:
                best = v
        exact_raw[qid] = em
        f1_raw[qid] = best

    probs = na_probs if na_probs is not None else dict.fromkeys(predictions, 0.0)
    exact_thresh = dict(exact_raw)
    f1_thresh = dict(f1_raw)
    for qid in exact_raw:
        if probs[qid] > na_prob_thresh:
            exact_thresh[qid] = f1_thresh[qid] = float(not has_ans[qid])

    total = len(exact_thresh)
    out: dict[str, float] = {
        "exact": 100.0 * sum(exact_thresh.values()) / total,
        "f1": 100.0 * sum(f1_thresh.values()) / total,
        "total": total,
    }
    for prefix, want in (("HasAns", True), ("NoAns", False)):
        qids = [qid for qid, h in has_ans.items() if h is want]
        if qids:
            out[f"{prefix}_exact"] = 100.0 * sum(exact_thresh[k] for k in qids) / len(qids)
            out[f"{prefix}_f1"] = 100.0 * sum(f1_thresh[k] for k in qids) / len(qids)
            out[f"{prefix}_total"] = len(qids)
    if na_probs is not None:
        # Python's sort is stable, so ties keep na_probs' own order exactly as in the official script.
        order = sorted(na_probs, key=na_probs.__getitem__)
        for name, raw in (("exact", exact_raw), ("f1", f1_raw)):
            best_score, best_thresh = _best_thresh(predictions, raw, na_probs, has_ans, order)
            out[f"best_{name}"] = best_score
            out[f"best_{name}_thresh"] = best_thresh
    return out


def _best_thresh(preds: Mapping[str, str], scores: Mapping[str, float], na_probs: Mapping[str, float],
                 has_ans: Mapping[str, bool], order: Sequence[str]) -> tuple[float, float]:
    """evaluate-v2.0.py ``find_best_thresh``: the best score over thresholds swept upwards through the sorted
    na_probs, and the first threshold that reaches it (0.0 if answering nothing is already best)."""
    kept = [qid for qid in order if qid in scores]
    # Predicting "no answer" below the threshold: a question with an answer gains its score once the threshold
    # passes it; one without loses a point if something was predicted.
    gains = [scores[qid] if has_ans[qid] else (-1 if preds[qid] else 0) for qid in kept]
    # Accumulated one addition at a time from the all-no-answer score, as the script does: the same floats.
    running = np.cumsum([sum(1 for h in has_ans.values() if not h), *gains], dtype=np.float64)
    best = int(np.argmax(running))  # the first maximum: a later equal score does not move the threshold
    return 100.0 * float(running[best]) / len(scores), (na_probs[kept[best - 1]] if best else 0.0)
