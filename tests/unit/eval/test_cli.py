"""qa.eval: decode_and_score, the files it writes, and ``python -m qa.eval`` reproducing them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from qa.eval.decode import pack_offsets
from qa.eval.evaluator import EvalExamples, EvalFeatures, decode_and_score
from qa.eval.outputs import load_eval_arrays, save_eval_arrays, write_eval_outputs

REPO = Path(__file__).resolve().parents[3]

CTX_A = "Denver Broncos won Super Bowl 50 in Santa Clara"
CTX_B = "The Amazon rainforest covers much of the Amazon basin"
CTX_C = "Oxygen is a chemical element with symbol O"


def spans(text: str) -> list[tuple[int, int]]:
    out, cursor = [], 0
    for w in text.split(" "):
        out.append((cursor, cursor + len(w)))
        cursor += len(w) + 1
    return out


def build(v2: bool):
    """Four examples (two windows for "a"); gold answers chosen so v1 and v2 scores are non-trivial."""
    a, b, c = spans(CTX_A), spans(CTX_B), spans(CTX_C)
    q = 3   # [CLS] q q
    rows = [[None] * q + a[:6] + [None], [None] * q + a[3:] + [None], [None] * q + b + [None],
            [None] * q + c + [None]]
    example_index = [0, 0, 1, 2]
    ids = ["a", "b", "c"]
    contexts = [CTX_A, CTX_B, CTX_C]
    answers = [["Denver Broncos", "Broncos"], ["Amazon basin"], ["symbol O"]]
    if v2:
        rows.append([None] * q + c + [None])
        example_index.append(3)
        ids.append("d")
        contexts.append(CTX_C)
        answers.append([])
    offsets = pack_offsets(rows)
    n, length = offsets.shape[:2]
    rng = np.random.default_rng(0)
    start = rng.uniform(-1, 0, (n, length + 2)).astype(np.float32)   # wider than offsets: padding
    end = rng.uniform(-1, 0, (n, length + 2)).astype(np.float32)
    start[0, q + 0], end[0, q + 1] = 5.0, 5.0        # a: "Denver Broncos" (window 1)
    start[1, q + 3], end[1, q + 4] = 3.0, 3.0        # a: weaker "Super Bowl" (window 2)
    start[2, q + 7], end[2, q + 8] = 4.0, 4.0        # b: "Amazon basin", score 8
    start[2, 0], end[2, 0] = 4.5, 4.5                # b: null 9 -> odds +1 (v2 says "" at threshold 0)
    start[3, q + 4], end[3, q + 5] = 2.0, 2.0        # c: "element with": wrong, no token shared with gold
    for f in (0, 1, 3):
        start[f, 0], end[f, 0] = -2.0, -2.0          # weak nulls elsewhere
    if v2:
        start[4, 0], end[4, 0] = 6.0, 6.0            # d: strong null, unanswerable
        start[4, q + 0], end[4, q + 0] = 1.0, 1.0
    examples = EvalExamples(ids=ids, contexts=contexts, answers=answers,
                            questions=[f"question {i}?" for i in ids])
    feats = EvalFeatures(example_index=np.array(example_index), offsets=offsets,
                         cls_index=np.zeros(len(example_index), dtype=np.int64))
    return examples, feats, start, end


SETTINGS = {"n_best_size": 5, "max_answer_length": 4, "null_score_diff_threshold": 0.0}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "qa.eval", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def saved_run(tmp_path: Path, v2: bool, **overrides) -> tuple[Path, object]:
    examples, feats, start, end = build(v2)
    settings = {**SETTINGS, "version_2_with_negative": v2, **overrides}
    outcome = decode_and_score(examples, feats, start, end, **settings)
    run_dir = tmp_path / "run"
    write_eval_outputs(run_dir, outcome, version_2_with_negative=v2)
    save_eval_arrays(run_dir, examples, feats, start, end)
    (run_dir / "run_config.yaml").write_text(yaml.safe_dump({**settings, "learning_rate": 3e-5}))
    return run_dir, outcome


def test_decode_and_score_v1_numbers():
    examples, feats, start, end = build(v2=False)
    out = decode_and_score(examples, feats, start, end, **SETTINGS, version_2_with_negative=False)
    assert out.decoded.predictions == {"a": "Denver Broncos", "b": "Amazon basin", "c": "element with"}
    assert out.metrics == {"exact_match": 100.0 * 2 / 3, "f1": 100.0 * 2 / 3}
    assert set(out.timings) == {"decode_s", "score_s"}


def test_decode_and_score_v2_uses_null_odds_as_na_probs():
    examples, feats, start, end = build(v2=True)
    out = decode_and_score(examples, feats, start, end, **SETTINGS, version_2_with_negative=True)
    assert out.decoded.predictions == {"a": "Denver Broncos", "b": "", "c": "element with", "d": ""}
    assert out.decoded.null_odds["b"] == pytest.approx(1.0)
    m = out.metrics
    assert (m["exact"], m["HasAns_exact"], m["NoAns_exact"], m["total"]) == (50.0, 100.0 / 3, 100.0, 4)
    # The official sweep scores the predictions as given (b is already ""), so the best it finds is
    # the current 2/4, first reached at the lowest odds (a's).
    assert m["best_exact"] == 50.0 and m["best_exact_thresh"] == out.decoded.null_odds["a"]
    assert out.decoded.null_odds["a"] == pytest.approx(-4.0 - 10.0)


@pytest.mark.parametrize("v2", [False, True])
def test_cli_reproduces_eval_results_exactly(tmp_path, v2):
    run_dir, outcome = saved_run(tmp_path, v2)
    res = run_cli("--output_dir", str(run_dir))
    assert res.returncode == 0, res.stderr
    assert res.stdout == (run_dir / "eval_results.json").read_text()
    assert json.loads(res.stdout) == outcome.metrics
    assert "decode" in res.stderr and "score" in res.stderr
    # --out: the same files, byte for byte.
    res = run_cli("--output_dir", str(run_dir), "--write", "--out", str(tmp_path / "again"))
    assert res.returncode == 0, res.stderr
    names = ["eval_results.json", "predictions.json", "nbest_predictions.json"]
    names += ["null_odds.json"] if v2 else []
    for name in names:
        assert (tmp_path / "again" / name).read_bytes() == (run_dir / name).read_bytes(), name
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == sorted(names)


def test_cli_threshold_changes_v2_results(tmp_path):
    run_dir, outcome = saved_run(tmp_path, v2=True)
    assert outcome.decoded.predictions["b"] == ""
    res = run_cli("--output_dir", str(run_dir), "--null_score_diff_threshold", "2.0", "--write")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    examples, feats, start, end = build(v2=True)
    expected = decode_and_score(examples, feats, start, end, **{**SETTINGS, "null_score_diff_threshold": 2.0},
                                version_2_with_negative=True)
    assert got == expected.metrics
    # b (odds +1) is now answered, and correctly; d (odds +10) still is not.
    assert json.loads((run_dir / "predictions.json").read_text())["b"] == "Amazon basin"
    assert (got["exact"], got["HasAns_exact"], got["NoAns_exact"]) == (75.0, 100.0 * 2 / 3, 100.0)
    assert got["exact"] > outcome.metrics["exact"]
    # Written back into the run dir: eval_results.json now holds the new numbers.
    assert json.loads((run_dir / "eval_results.json").read_text()) == got


def test_cli_settings_come_from_run_config_then_flags(tmp_path):
    run_dir, outcome = saved_run(tmp_path, v2=True, null_score_diff_threshold=2.0)
    # No flags: run_config.yaml says v2 with threshold 2.0.
    res = run_cli("--output_dir", str(run_dir))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == outcome.metrics and outcome.metrics["exact"] == 75.0
    # A flag wins over the config; scoring v2 data as v1 is refused with a reason.
    res = run_cli("--output_dir", str(run_dir), "--version_2_with_negative", "false")
    assert res.returncode == 2 and "no gold answer" in res.stderr

    run_dir, outcome = saved_run(tmp_path / "v1", v2=False)
    examples, feats, start, end = build(v2=False)
    res = run_cli("--output_dir", str(run_dir), "--max_answer_length", "1")
    assert res.returncode == 0, res.stderr
    short = decode_and_score(examples, feats, start, end, **{**SETTINGS, "max_answer_length": 1})
    assert json.loads(res.stdout) == short.metrics != outcome.metrics
    # Without a config the defaults apply (v1, n_best 20, max length 30).
    (run_dir / "run_config.yaml").unlink()
    res = run_cli("--output_dir", str(run_dir))
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == decode_and_score(examples, feats, start, end).metrics


def test_cli_reads_the_trainers_yaml_config(tmp_path):
    run_dir, outcome = saved_run(tmp_path, v2=True)
    (run_dir / "run_config.yaml").unlink()
    (run_dir / "run_config.yaml").write_text(
        "model_name_or_path: x\nversion_2_with_negative: true\nn_best_size: 5\nmax_answer_length: 4\n"
        "null_score_diff_threshold: 0.0\n")
    res = run_cli("--output_dir", str(run_dir))
    assert res.returncode == 0, res.stderr
    assert res.stdout == (run_dir / "eval_results.json").read_text()


def test_cli_missing_files_exit_2(tmp_path):
    res = run_cli("--output_dir", str(tmp_path / "nothing-here"))
    assert res.returncode == 2
    assert "eval_logits.npz" in res.stderr and "eval_examples.jsonl" in res.stderr
    run_dir, _ = saved_run(tmp_path, v2=False)
    (run_dir / "eval_features.npz").unlink()
    res = run_cli("--output_dir", str(run_dir))
    assert res.returncode == 2
    assert "eval_features.npz" in res.stderr and "eval_logits.npz" not in res.stderr
    assert res.stdout == ""


def test_save_load_roundtrip(tmp_path):
    examples, feats, start, end = build(v2=True)
    paths = save_eval_arrays(tmp_path, examples, feats, start.astype(np.float64), end)
    assert sorted(p.name for p in paths) == ["eval_examples.jsonl", "eval_features.npz", "eval_logits.npz"]
    ex2, feats2, start2, end2 = load_eval_arrays(tmp_path)
    assert ex2 == examples
    assert start2.dtype == np.float32 and np.array_equal(start2, start) and np.array_equal(end2, end)
    for name in ("example_index", "offsets", "cls_index"):
        assert np.array_equal(getattr(feats2, name), getattr(feats, name))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)   # no temp files
    no_q = EvalExamples(ids=examples.ids, contexts=examples.contexts, answers=examples.answers)
    save_eval_arrays(tmp_path, no_q, feats, start, end)
    assert load_eval_arrays(tmp_path)[0].questions is None


def test_write_eval_outputs_files(tmp_path):
    examples, feats, start, end = build(v2=False)
    outcome = decode_and_score(examples, feats, start, end, **SETTINGS, version_2_with_negative=False)
    paths = write_eval_outputs(tmp_path / "new" / "dir", outcome, version_2_with_negative=False,
                               prefix="step10")
    assert [p.name for p in paths] == ["step10_eval_results.json", "step10_predictions.json",
                                       "step10_nbest_predictions.json"]
    out = tmp_path / "new" / "dir"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    assert json.loads((out / "step10_predictions.json").read_text()) == outcome.decoded.predictions
    assert json.loads((out / "step10_nbest_predictions.json").read_text()) == outcome.decoded.nbest
    assert json.loads((out / "step10_eval_results.json").read_text()) == outcome.metrics


def test_cli_null_threshold_on_a_v1_run_is_refused(tmp_path):
    run_dir, _ = saved_run(tmp_path, v2=False)
    res = run_cli("--output_dir", str(run_dir), "--null_score_diff_threshold", "1.5")
    assert res.returncode == 2 and res.stdout == ""
    assert "--null_score_diff_threshold only applies to SQuAD v2 runs" in res.stderr
    assert "v1.1 evaluation (per" in res.stderr and "run_config.yaml" in res.stderr
