"""The span rule, one example and one pair at a time: what :func:`qa.eval.decode.decode` computes, vectorised.

Slow and plain on purpose; the tests hold ``decode`` to it on random problems. For each example, over
all of its windows (features):

* a span ``(s, e)`` of token positions is a candidate when both positions are context (offset >= 0,
  below the logits' width) and hold a visible character, ``s <= e`` and ``e - s + 1 <= max_answer_length``;
  each window tries only its ``n_best_size`` highest start and ``n_best_size`` highest end logits;
* a span scores ``start_logit[s] + end_logit[e]``; its text is ``context[offset[s][0]:offset[e][1]]``
  trimmed of surrounding whitespace (the offsets move with it);
* v2: the null answer scores ``start_logit[cls] + end_logit[cls]`` of the window where that is lowest;
* the n-best list is the ``n_best_size`` best candidates by score (spans before a tied null), the null
  appended if it fell off; ``probability`` is the softmax of the scores over that list;
* the prediction is the best span ("" if none); v2: "" when null score - best span score > threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from qa.eval.decode import Decoded
from qa.eval.settings import DecodeSettings


def reference_decode(ids: Sequence[str], contexts: Sequence[str], feat_ex: np.ndarray, offsets: np.ndarray,
                     start: np.ndarray, end: np.ndarray, *, n_best_size: int = DecodeSettings.n_best_size, max_answer_length: int = DecodeSettings.max_answer_length,
                     version_2_with_negative: bool = False, null_score_diff_threshold: float = DecodeSettings.null_score_diff_threshold,
                     cls_index: np.ndarray | None = None) -> Decoded:
    length = min(offsets.shape[1], start.shape[1])
    out = Decoded(predictions={}, nbest={})
    for ex, qid in enumerate(ids):
        ctx, spans, null = contexts[ex], [], None
        for f in (f for f in range(len(feat_ex)) if feat_ex[f] == ex):
            c = 0 if cls_index is None else int(cls_index[f])
            if null is None or float(start[f, c]) + float(end[f, c]) < null["score"]:
                null = {"score": float(start[f, c]) + float(end[f, c]), "text": "", "span": (0, 0),
                        "start_logit": float(start[f, c]), "end_logit": float(end[f, c])}
            usable = [i for i in range(length)
                      if offsets[f, i, 0] >= 0 and ctx[offsets[f, i, 0]:offsets[f, i, 1]].strip()]
            for s in sorted(usable, key=lambda i: -start[f, i])[:n_best_size]:
                for e in sorted(usable, key=lambda i: -end[f, i])[:n_best_size]:
                    if s <= e < s + max_answer_length:
                        a, b = int(offsets[f, s, 0]), int(offsets[f, e, 1])
                        a, b = a + len(ctx[a:b]) - len(ctx[a:b].lstrip()), len(ctx[:b].rstrip())
                        spans.append({"score": float(start[f, s]) + float(end[f, e]), "text": ctx[a:b],
                                      "span": (a, b), "start_logit": float(start[f, s]), "end_logit": float(end[f, e])})
        spans.sort(key=lambda x: -x["score"])
        cands = sorted(spans + ([null] if version_2_with_negative and null else []), key=lambda x: -x["score"])
        kept = cands[:n_best_size] + ([null] if null in cands[n_best_size:] else [])
        kept = kept or [{"score": 0.0, "text": "", "span": (0, 0), "start_logit": 0.0, "end_logit": 0.0}]
        exps = [math.exp(x["score"] - kept[0]["score"]) for x in kept]
        out.nbest[qid] = [{"text": x["text"], "probability": p / sum(exps), "start_logit": x["start_logit"],
                           "end_logit": x["end_logit"]} for x, p in zip(kept, exps, strict=True)]
        out.spans[qid] = [x["span"] for x in kept]
        best = spans[0] if spans else {"text": "", "span": (0, 0), "score": math.inf}
        if version_2_with_negative:
            out.null_odds[qid] = null["score"] - best["score"] if spans and null else math.inf
            best = best if out.null_odds[qid] <= null_score_diff_threshold else {"text": "", "span": (0, 0)}
        out.predictions[qid], out.prediction_spans[qid] = best["text"], best["span"]
    return out
