"""qa.eval.squad_metrics against an oracle written from the SQuAD metric definitions.

The oracle is a plain reading of the definitions (Rajpurkar et al., SQuAD 2016 and 2018), in its own
structure and sharing no code with the implementation (no cache, no deduplication of gold answers):

- normalisation: lower-case, delete ASCII punctuation, delete the whole words "a", "an" and "the",
  collapse whitespace;
- exact match (EM) of a question: 1 if its normalised prediction equals some normalised gold answer;
- F1 of a question: the best, over its gold answers, harmonic mean of token precision and recall, the
  shared tokens counted as a multiset intersection; in v2.0 an empty gold or prediction scores 1 only
  when both are empty;
- v1.1 averages over every reference question, a question without a prediction scoring 0;
- v2.0 scores the predicted questions, an unanswerable one against the gold answer ""; a question whose
  na_prob exceeds the threshold counts as answered "no answer"; HasAns_/NoAns_ split the questions by
  whether they have gold answers; with na_probs, best_* is the best score over thresholds swept upwards
  through the questions sorted by na_prob.

The tests compare at full precision (same keys in the same order, same repr), so the oracle also fixes the
arithmetic that the definitions leave open, to the arithmetic behind the published numbers. A mean is
``100.0 * sum / count`` and the sum runs over the questions in dataset order, because floating-point
addition is not associative: the same scores added in another order can round differently in the last
bit. The way of adding is fixed too: v1.1's totals are a running left-to-right sum, v2.0's are Python's
``sum()``, which on Python >= 3.12 compensates rounding error (so the two can differ there) and adds ints
and floats differently; for the same reason a score that is a count (EM, an F1 of 0 for no shared token,
an F1 of 1 for two empty answers) stays an int. Precision and recall are float divisions and F1 is
``2 * p * r / (p + r)``, evaluated left to right.
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

import pytest

from qa.eval.squad_metrics import normalize_answer, squad_v1, squad_v2

# ---------------------------------------------------------------------------------------------------
# Oracle: the definitions, on {qid: [gold texts]} and {qid: prediction}.
# ---------------------------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = frozenset({"a", "an", "the"})
_WORD_RUN = re.compile(r"(\w+)")


def oracle_normalize(text: str) -> str:
    lowered = text.lower()
    unpunctuated = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
    # A word is a maximal run of word characters, so "theory" keeps its "the"; a deleted article leaves a
    # space so that its neighbours stay apart.
    pieces = [" " if piece in _ARTICLES else piece for piece in _WORD_RUN.split(unpunctuated)]
    return " ".join("".join(pieces).split())


@dataclass(frozen=True)
class Question:
    qid: str
    golds: tuple[str, ...]   # as given; empty for an unanswerable v2.0 question
    prediction: str | None   # None when the question was not predicted
    na_prob: float = 0.0

    @property
    def answerable(self) -> bool:
        return bool(self.golds)


def _tokens(text: str) -> list[str]:
    return oracle_normalize(text).split()


def _shared_token_count(a: list[str], b: list[str]) -> int:
    count_a, count_b = Counter(a), Counter(b)
    return sum(min(count_a[t], count_b[t]) for t in count_a.keys() & count_b.keys())


def _harmonic_f1(pred: list[str], gold: list[str]) -> float:
    shared = _shared_token_count(pred, gold)
    if shared == 0:
        return 0   # precision and recall are both 0
    precision = shared / len(pred)
    recall = shared / len(gold)
    return 2 * precision * recall / (precision + recall)


def _exact(prediction: str, gold: str) -> int:
    return int(oracle_normalize(prediction) == oracle_normalize(gold))


def _running_total(values: Iterable[float]) -> float:
    total = 0
    for value in values:
        total += value
    return total


def _v1_scores(q: Question) -> tuple[int, float]:
    if q.prediction is None:
        return 0, 0
    em = max(_exact(q.prediction, gold) for gold in q.golds)
    f1 = max(_harmonic_f1(_tokens(q.prediction), _tokens(gold)) for gold in q.golds)
    return em, f1


def oracle_v1(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, float]:
    questions = [Question(qid, tuple(golds), predictions.get(qid)) for qid, golds in references.items()]
    scores = [_v1_scores(q) for q in questions]
    return {
        "exact_match": 100.0 * _running_total(em for em, _ in scores) / len(questions),
        "f1": 100.0 * _running_total(f1 for _, f1 in scores) / len(questions),
    }


def _v2_golds(q: Question) -> list[str]:
    # A gold answer that normalises to "" says nothing; a question left with none is scored against "".
    return [gold for gold in q.golds if oracle_normalize(gold)] or [""]


def _v2_f1(pred: list[str], gold: list[str]) -> float:
    if not pred or not gold:
        return int(pred == gold)
    return _harmonic_f1(pred, gold)


def _v2_scores(q: Question) -> tuple[int, float]:
    golds = _v2_golds(q)
    em = max(_exact(q.prediction, gold) for gold in golds)
    f1 = max(_v2_f1(_tokens(q.prediction), _tokens(gold)) for gold in golds)
    return em, f1


def _after_threshold(q: Question, score: float, thresh: float) -> float:
    # Above the threshold the question is answered "no answer", which is right exactly when it has none.
    return float(not q.answerable) if q.na_prob > thresh else score


def _summary(scores: list[tuple[float, float]]) -> dict[str, float]:
    return {
        "exact": 100.0 * sum(em for em, _ in scores) / len(scores),
        "f1": 100.0 * sum(f1 for _, f1 in scores) / len(scores),
        "total": len(scores),
    }


def _best_threshold(questions: list[Question], raw: list[float],
                    na_probs: Mapping[str, float]) -> tuple[float, float]:
    """Best score over thresholds, and the lowest threshold that reaches it (0.0: answer nothing).

    Raising the threshold through the sorted na_probs answers one more question at each step, starting from
    abstaining everywhere (every unanswerable question right). Answering gains an answerable question its
    raw score, and costs an unanswerable one its point when any text (even text that normalises to "")
    was predicted. The score of each cut is accumulated one question at a time, like the published numbers.
    """
    gain = {q.qid: s if q.answerable else (-1 if q.prediction else 0)
            for q, s in zip(questions, raw, strict=True)}
    # sorted() is stable: questions with equal na_probs are answered in na_probs' own order.
    order = [qid for qid in sorted(na_probs, key=na_probs.__getitem__) if qid in gain]
    abstain_all = sum(1 for q in questions if not q.answerable)
    cut_scores = list(accumulate((gain[qid] for qid in order), initial=abstain_all))
    best_cut = cut_scores.index(max(cut_scores))   # the first cut that reaches the best score
    thresh = na_probs[order[best_cut - 1]] if best_cut else 0.0
    return 100.0 * cut_scores[best_cut] / len(questions), thresh


def oracle_v2(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
              na_probs: Mapping[str, float] | None = None, thresh: float = 1.0) -> dict[str, float]:
    questions = [
        Question(qid, tuple(golds), predictions[qid], na_probs[qid] if na_probs is not None else 0.0)
        for qid, golds in references.items() if qid in predictions
    ]
    raw = [_v2_scores(q) for q in questions]
    scored = [(_after_threshold(q, em, thresh), _after_threshold(q, f1, thresh))
              for q, (em, f1) in zip(questions, raw, strict=True)]
    out = _summary(scored)
    for prefix, answerable in (("HasAns", True), ("NoAns", False)):
        subset = [s for q, s in zip(questions, scored, strict=True) if q.answerable is answerable]
        if subset:
            out.update({f"{prefix}_{key}": value for key, value in _summary(subset).items()})
    if na_probs is not None:
        for name, pick in (("exact", 0), ("f1", 1)):
            best, at = _best_threshold(questions, [s[pick] for s in raw], na_probs)
            out[f"best_{name}"] = best
            out[f"best_{name}_thresh"] = at
    return out


def assert_identical(got, want):
    """Same keys in the same order, same values bit for bit (repr catches 1 vs 1.0 too)."""
    assert list(got) == list(want)
    for k in want:
        assert repr(got[k]) == repr(want[k]), (k, got[k], want[k])


# ---------------------------------------------------------------------------------------------------
# normalize_answer
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [
    ("Hello World", "hello world"),                  # case
    ("HELLO", "hello"),
    ("hello, world!", "hello world"),                # punctuation
    ("U.S.A.", "usa"),
    ("\"quoted\" (text) [x] {y} a-b", "quoted text x y ab"),
    ("the cat", "cat"),                              # each article as a whole word
    ("a cat", "cat"),
    ("an apple", "apple"),
    ("The cat and THE dog", "cat and dog"),          # articles after lower-casing
    ("A", ""),
    ("the", ""),
    ("theory", "theory"),                            # articles inside words stay
    ("another atheist", "another atheist"),
    ("banana", "banana"),
    ("canthe", "canthe"),
    ("the-cat", "thecat"),                           # punctuation goes before articles (official order)
    ("(the) cat", "cat"),
    ("a.", ""),
    ("  lots \t of\n\nspace  ", "lots of space"),   # whitespace collapsed and stripped
    ("the  a  an", ""),
    ("Über café", "über café"),                      # non-ASCII kept, lower-cased
    ("", ""),
])
def test_normalize_answer_rules(raw, expected):
    assert normalize_answer(raw) == expected
    assert oracle_normalize(raw) == expected


def test_normalize_answer_matches_oracle_on_random_strings():
    rng = random.Random(1)
    alphabet = "abtheTHEAn \t\n xyzÉé" + string.punctuation
    for _ in range(2000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 25)))
        assert normalize_answer(s) == oracle_normalize(s), s


# ---------------------------------------------------------------------------------------------------
# SQuAD v1.1
# ---------------------------------------------------------------------------------------------------


def test_v1_hand_made():
    refs = {
        "exact": ["Denver Broncos"],
        "case_punct": ["the Denver Broncos"],
        "partial": ["red dog"],
        "multi": ["Paris", "city of Paris", "France"],
        "wrong": ["blue"],
        "missing": ["anything"],
    }
    preds = {
        "exact": "Denver Broncos",
        "case_punct": "denver broncos!",       # EM after normalisation
        "partial": "the big red dog",          # tokens big/red/dog vs red/dog: P 2/3, R 1 -> F1 0.8
        "multi": "the city of paris",          # EM against the 2nd gold answer
        "wrong": "green",
        "unknown-id": "ignored",
    }
    got = squad_v1(preds, refs)
    f1_partial = (2 * (2 / 3) * 1.0) / ((2 / 3) + 1.0)
    assert got == {
        "exact_match": 100.0 * 3 / 6,
        "f1": 100.0 * (1 + 1 + f1_partial + 1 + 0 + 0) / 6,   # "missing" counts, as a 0
    }
    assert_identical(got, oracle_v1(preds, refs))


def test_v1_max_over_gold_answers_takes_best_f1():
    refs = {"q": ["a b c d", "b c", "zzz"]}
    got = squad_v1({"q": "b c x"}, refs)
    # vs "b c d" tokens: "a b c d" -> P 2/3 R 2/4; "b c" -> P 2/3 R 1 (best); "zzz" -> 0
    best = (2 * (2 / 3) * 1.0) / ((2 / 3) + 1.0)
    assert got == {"exact_match": 0.0, "f1": 100.0 * best}
    assert_identical(got, oracle_v1({"q": "b c x"}, refs))


def test_v1_empty_prediction_and_article_only_gold():
    # Both normalise to "": EM counts, F1 is 0 in v1.1 (no overlapping token).
    refs = {"q": ["The"]}
    assert squad_v1({"q": ""}, refs) == {"exact_match": 100.0, "f1": 0.0}
    assert_identical(squad_v1({"q": ""}, refs), oracle_v1({"q": ""}, refs))


def test_v1_duplicate_tokens_use_multiset_overlap():
    refs = {"q": ["the the cat cat cat sat"]}
    preds = {"q": "cat cat dog"}
    assert_identical(squad_v1(preds, refs), oracle_v1(preds, refs))
    # cat x2 common: P 2/3, R 2/4
    assert squad_v1(preds, refs)["f1"] == 100.0 * ((2 * (2 / 3) * 0.5) / ((2 / 3) + 0.5))


def test_v1_rejects_questions_without_gold_answers():
    with pytest.raises(ValueError, match="no gold answer"):
        squad_v1({"q": "x"}, {"q": []})


WORDS = ["the", "a", "an", "The", "A", "cat", "Cat", "dog", "theory", "another", "red", "big", "Paris",
         "1984", "U.S.", "won't", "café", "x", "y", "z", "cat,", "(dog)", "--", "!"]


def _random_text(rng: random.Random, lo: int = 0, hi: int = 6) -> str:
    sep = rng.choice([" ", "  ", "\t", " \n "])
    return sep.join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _perturb(rng: random.Random, text: str) -> str:
    choice = rng.random()
    if choice < 0.25:
        return text.upper()
    if choice < 0.5:
        return f"the {text}."
    if choice < 0.75:
        return f"  {text} ,"
    words = text.split()
    return " ".join(words[: max(1, len(words) - 1)])


def _random_case(rng: random.Random, n: int, v2: bool):
    refs: dict[str, list[str]] = {}
    preds: dict[str, str] = {}
    for i in range(n):
        qid = f"q{i}"
        if v2 and rng.random() < 0.35:
            golds = [] if rng.random() < 0.8 else [rng.choice(["the", "!!", "a an"])]   # normalise to ""
        else:
            golds = [_random_text(rng, 1) for _ in range(rng.randint(1, 4))]
            if rng.random() < 0.2:
                golds.append(golds[0])     # duplicate gold answers occur in SQuAD dev
        refs[qid] = golds
        r = rng.random()
        if r < 0.08 and not v2:
            continue                        # v1: a missing prediction scores 0
        if r < 0.3 and golds:
            preds[qid] = _perturb(rng, rng.choice(golds))
        elif r < 0.45:
            preds[qid] = ""
        else:
            preds[qid] = _random_text(rng)
    preds["not-a-question"] = "ignored"
    return preds, refs


@pytest.mark.parametrize("seed", range(5))
def test_v1_matches_official_on_random_predictions(seed):
    preds, refs = _random_case(random.Random(seed), 400, v2=False)
    assert_identical(squad_v1(preds, refs), oracle_v1(preds, refs))


# ---------------------------------------------------------------------------------------------------
# SQuAD v2.0
# ---------------------------------------------------------------------------------------------------


def test_v2_hand_made_no_answer_cases_and_best_threshold():
    refs = {"q1": ["Paris"], "q2": [], "q3": [], "q4": ["red dog"]}
    preds = {"q1": "paris", "q2": "", "q3": "x", "q4": "zzz"}
    na = {"q1": 0.1, "q2": 0.9, "q3": 0.5, "q4": 0.7}

    got = squad_v2(preds, refs, na_probs=na)    # threshold 1.0: nothing forced to no-answer
    assert got == {
        "exact": 50.0, "f1": 50.0, "total": 4,
        "HasAns_exact": 50.0, "HasAns_f1": 50.0, "HasAns_total": 2,
        "NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2,
        # sweep from 2 (all no-answer correct): q1 (+1) -> 3 at 0.1; q3 wrong (-1); q4 (0); q2 (0)
        "best_exact": 75.0, "best_exact_thresh": 0.1, "best_f1": 75.0, "best_f1_thresh": 0.1,
    }
    assert_identical(got, oracle_v2(preds, refs, na, 1.0))

    # Threshold 0.4: q3 (0.5), q4 (0.7), q2 (0.9) are predicted unanswerable: q3 becomes right, q4 wrong.
    got = squad_v2(preds, refs, na_probs=na, na_prob_thresh=0.4)
    assert (got["exact"], got["HasAns_exact"], got["NoAns_exact"]) == (75.0, 50.0, 100.0)
    assert_identical(got, oracle_v2(preds, refs, na, 0.4))


def test_v2_without_na_probs_has_no_best_keys_and_scores_empty_answers():
    refs = {"a": ["yes"], "b": [], "c": ["The"]}     # "The" normalises to "": scored as no-answer
    preds = {"a": "Yes.", "b": "", "c": ""}
    got = squad_v2(preds, refs)
    assert got == {"exact": 100.0, "f1": 100.0, "total": 3, "HasAns_exact": 100.0, "HasAns_f1": 100.0,
                   "HasAns_total": 2, "NoAns_exact": 100.0, "NoAns_f1": 100.0, "NoAns_total": 1}
    assert_identical(got, oracle_v2(preds, refs))
    # A no-answer question answered with text scores 0 for EM and F1.
    assert squad_v2({"a": "yes", "b": "something", "c": ""}, refs)["NoAns_f1"] == 0.0


def test_v2_subsets_only_when_present():
    only_has = squad_v2({"a": "x"}, {"a": ["x"]})
    assert "NoAns_total" not in only_has and only_has["HasAns_total"] == 1
    only_no = squad_v2({"a": ""}, {"a": []})
    assert "HasAns_total" not in only_no and only_no["NoAns_exact"] == 100.0


def test_v2_missing_prediction_is_an_error():
    with pytest.raises(ValueError, match="no prediction"):
        squad_v2({"a": "x"}, {"a": ["x"], "b": []})


def test_v2_best_threshold_ties_follow_na_probs_order():
    # Equal na_probs: the official sweep visits them in na_probs' own order, and the best threshold is
    # taken at the first strict improvement, so the order is observable.
    refs = {"h1": ["a b"], "n1": [], "h2": ["c"]}
    preds = {"h1": "a b", "n1": "oops", "h2": "c"}
    for na in ({"h1": 0.5, "n1": 0.5, "h2": 0.5}, {"n1": 0.5, "h1": 0.5, "h2": 0.5},
               {"n1": 0.2, "h1": 0.2, "h2": 0.3, "extra-id": 0.1}):
        assert_identical(squad_v2(preds, refs, na_probs=na), oracle_v2(preds, refs, na))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("thresh", [1.0, 0.0, 0.35, -2.0])
def test_v2_matches_official_on_random_predictions(seed, thresh):
    rng = random.Random(100 + seed)
    preds, refs = _random_case(rng, 400, v2=True)
    # Coarse values make ties frequent; some null-odds-like values are negative or above 1.
    na = {qid: round(rng.uniform(-1.5, 1.5), 1) for qid in refs}
    assert_identical(squad_v2(preds, refs, na_probs=na, na_prob_thresh=thresh),
                     oracle_v2(preds, refs, na, thresh))
    assert_identical(squad_v2(preds, refs, na_prob_thresh=thresh), oracle_v2(preds, refs, None, thresh))


def test_repeated_scoring_is_stable_with_the_cache():
    preds, refs = _random_case(random.Random(7), 300, v2=False)
    first = squad_v1(preds, refs)
    assert squad_v1(preds, refs) == first
    assert_identical(first, oracle_v1(preds, refs))
