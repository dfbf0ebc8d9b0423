"""qa.metrics against a deliberately plain oracle that transcribes the official SQuAD scripts.

The oracle below follows ``evaluate-v1.1.py`` and ``evaluate-v2.0.py`` line by line (Counter, regex,
max over gold answers, running sums in dataset order), so any shortcut in the fast implementation
that changes a value, a type, or a summation order shows up as an inequality at full float precision.
"""

from __future__ import annotations

import collections
import random
import re
import string

import pytest

from qa.eval.squad_metrics import normalize_answer, squad_v1, squad_v2

# ---------------------------------------------------------------------------------------------------
# Oracle: the official scripts' algorithm, on {qid: [gold texts]} instead of the dataset JSON.
# ---------------------------------------------------------------------------------------------------


def oracle_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def oracle_v1(predictions, references):
    def f1_score(prediction, ground_truth):
        prediction_tokens = oracle_normalize(prediction).split()
        ground_truth_tokens = oracle_normalize(ground_truth).split()
        common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
        num_same = sum(common.values())
        if num_same == 0:
            return 0
        precision = 1.0 * num_same / len(prediction_tokens)
        recall = 1.0 * num_same / len(ground_truth_tokens)
        f1 = (2 * precision * recall) / (precision + recall)
        return f1

    def exact_match_score(prediction, ground_truth):
        return oracle_normalize(prediction) == oracle_normalize(ground_truth)

    def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
        scores_for_ground_truths = []
        for ground_truth in ground_truths:
            score = metric_fn(prediction, ground_truth)
            scores_for_ground_truths.append(score)
        return max(scores_for_ground_truths)

    f1 = exact_match = total = 0
    for qid, ground_truths in references.items():
        total += 1
        if qid not in predictions:
            continue
        prediction = predictions[qid]
        exact_match += metric_max_over_ground_truths(exact_match_score, prediction, ground_truths)
        f1 += metric_max_over_ground_truths(f1_score, prediction, ground_truths)
    exact_match = 100.0 * exact_match / total
    f1 = 100.0 * f1 / total
    return {"exact_match": exact_match, "f1": f1}


def oracle_v2(preds, references, na_probs=None, na_prob_thresh=1.0):
    def get_tokens(s):
        if not s:
            return []
        return oracle_normalize(s).split()

    def compute_exact(a_gold, a_pred):
        return int(oracle_normalize(a_gold) == oracle_normalize(a_pred))

    def compute_f1(a_gold, a_pred):
        gold_toks = get_tokens(a_gold)
        pred_toks = get_tokens(a_pred)
        common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
        num_same = sum(common.values())
        if len(gold_toks) == 0 or len(pred_toks) == 0:
            return int(gold_toks == pred_toks)
        if num_same == 0:
            return 0
        precision = 1.0 * num_same / len(pred_toks)
        recall = 1.0 * num_same / len(gold_toks)
        f1 = (2 * precision * recall) / (precision + recall)
        return f1

    def get_raw_scores():
        exact_scores = {}
        f1_scores = {}
        for qid, answers in references.items():
            gold_answers = [a for a in answers if oracle_normalize(a)]
            if not gold_answers:
                gold_answers = [""]
            if qid not in preds:
                continue
            a_pred = preds[qid]
            exact_scores[qid] = max(compute_exact(a, a_pred) for a in gold_answers)
            f1_scores[qid] = max(compute_f1(a, a_pred) for a in gold_answers)
        return exact_scores, f1_scores

    def apply_no_ans_threshold(scores, na_probs, qid_to_has_ans, na_prob_thresh):
        new_scores = {}
        for qid, s in scores.items():
            pred_na = na_probs[qid] > na_prob_thresh
            if pred_na:
                new_scores[qid] = float(not qid_to_has_ans[qid])
            else:
                new_scores[qid] = s
        return new_scores

    def make_eval_dict(exact_scores, f1_scores, qid_list=None):
        if not qid_list:
            total = len(exact_scores)
            return collections.OrderedDict([
                ("exact", 100.0 * sum(exact_scores.values()) / total),
                ("f1", 100.0 * sum(f1_scores.values()) / total),
                ("total", total),
            ])
        else:
            total = len(qid_list)
            return collections.OrderedDict([
                ("exact", 100.0 * sum(exact_scores[k] for k in qid_list) / total),
                ("f1", 100.0 * sum(f1_scores[k] for k in qid_list) / total),
                ("total", total),
            ])

    def merge_eval(main_eval, new_eval, prefix):
        for k in new_eval:
            main_eval[f"{prefix}_{k}"] = new_eval[k]

    def find_best_thresh(preds, scores, na_probs, qid_to_has_ans):
        num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
        cur_score = num_no_ans
        best_score = cur_score
        best_thresh = 0.0
        qid_list = sorted(na_probs, key=lambda k: na_probs[k])
        for qid in qid_list:
            if qid not in scores:
                continue
            if qid_to_has_ans[qid]:
                diff = scores[qid]
            else:
                if preds[qid]:
                    diff = -1
                else:
                    diff = 0
            cur_score += diff
            if cur_score > best_score:
                best_score = cur_score
                best_thresh = na_probs[qid]
        return 100.0 * best_score / len(scores), best_thresh

    def find_all_best_thresh(main_eval, preds, exact_raw, f1_raw, na_probs, qid_to_has_ans):
        best_exact, exact_thresh = find_best_thresh(preds, exact_raw, na_probs, qid_to_has_ans)
        best_f1, f1_thresh = find_best_thresh(preds, f1_raw, na_probs, qid_to_has_ans)
        main_eval["best_exact"] = best_exact
        main_eval["best_exact_thresh"] = exact_thresh
        main_eval["best_f1"] = best_f1
        main_eval["best_f1_thresh"] = f1_thresh

    has_na_file = na_probs is not None
    if not has_na_file:
        na_probs = {k: 0.0 for k in preds}
    qid_to_has_ans = {qid: bool(answers) for qid, answers in references.items()}
    has_ans_qids = [k for k, v in qid_to_has_ans.items() if v]
    no_ans_qids = [k for k, v in qid_to_has_ans.items() if not v]
    exact_raw, f1_raw = get_raw_scores()
    exact_thresh = apply_no_ans_threshold(exact_raw, na_probs, qid_to_has_ans, na_prob_thresh)
    f1_thresh = apply_no_ans_threshold(f1_raw, na_probs, qid_to_has_ans, na_prob_thresh)
    out_eval = make_eval_dict(exact_thresh, f1_thresh)
    if has_ans_qids:
        has_ans_eval = make_eval_dict(exact_thresh, f1_thresh, qid_list=has_ans_qids)
        merge_eval(out_eval, has_ans_eval, "HasAns")
    if no_ans_qids:
        no_ans_eval = make_eval_dict(exact_thresh, f1_thresh, qid_list=no_ans_qids)
        merge_eval(out_eval, no_ans_eval, "NoAns")
    if has_na_file:
        find_all_best_thresh(out_eval, preds, exact_raw, f1_raw, na_probs, qid_to_has_ans)
    return dict(out_eval)


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
