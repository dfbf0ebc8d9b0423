"""Reading SQuAD-format files and building sliding-window features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures import DEMO_DATA, SHARED, minilm_dir, write_squad
from qa.data.features import (
    build_eval_features,
    build_train_features,
    prepare_eval_features,
    prepare_train_features,
)
from qa.data.formats import load_examples, read_squad_file
from qa.errors import DataError


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


CTX = "The lighthouse at Kestrel Point was lit in 1871. Its lamp burned whale oil until 1902."


def _columns(records: list[dict]) -> dict[str, list]:
    return {k: [r[k] for r in records] for k in records[0]}


def test_reads_nested_flat_and_jsonl(tmp_path: Path) -> None:
    nested = write_squad(tmp_path / "n.json", [(CTX, [("a", "When was it lit?", "1871")])])
    flat = tmp_path / "f.json"
    row = {"id": "a", "title": "t", "context": CTX, "question": "When was it lit?",
           "answers": {"text": ["1871"], "answer_start": [CTX.index("1871")]}}
    flat.write_text(json.dumps([row]))
    jsonl = tmp_path / "f.jsonl"
    jsonl.write_text(json.dumps(row) + "\n" + json.dumps({**row, "id": "b"}) + "\n")
    for path, n in ((nested, 1), (flat, 1), (jsonl, 2)):
        recs = read_squad_file(path)
        assert len(recs) == n
        assert recs[0]["answers"] == {"text": ["1871"], "answer_start": [CTX.index("1871")]}


@pytest.mark.parametrize("mutate, message", [
    (lambda q, p: q.update(id=p["qas"][0]["id"]), "duplicate example id 'q0'"),
    (lambda q, p: p.update(context="   "), "empty context"),
    (lambda q, p: q.pop("question"), "'question'"),
    (lambda q, p: q.pop("answers"), "'answers'"),
    (lambda q, p: q.pop("id"), "without an 'id'"),
])
def test_bad_rows_name_file_and_id(tmp_path: Path, mutate, message: str) -> None:
    path = write_squad(tmp_path / "bad.json", [(CTX, [("q0", "When was it lit?", "1871"),
                                                      ("q1", "Until when whale oil?", "1902")])])
    obj = json.loads(path.read_text())
    para = obj["data"][0]["paragraphs"][0]
    mutate(para["qas"][1], para)
    path.write_text(json.dumps(obj))
    with pytest.raises(DataError) as e:
        read_squad_file(path)
    assert message in str(e.value) and "bad.json" in str(e.value)


def test_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"data": [\n  {"title": "x",\n}')
    with pytest.raises(DataError, match=r"broken.json: invalid JSON at line 3"):
        read_squad_file(path)
    path = tmp_path / "broken.jsonl"
    row = {"id": "a", "context": CTX, "question": "q?", "answers": {"text": ["1871"], "answer_start": [43]}}
    path.write_text(json.dumps(row) + '\n{not json}\n')
    with pytest.raises(DataError, match=r"broken.jsonl:2: invalid JSON"):
        read_squad_file(path)


def test_misaligned_answer_is_an_error_or_a_counted_skip(tmp_path: Path, caplog) -> None:
    path = write_squad(tmp_path / "m.json", [(CTX, [("good", "When was it lit?", "1871"),
                                                    ("bad", "Until when?", "1902")])])
    obj = json.loads(path.read_text())
    obj["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] = 3
    path.write_text(json.dumps(obj))
    kw = dict(dataset_name=None, dataset_config_name=None, data_file=str(path), split="train")
    with pytest.raises(DataError, match=r"m.json: example 'bad': answer_start 3 does not point at answer '1902'"):
        load_examples(**kw)
    ds = load_examples(**kw, skip_misaligned=True)
    assert ds["id"] == ["good"]
    assert "skipped 1 training examples" in caplog.text
    # evaluation scores answer texts only: kept
    assert len(load_examples(**{**kw, "split": "validation"})) == 2


def test_v1_data_without_answers_is_rejected_unless_v2(tmp_path: Path) -> None:
    path = write_squad(tmp_path / "v2.json", [(CTX, [("a", "When was it lit?", "1871"),
                                                     ("u", "Who painted it?", None)])], version="v2.0")
    kw = dict(dataset_name=None, dataset_config_name=None, data_file=str(path), split="train")
    with pytest.raises(DataError, match="version_2_with_negative"):
        load_examples(**kw)
    assert len(load_examples(**kw, version_2_with_negative=True)) == 2


def test_question_too_long_is_named(tok) -> None:
    batch = _columns([{"id": "long-q", "question": "why " * 200, "context": CTX,
                       "answers": {"text": ["1871"], "answer_start": [CTX.index("1871")]}}])
    with pytest.raises(DataError, match="'long-q': question has"):
        prepare_train_features(batch, tokenizer=tok, max_seq_length=128, doc_stride=32)


def test_labels_map_back_to_gold_text_and_cls_elsewhere(tok) -> None:
    """Every window that holds the answer labels exactly its tokens; others point at CLS."""
    recs = read_squad_file(DEMO_DATA / "train.json")
    batch = _columns(recs)
    out = prepare_train_features(batch, tokenizer=tok, max_seq_length=128, doc_stride=32, keep_offsets=True)
    assert len(out["input_ids"]) > len(recs)  # long contexts made several windows
    misaligned = in_window = 0
    for i, (s, e) in enumerate(zip(out["start_positions"], out["end_positions"], strict=True)):
        r = recs[out["example_index"][i]]
        text, start = r["answers"]["text"][0], r["answers"]["answer_start"][0]
        offs = out["offset_mapping"][i]
        seq = out["token_type_ids"][i] if "token_type_ids" in out else None
        ctx_positions = [k for k in range(len(offs)) if seq is None or seq[k] == 1]
        window = (offs[ctx_positions[0]][0], offs[ctx_positions[-2]][1])  # last context token precedes [SEP]
        holds = window[0] <= start and start + len(text) <= window[1]
        if not holds:
            assert s == e == 0, f"window without the answer must point at CLS ({r['id']})"
            continue
        in_window += 1
        assert 0 < s <= e
        span = r["context"][offs[s][0]: offs[e][1]]
        misaligned += span != text
    print(f"\n{in_window} windows hold their answer; {misaligned} labels do not decode to the exact gold text")
    assert in_window >= len(recs)
    assert misaligned == 0


def test_eval_features_keep_ids_and_mask_non_context(tok) -> None:
    batch = _columns(read_squad_file(DEMO_DATA / "dev.json")[:20])
    out = prepare_eval_features(batch, list(range(100, 120)), tokenizer=tok, max_seq_length=128, doc_stride=32)
    assert len(out["input_ids"]) > 20 and set(out["example_index"]) == set(range(100, 120))
    for ids, offs, types in zip(out["input_ids"], out["offset_mapping"], out["token_type_ids"], strict=True):
        assert len(ids) <= 128  # no padding to max: the collator pads
        assert offs[0] == [-1, -1] and offs[-1] == [-1, -1]  # CLS and the final SEP
        for o, t in zip(offs, types, strict=True):
            if t == 0:
                assert o == [-1, -1]  # question tokens are never answer candidates
        assert sum(o != [-1, -1] for o in offs) == sum(types) - 1  # every context token kept


def test_max_samples_cuts_examples_not_features_and_features_are_cached(tok) -> None:
    kw = dict(dataset_name=None, dataset_config_name=None, data_file=str(DEMO_DATA / "train.json"), split="train")
    ex = load_examples(**kw, max_samples=10)
    assert len(ex) == 10
    feats = build_train_features(ex, tok, max_seq_length=128, doc_stride=32)
    assert len(feats) >= 10  # windows of 10 examples, not 10 windows
    again = build_train_features(load_examples(**kw, max_samples=10), tok, max_seq_length=128, doc_stride=32)
    assert again._fingerprint == feats._fingerprint  # same inputs -> served from the datasets cache
    assert again.cache_files and again.cache_files[0]["filename"] == feats.cache_files[0]["filename"]
    other = build_train_features(ex, tok, max_seq_length=128, doc_stride=48)
    assert other._fingerprint != feats._fingerprint


def test_squad_dev_set_gives_10822_features() -> None:
    dev = SHARED / "squad-v1.1" / "dev-v1.1.json"
    tok_dir = SHARED / "tokenizers" / "bert-base-cased"
    if not dev.is_file() or not tok_dir.is_dir():
        pytest.skip(f"SQuAD dev set or bert-base-cased tokenizer not found under {SHARED}")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    ex = load_examples(dataset_name=None, dataset_config_name=None, data_file=str(dev), split="validation")
    assert len(ex) == 10570
    feats = build_eval_features(ex, tok, max_seq_length=384, doc_stride=128)
    assert len(feats) == 10822


def test_eval_feature_offsets_of_built_windows_match_the_rows(tok) -> None:
    from datasets import Dataset

    from qa.eval.evaluator import EvalFeatures

    ex = Dataset.from_list(read_squad_file(DEMO_DATA / "dev.json")[:12])
    feats = build_eval_features(ex, tok, max_seq_length=64, doc_stride=16)
    packed = EvalFeatures.of_windows(feats, 64).offsets
    assert packed.shape == (len(feats), 64, 2) and packed.dtype.name == "int32"
    for i, row in enumerate(feats["offset_mapping"]):
        assert packed[i, : len(row)].tolist() == [list(o) for o in row]
        assert (packed[i, len(row):] == -1).all()  # padding positions are never candidates
