"""python -m qa.predict: one question to JSON lines, files of every layout to predictions + n-best,
user mistakes to one line and exit status 2 with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import REPO, make_tiny_model
from qa.eval.outputs import companion_paths
from qa.predict import QuestionAnswerer
from qa.predict.cli import main

CONTEXT = "The old mill stands beside the river in Alder.  It was built in 1820 by Mara Quill.\nToday it is a museum."
QAS = [("q1", "Where is the mill?", "beside the river"), ("q2", "Who built it?", "Mara Quill"),
       ("q3", "What is it today?", None)]
SETTINGS = ["--max_seq_length", "32", "--doc_stride", "8"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("predict_cli") / "final")


def _nested(path: Path, with_answers: bool) -> Path:
    qas = [{"id": i, "question": q, **({"answers": [{"text": a, "answer_start": CONTEXT.index(a)}] if a else []}
                                      if with_answers else {})} for i, q, a in QAS]
    if with_answers:  # a v1 file: every question answerable
        qas = [x for x in qas if x["answers"]]
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": CONTEXT, "qas": qas}]}]}))
    return path


def _jsonl(path: Path) -> Path:
    path.write_text("".join(json.dumps({"id": i, "question": q, "context": CONTEXT}) + "\n" for i, q, _ in QAS))
    return path


def test_one_question_prints_one_json_object_per_answer(model: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["--model_name_or_path", str(model), "--question", "Who built it?", "--context", CONTEXT,
               "--top_k", "3", "--device", "cpu", *SETTINGS])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    for line in lines:
        a = json.loads(line)
        assert list(a) == ["answer", "score", "start", "end"]
        assert CONTEXT[a["start"]:a["end"]] == a["answer"] == a["answer"].strip() != ""


@pytest.mark.parametrize("layout", ["nested_unlabeled", "nested_labeled", "jsonl"])
def test_file_gives_predictions_and_nbest_beside_them(model: Path, tmp_path: Path, layout: str) -> None:
    src = {"nested_unlabeled": lambda p: _nested(p, False), "nested_labeled": lambda p: _nested(p, True),
           "jsonl": _jsonl}[layout](tmp_path / ("in.jsonl" if layout == "jsonl" else "in.json"))
    out = tmp_path / "out" / "test_predictions.json"
    assert main(["--model_name_or_path", str(model), "--input", str(src), "--output", str(out), "--device", "cpu",
                 *SETTINGS]) == 0
    preds = json.loads(out.read_text())
    nbest = json.loads((tmp_path / "out" / "test_nbest_predictions.json").read_text())
    ids = [i for i, _, a in QAS if a or layout != "nested_labeled"]
    assert list(preds) == list(nbest) == ids
    qa = QuestionAnswerer.from_pretrained(model, device="cpu")
    expected = qa(question=[q for i, q, _ in QAS if i in ids], context=CONTEXT, max_seq_len=32, doc_stride=8)
    assert [preds[i] for i in ids] == [a["answer"] for a in expected]
    for i in ids:
        assert nbest[i][0]["text"] == preds[i] and preds[i] in CONTEXT and preds[i] == preds[i].strip()


def test_companion_names() -> None:
    assert [p.name for p in companion_paths("d/predictions.json")] == ["nbest_predictions.json", "null_odds.json"]
    assert [p.name for p in companion_paths("d/test_predictions.json")] == ["test_nbest_predictions.json",
                                                                             "test_null_odds.json"]
    assert [p.name for p in companion_paths("answers.json")] == ["answers_nbest.json", "answers_null_odds.json"]


def _fails(argv: list[str], capsys: pytest.CaptureFixture, *needles: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err


def test_user_mistakes_are_one_line_exit_2_nothing_written(model: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out" / "predictions.json"
    good = _jsonl(tmp_path / "good.jsonl")
    run = ["--model_name_or_path", str(model), "--output", str(out), "--device", "cpu"]
    _fails([*run, "--input", str(tmp_path / "nope.json")], capsys, "nope.json", "cannot read")
    _fails([*run, "--input", str(tmp_path)], capsys, "cannot read")
    (tmp_path / "bad.json").write_text('{"data": [')
    _fails([*run, "--input", str(tmp_path / "bad.json")], capsys, "bad.json", "invalid JSON")
    rows = [{"id": "a", "question": "Who?", "context": CONTEXT}, {"id": "b", "context": CONTEXT}]
    (tmp_path / "noq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _fails([*run, "--input", str(tmp_path / "noq.jsonl")], capsys, "noq.jsonl:2", "'b'", "question")
    (tmp_path / "noc.json").write_text(json.dumps([{"id": "c1", "question": "Who?"}]))
    _fails([*run, "--input", str(tmp_path / "noc.json")], capsys, "data[0]", "'c1'", "context")
    _fails(["--model_name_or_path", str(tmp_path / "no_model"), "--output", str(out), "--input", str(good)],
           capsys, "model_name_or_path", "no_model")
    assert not out.parent.exists()
    with pytest.raises(SystemExit) as e:  # usage mistakes: argparse's message and status 2
        main(["--model_name_or_path", str(model), "--input", str(good)])
    assert e.value.code == 2 and "--output" in capsys.readouterr().err


def test_module_entry_point_exits_2_on_a_missing_model(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "qa.predict", "--model_name_or_path", str(tmp_path / "gone"),
                           "--question", "Who?", "--context", CONTEXT], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == f"error: model_name_or_path: {tmp_path / 'gone'}: no such directory"
    assert proc.stdout == ""
