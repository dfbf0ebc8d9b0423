"""QuestionAnswerer: the removed pipeline's call, clean answers for every tokenizer family, user errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tokenizer_families import FAMILIES, tiny_model  # noqa: E402

from qa.errors import ConfigError, DataError  # noqa: E402
from qa.predict import QuestionAnswerer  # noqa: E402

# Runs of spaces, tabs, newlines and a no-break space: where untrimmed offsets leak whitespace.
CONTEXTS = [
    "The old  mill\tstands beside the river in Alder.\n\nIt was built in 1820 by Mara\u00a0Quill (a carpenter).",
    "  Trains reach Alder twice a day from Brenn;\tthe trip takes forty minutes.  \n",
    "In 1911 a flood broke the dam ;  the village rebuilt it within two years .\n Quill's daughter kept the accounts.",
]
QUESTIONS = ["Who built the mill?", "How long is the trip?", "What broke the dam?"]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def answerer(family: str) -> QuestionAnswerer:
    tokenizer = FAMILIES[family]()
    return QuestionAnswerer(tiny_model(family, tokenizer), tokenizer, device="cpu")


def _same(a: dict, b: dict) -> bool:
    """Same answer; scores equal up to float noise (other batches pad windows to other lengths)."""
    return (a["answer"], a["start"], a["end"]) == (b["answer"], b["start"], b["end"]) and \
        a["score"] == pytest.approx(b["score"], rel=1e-5)


def _untrimmed_offsets(qa: QuestionAnswerer, context: str) -> int:
    enc = qa.tokenizer("q", context, return_offsets_mapping=True)
    return sum(context[a:b] != context[a:b].strip() for (a, b), s in zip(enc["offset_mapping"], enc.sequence_ids(),
                                                                       strict=True) if s == 1)


@pytest.mark.parametrize("v2", [False, True])
def test_answers_are_trimmed_and_point_into_the_context(answerer: QuestionAnswerer, v2: bool) -> None:
    # Short windows with overlap: many windows per context, many candidate spans per question.
    results = answerer(question=QUESTIONS, context=CONTEXTS, top_k=20, max_seq_len=32, doc_stride=8,
                       max_answer_len=8, handle_impossible_answer=v2, null_score_diff_threshold=0.5)
    n_answers = 0
    for context, answers in zip(CONTEXTS, results, strict=True):
        assert 1 <= len(answers) <= 20
        assert len({(a["start"], a["end"]) for a in answers}) == len(answers)  # one entry per span
        for a in answers:
            assert context[a["start"]:a["end"]] == a["answer"] == a["answer"].strip(), a
            assert 0.0 < a["score"] <= 1.0
            assert a["answer"] or (v2 and (a["start"], a["end"]) == (0, 0)), a
            n_answers += bool(a["answer"])
    assert n_answers > 30


def test_the_families_offsets_really_hold_whitespace(answerer: QuestionAnswerer, family: str) -> None:
    # What makes the test above meaningful: only WordPiece offsets come clean from the tokenizer.
    untrimmed = sum(_untrimmed_offsets(answerer, c) for c in CONTEXTS)
    assert untrimmed == 0 if family == "wordpiece" else untrimmed > 10


def test_pipeline_return_shapes(answerer: QuestionAnswerer) -> None:
    one = answerer(question=QUESTIONS[0], context=CONTEXTS[0])
    assert isinstance(one, dict) and set(one) == {"answer", "score", "start", "end"}
    top = answerer(question=QUESTIONS[0], context=CONTEXTS[0], top_k=3)
    assert isinstance(top, list) and len(top) == 3 and top[0] == one
    many = answerer(question=QUESTIONS, context=CONTEXTS)
    assert isinstance(many, list) and [type(x) for x in many] == [dict] * 3 and _same(many[0], one)
    # One question over several contexts, and several questions over one context.
    assert _same(answerer(question=QUESTIONS[0], context=CONTEXTS)[0], one)
    assert len(answerer(question=QUESTIONS, context=CONTEXTS[0])) == 3


def test_batch_size_does_not_change_answers(answerer: QuestionAnswerer) -> None:
    kwargs = dict(question=QUESTIONS * 3, context=CONTEXTS * 3, top_k=5, max_seq_len=32, doc_stride=8)
    by_one = answerer(batch_size=1, **kwargs)
    by_many = answerer(batch_size=16, **kwargs)
    for a, b in zip(by_one, by_many, strict=True):
        assert len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))


def test_null_answer_against_the_threshold(answerer: QuestionAnswerer) -> None:
    kwargs = dict(question=QUESTIONS, context=CONTEXTS, handle_impossible_answer=True)
    never = answerer(null_score_diff_threshold=1e9, **kwargs)
    always = answerer(null_score_diff_threshold=-1e9, **kwargs)
    assert all(a["answer"] for a in never)
    assert all((a["answer"], a["start"], a["end"]) == ("", 0, 0) for a in always)
    # v1 never answers "", and its answer is the v2 answer when the null can never win.
    assert [a["answer"] for a in answerer(question=QUESTIONS, context=CONTEXTS)] == [a["answer"] for a in never]


def test_bad_input_is_a_user_error(answerer: QuestionAnswerer) -> None:
    with pytest.raises(DataError, match="question 1"):
        answerer(question=["Who?", "  "], context=CONTEXTS[:2])
    with pytest.raises(DataError, match="context 0"):
        answerer(question="Who?", context="")
    with pytest.raises(DataError, match="2 questions but 3 contexts"):
        answerer(question=QUESTIONS[:2], context=CONTEXTS)
    with pytest.raises(ConfigError, match="top_k"):
        answerer(question="Who?", context=CONTEXTS[0], top_k=0)
    with pytest.raises(ConfigError, match="doc_stride"):
        answerer(question="Who?", context=CONTEXTS[0], max_seq_len=32, doc_stride=32)
    with pytest.raises(DataError, match="question has"):  # no room left for context in the window
        answerer(question="Who " * 40, context=CONTEXTS[0], max_seq_len=32, doc_stride=8)


def test_from_pretrained_round_trip_and_errors(tmp_path: Path) -> None:
    tokenizer = FAMILIES["bpe"]()
    model = tiny_model("bpe", tokenizer)
    model.save_pretrained(tmp_path / "final")
    tokenizer.save_pretrained(tmp_path / "final")
    qa = QuestionAnswerer.from_pretrained(tmp_path / "final", device="cpu")
    direct = QuestionAnswerer(model, tokenizer, device="cpu")
    assert qa(question=QUESTIONS[0], context=CONTEXTS[0], top_k=3) == \
        direct(question=QUESTIONS[0], context=CONTEXTS[0], top_k=3)
    with pytest.raises(ConfigError, match="no such directory"):
        QuestionAnswerer.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        QuestionAnswerer.from_pretrained(tmp_path / "empty")
    with pytest.raises(ConfigError, match="dtype"):
        QuestionAnswerer.from_pretrained(tmp_path / "final", dtype="float8")
