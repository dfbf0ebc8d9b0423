"""Everything knowable from config, data, tokenizer and model config is refused before the first write: one line,
exit 2, no output_dir, no lock, no run_config.yaml, no W&B run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures import REPO, base_env, launch, make_tiny_model, write_squad

pytestmark = pytest.mark.slow

COMMON = ["--max_seq_length", "64", "--doc_stride", "16", "--mixed_precision", "no", "--dataloader_num_workers",
          "0", "--max_train_steps", "2", "--per_device_train_batch_size", "2", "--deepspeed", "null",
          "--report_to", "wandb"]
CONTEXT = "The quick brown fox jumps over the lazy dog near the river bank in the morning."


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("early")
    tiny = make_tiny_model(root / "tiny")
    no_tok = root / "no_tokenizer"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny / f, no_tok / f)
    qas = [(f"q{i}", "What jumps over the dog?", "fox") for i in range(4)]
    good = write_squad(root / "good.json", [(CONTEXT, qas)])
    long_q = write_squad(root / "long_q.json", [(CONTEXT, [("long1", "why " * 60 + "?", "fox")])])
    return {"root": root, "tiny": tiny, "no_tok": no_tok, "good": good, "long_q": long_q}


CASES = {
    "no_tokenizer_files": (["--model_name_or_path", "{no_tok}"], "config error: model_name_or_path: {no_tok} has "
                           "no tokenizer files"),
    "missing_model": (["--model_name_or_path", "{root}/nope"], "config error: model_name_or_path: no such "
                      "directory: {root}/nope"),
    "hub_id_offline": (["--model_name_or_path", "distilbert-base-cased"], "config error: model_name_or_path: "
                       "'distilbert-base-cased' is not a local directory and could not be fetched"),
    "question_longer_than_window": (["--train_file", "{long_q}"], "data error: {long_q}: example 'long1': question "
                                    "has"),
    "data_cannot_fill_a_step": (["--per_device_train_batch_size", "64"], "config error: per_device_train_batch_size: "
                                "4 training features cannot fill one optimizer step"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_before_anything_is_written(work: dict[str, Path], case: str, tmp_path: Path,
                                            train_main: Callable[[list[str]], int], capfd: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process (a refusal comes before anything a second process would change); the Hub id in its own
    process, where HF_HOME can point at an empty cache (the Hub library reads it once, at import)."""
    out = tmp_path / "out"
    extra, expected = CASES[case]
    fill = {k: str(v) for k, v in work.items()}
    args = ["--model_name_or_path", str(work["tiny"]), "--train_file", str(work["good"]), "--validation_file",
            str(work["good"]), "--output_dir", str(out), *COMMON, *[a.format(**fill) for a in extra]]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    if case == "hub_id_offline":
        env = {**base_env(tmp_path), "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_CACHE": str(tmp_path / "hf_home")}
        proc = subprocess.run([sys.executable, str(REPO / "train.py"), *args], env=env, capture_output=True,
                              text=True, timeout=300)
        rc, stderr = proc.returncode, proc.stderr
    else:
        rc, stderr = train_main(args), capfd.readouterr().err
    assert rc == 2, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if " error: " in ln]
    assert len(lines) == 1 and lines[0].startswith(expected.format(**fill)), stderr[-3000:]
    assert "Traceback" not in stderr
    assert not out.exists()  # no lock, no run_config.yaml, no metrics
    assert not (tmp_path / "wandb").exists()  # the tracker never started


def test_plain_accelerate_launch_refusal_is_one_line_for_two_ranks(work: dict[str, Path]) -> None:
    out = work["root"] / "out_launch"
    proc = launch(["--model_name_or_path", str(work["tiny"]), "--train_file", str(work["good"]), "--output_dir",
                   str(out), "--pad_to_max_length", "--push_to_hub", "--hub_model_id", "me/squad"],
                  tmp=work["root"], deepspeed=False, check=False, timeout=300)
    assert proc.returncode != 0
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("config error:")]
    assert len(lines) == 1, proc.stdout + proc.stderr  # rank 1 parses the same config and stays quiet
    assert "3 unknown keys" in lines[0] and "huggingface-cli upload" in lines[0]
    assert not out.exists()


def test_unreadable_weights_after_the_claim_leave_nothing_behind(work: dict[str, Path], tmp_path: Path,
                                                                 train_main: Callable[[list[str]], int],
                                                                 capfd: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights load after the output_dir claim (qa.trainer.setup.load_weights); a file that passes the header
    checks but cannot be read (a damaged pytorch_model.bin) ends in one line, and the run's claim is undone: no
    lock, no run_config.yaml, no metrics.jsonl, and an output_dir the run created is gone."""
    damaged = tmp_path / "damaged"
    shutil.copytree(work["tiny"], damaged)
    (damaged / "model.safetensors").unlink()
    (damaged / "pytorch_model.bin").write_bytes(b"not a torch checkpoint" * 64)
    out = tmp_path / "out"
    args = ["--model_name_or_path", str(damaged), "--train_file", str(work["good"]), "--validation_file",
            str(work["good"]), "--output_dir", str(out), *COMMON, "--report_to", "none"]
    monkeypatch.chdir(tmp_path)
    assert train_main(args) == 2
    stderr = capfd.readouterr().err
    lines = [ln for ln in stderr.splitlines() if " error: " in ln]
    assert len(lines) == 1 and lines[0].startswith(f"config error: model_name_or_path: the weights of {damaged} "
                                                   "cannot be loaded"), stderr[-3000:]
    assert "Traceback" not in stderr
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())
