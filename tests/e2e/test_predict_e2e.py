"""Agreement: evaluation's predictions.json, QuestionAnswerer, ``python -m qa.predict --input`` and
``train.py --do_predict`` (at the end of training and on the exported model) give the same answers.

One small run: a tiny model trained a few steps on demo data by 2 ranks under ZeRO-2, evaluated on the
demo dev set and predicting on it in the same run; then the exported model through the API, the CLI and an
eval-free ``--do_predict`` run on the same questions without answers. Same max_seq_length / doc_stride /
n_best_size / max_answer_length everywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import DEMO_DATA, REPO, base_env, launch, make_tiny_model, subset_squad
from qa.predict import QuestionAnswerer

pytestmark = pytest.mark.slow

MAX_LEN, STRIDE, N_BEST, MAX_ANSWER = 128, 32, 20, 30
COMMON = ["--max_seq_length", str(MAX_LEN), "--doc_stride", str(STRIDE), "--n_best_size", str(N_BEST),
          "--max_answer_length", str(MAX_ANSWER), "--per_device_eval_batch_size", "8", "--report_to", "none",
          "--mixed_precision", "no", "--dataloader_num_workers", "0", "--deepspeed", "configs/deepspeed/zero2.json"]


def _agree(name: str, got: dict[str, str], want: dict[str, str]) -> None:
    same = sum(got.get(k) == v for k, v in want.items())
    print(f"agreement {name}: {same}/{len(want)} answers identical to predictions.json")
    assert list(got) == list(want)
    assert got == want


def test_every_way_of_answering_agrees_with_evaluation(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "tiny")
    train = subset_squad(DEMO_DATA / "train.json", tmp_path / "train.json", 6)
    dev = DEMO_DATA / "dev.json"
    dev_obj = json.loads(dev.read_text())
    rows = [{"id": q["id"], "question": q["question"], "context": p["context"]}
            for a in dev_obj["data"] for p in a["paragraphs"] for q in p["qas"]]
    unlabeled = tmp_path / "dev_questions.jsonl"
    unlabeled.write_text("".join(json.dumps(r) + "\n" for r in rows))

    out = tmp_path / "run"
    launch(["--model_name_or_path", str(model), "--train_file", str(train), "--validation_file", str(dev),
            "--do_predict", "--test_file", str(dev), "--output_dir", str(out), "--per_device_train_batch_size", "4",
            "--max_train_steps", "4", "--learning_rate", "1e-3", "--logging_steps", "1", *COMMON], tmp=tmp_path)
    want = json.loads((out / "predictions.json").read_text())
    assert len(want) == len(rows) and all(v == v.strip() for v in want.values())
    assert sum(bool(v) for v in want.values()) == len(want)  # v1: every question answered

    # 1. train.py --do_predict at the end of training, on labeled data: same answers, scored the same.
    _agree("train.py --do_predict (end of training)", json.loads((out / "test_predictions.json").read_text()), want)
    assert json.loads((out / "test_nbest_predictions.json").read_text()).keys() == want.keys()
    scores = json.loads((out / "test_eval_results.json").read_text())
    assert scores == json.loads((out / "eval_results.json").read_text())
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("test/f1") == pytest.approx(scores["f1"]) and "test/exact_match" in r for r in logged)

    # 2. The Python API on the exported model.
    qa = QuestionAnswerer.from_pretrained(out / "final", device="cpu")
    decoded = qa.predict([r["id"] for r in rows], [r["question"] for r in rows], [r["context"] for r in rows],
                         max_seq_len=MAX_LEN, doc_stride=STRIDE, n_best_size=N_BEST, max_answer_len=MAX_ANSWER)
    _agree("QuestionAnswerer", decoded.predictions, want)
    one = qa(question=rows[0]["question"], context=rows[0]["context"], max_seq_len=MAX_LEN, doc_stride=STRIDE)
    assert one["answer"] == want[rows[0]["id"]] == rows[0]["context"][one["start"]:one["end"]]

    # 3. The CLI on the questions without answers.
    cli_out = tmp_path / "cli" / "predictions.json"
    env = {**base_env(tmp_path), "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "qa.predict", "--model_name_or_path", str(out / "final"),
                           "--input", str(unlabeled), "--output", str(cli_out), "--device", "cpu",
                           "--max_seq_length", str(MAX_LEN), "--doc_stride", str(STRIDE), "--n_best_size",
                           str(N_BEST), "--max_answer_length", str(MAX_ANSWER)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _agree("python -m qa.predict --input", json.loads(cli_out.read_text()), want)
    assert (cli_out.parent / "nbest_predictions.json").is_file()

    # 4. train.py --do_predict alone on the exported model, questions without answers: predictions only.
    out2 = tmp_path / "predict_only"
    launch(["--model_name_or_path", str(out / "final"), "--do_train", "false", "--do_eval", "false",
            "--do_predict", "--test_file", str(unlabeled), "--output_dir", str(out2), *COMMON], tmp=tmp_path)
    _agree("train.py --do_train false --do_predict (unlabeled)",
           json.loads((out2 / "test_predictions.json").read_text()), want)
    assert not (out2 / "test_eval_results.json").exists() and not (out2 / "predictions.json").exists()
    logged = [json.loads(x) for x in (out2 / "metrics.jsonl").read_text().splitlines()]
    assert not any("test/f1" in r for r in logged) and any("test/time_total_s" in r for r in logged)
