"""Prediction inputs: examples without answers load (answers None) where asked, and only there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qa.data.formats import load_examples, read_squad_file
from qa.errors import DataError

CTX = "The lighthouse at Kestrel Point was lit in 1871. Its lamp burned whale oil until 1902."


def _files(tmp_path: Path) -> dict[str, Path]:
    nested = tmp_path / "n.json"
    nested.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": CTX, "qas": [
        {"id": "a", "question": "When was it lit?"},
        {"id": "b", "question": "Until when?", "answers": [{"text": "1902", "answer_start": CTX.index("1902")}]},
    ]}]}]}))
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text(json.dumps({"id": "c", "question": "What burned?", "context": CTX}) + "\n")
    return {"nested": nested, "jsonl": jsonl}


def test_answers_are_optional_only_for_prediction(tmp_path: Path) -> None:
    files = _files(tmp_path)
    records = read_squad_file(files["nested"], require_answers=False)
    assert [(r["id"], r["answers"]) for r in records] == [
        ("a", None), ("b", {"text": ["1902"], "answer_start": [CTX.index("1902")]})]
    assert read_squad_file(files["jsonl"], require_answers=False)[0]["answers"] is None
    for path in files.values():
        with pytest.raises(DataError, match="missing field 'answers'"):
            read_squad_file(path)


def test_unlabeled_examples_load_as_a_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    files = _files(tmp_path)
    ds = load_examples(dataset_name=None, dataset_config_name=None, data_file=str(files["nested"]), split="test",
                       require_answers=False)
    assert ds["id"] == ["a", "b"] and ds["answers"][0] is None and ds["answers"][1]["text"] == ["1902"]
    one = load_examples(dataset_name=None, dataset_config_name=None, data_file=str(files["jsonl"]), split="test",
                        require_answers=False, max_samples=1)
    assert one["answers"] == [None]
    # The same file for evaluation still needs answers (a cached prediction load must not leak into it).
    with pytest.raises(DataError, match="'a': missing field 'answers'"):
        load_examples(dataset_name=None, dataset_config_name=None, data_file=str(files["nested"]),
                      split="validation")


def test_unreadable_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_squad_file(tmp_path / "missing.json")
    (tmp_path / "latin1.json").write_bytes('[{"id": "é"}]'.encode("latin-1"))
    with pytest.raises(DataError, match="latin1.json: cannot read"):
        read_squad_file(tmp_path / "latin1.json")
