"""The real train.py under `accelerate launch`: 2 CPU processes, DeepSpeed ZeRO-2/3 over gloo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures import DEMO_DATA, launch, make_tiny_model, subset_squad, write_squad
from qa.distributed.precision import machine_precision

pytestmark = pytest.mark.slow

COMMON = ["--max_seq_length", "128", "--doc_stride", "32", "--per_device_eval_batch_size", "8",
          "--report_to", "none", "--mixed_precision", "no", "--dataloader_num_workers", "0", "--logging_steps", "1"]

# Eight questions on one short paragraph: 8 windows, one optimizer step of 2 ranks x 4, so every step sees the same
# data and the loss of step 6 is comparable with that of step 1 (across different batches it is not: length-grouped
# batches of longer windows have a higher loss from the start).
ONE_BATCH_CONTEXT = ("The old mill at Alder was built in 1821 by Mara Quill. It ground barley for the valley until "
                     "a flood in 1907 broke its wheel. The town bought it in 1950 and made it a museum of bread.")
ONE_BATCH_QAS = [(f"q{i}", q, a) for i, (q, a) in enumerate([
    ("When was the mill built?", "1821"), ("Who built the mill?", "Mara Quill"),
    ("What did the mill grind?", "barley"), ("What broke the wheel?", "a flood"),
    ("When did the flood come?", "1907"), ("Who bought the mill?", "The town"),
    ("When was it bought?", "1950"), ("What is the mill now?", "a museum of bread")])]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("e2e")
    return {
        "root": root,
        "model": make_tiny_model(root / "tiny"),
        "model_nodrop": make_tiny_model(root / "tiny_nodrop", dropout=0.0),
        "distil": make_tiny_model(root / "tiny_distil", arch="distilbert"),
        "train": subset_squad(DEMO_DATA / "train.json", root / "train.json", 6),
        "one_batch": write_squad(root / "one_batch.json", [(ONE_BATCH_CONTEXT, ONE_BATCH_QAS)]),
        "dev": subset_squad(DEMO_DATA / "dev.json", root / "dev.json", 2),
        "train_v2": subset_squad(DEMO_DATA / "train_v2.json", root / "train_v2.json", 6),
        "dev_v2": subset_squad(DEMO_DATA / "dev_v2.json", root / "dev_v2.json", 2),
    }


def _metrics(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _assert_exported_model_answers(final: Path) -> None:
    """The export is a plain HF model + tokenizer (transformers 5 removed the question-answering pipeline,
    so this loads it the way that pipeline did) and its logits match the run's own predictions path."""
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForQuestionAnswering.from_pretrained(final).eval()
    enc = tok("Where is the mill?", "The old mill stands beside the river in Alder.", return_tensors="pt")
    with torch.no_grad():
        out = model(**enc)
    assert out.start_logits.shape == enc["input_ids"].shape and torch.isfinite(out.start_logits).all()


def _train_losses(out: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train/loss"]) for r in _metrics(out) if "train/loss" in r]


@pytest.mark.parametrize("stage, arch, precision", [("zero2", "model", "bf16"), ("zero3", "distil", "no")])
def test_zero_runs_train_evaluate_and_export(work: dict[str, Path], stage: str, arch: str, precision: str) -> None:
    """ZeRO-2 runs in bf16 whatever the CPU (on one without a bf16 unit: slow, with one warning line)."""
    out = work["root"] / f"out_{stage}"
    train = work["one_batch" if stage == "zero2" else "train"]
    run = launch(["--model_name_or_path", str(work[arch]), "--train_file", str(train),
                  "--validation_file", str(work["dev"]), "--output_dir", str(out), "--deepspeed",
                  f"configs/deepspeed/{stage}.json", "--per_device_train_batch_size", "4", "--max_train_steps", "6",
                  "--learning_rate", "1e-3", "--checkpointing_steps", "2", "--save_total_limit", "2",
                  "--export_every_checkpoint", "true", *COMMON, "--mixed_precision", precision], tmp=work["root"])
    # the newest two checkpoints are kept, each complete and with an exported model beside the state
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_0000004", "step_0000006"]
    for name in ckpts:
        assert (out / "checkpoints" / name / "COMPLETE").is_file()
        _assert_exported_model_answers(out / "checkpoints" / name / "model")
    results = json.loads((out / "eval_results.json").read_text())
    assert set(results) >= {"exact_match", "f1"}
    preds = json.loads((out / "predictions.json").read_text())
    dev_ids = {q["id"] for a in json.loads(work["dev"].read_text())["data"] for p in a["paragraphs"] for q in p["qas"]}
    assert set(preds) == dev_ids  # every question answered exactly once
    _assert_exported_model_answers(out / "final")
    losses = _train_losses(out)
    assert [s for s, _ in losses] == list(range(1, 7))
    if stage == "zero2":  # the same 8 windows in every step: it learns, in bf16 too
        assert losses[-1][1] < losses[0][1] - 0.1 and max(v for _, v in losses[3:]) < losses[0][1], losses
    # The start-up line says what it chose and why, and how many threads (base_env's OMP_NUM_THREADS=1 is the
    # user's); bf16 on a CPU without a bf16 unit warns once (rank 0), the same line the dry run shows.
    name = {"bf16": "bf16 mixed precision (mixed_precision bf16", "no": "fp32 (mixed_precision no"}[precision]
    assert run.stdout.count(f"precision: {name}") == 1, run.stdout[-3000:]
    assert "1 CPU thread per rank (OMP_NUM_THREADS=1 from the user)" in run.stdout
    logs = run.stdout + run.stderr
    native = machine_precision("auto", cuda=False).precision == "bf16"
    assert logs.count("torch emulates bf16 matmuls") == (precision == "bf16" and not native)


def test_world_size_and_accumulation_equivalence(work: dict[str, Path]) -> None:
    """2 ranks x 2, 1 rank x 4 and 1 rank x 2 x accumulation 2 see the same data per step: same losses."""
    runs = {"2x2": (2, 2, 1), "1x4": (1, 4, 1), "1x2x2": (1, 2, 2)}
    losses = {}
    for name, (nproc, micro, accum) in runs.items():
        out = work["root"] / f"equiv_{name}"
        launch(["--model_name_or_path", str(work["model_nodrop"]), "--train_file", str(work["train"]),
                "--do_eval", "false", "--output_dir", str(out), "--deepspeed", "configs/deepspeed/zero2.json",
                "--per_device_train_batch_size", str(micro), "--gradient_accumulation_steps", str(accum),
                "--max_train_steps", "5", "--learning_rate", "5e-3", "--group_by_length", "true", *COMMON],
               tmp=work["root"], nproc=nproc)
        losses[name] = _train_losses(out)
    ref = losses["1x4"]
    assert len(ref) == 5 and ref[-1][1] != ref[0][1]
    for name in ("2x2", "1x2x2"):
        for (s1, l1), (s2, l2) in zip(losses[name], ref, strict=True):
            assert s1 == s2
            assert l1 == pytest.approx(l2, rel=1e-5, abs=1e-6), f"{name} step {s1}: {l1} != {l2}"


def test_v2_run_writes_every_output_and_redecode_reproduces_it(work: dict[str, Path]) -> None:
    import subprocess
    import sys

    out = work["root"] / "out_v2"
    launch(["--model_name_or_path", str(work["model"]), "--train_file", str(work["train_v2"]),
            "--validation_file", str(work["dev_v2"]), "--version_2_with_negative", "true", "--save_logits", "true",
            "--output_dir", str(out), "--deepspeed", "configs/deepspeed/zero2.json",
            "--per_device_train_batch_size", "4", "--max_train_steps", "4", "--learning_rate", "1e-3", *COMMON],
           tmp=work["root"])
    for name in ("eval_results.json", "predictions.json", "nbest_predictions.json", "null_odds.json",
                 "eval_logits.npz"):
        assert (out / name).is_file(), name
    results = json.loads((out / "eval_results.json").read_text())
    assert {"HasAns_exact", "NoAns_exact", "best_f1", "best_f1_thresh"} <= set(results)
    proc = subprocess.run([sys.executable, "-m", "qa.eval", "--output_dir", str(out)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == results
    # Eval-only: the exported checkpoint through the same distributed path gives the same scores.
    out2 = work["root"] / "out_v2_eval_only"
    launch(["--model_name_or_path", str(out / "final"), "--do_train", "false", "--validation_file",
            str(work["dev_v2"]), "--version_2_with_negative", "true", "--output_dir", str(out2),
            "--deepspeed", "configs/deepspeed/zero2.json", *COMMON], tmp=work["root"])
    again = json.loads((out2 / "eval_results.json").read_text())
    assert again["exact"] == pytest.approx(results["exact"]) and again["f1"] == pytest.approx(results["f1"], abs=1e-6)
