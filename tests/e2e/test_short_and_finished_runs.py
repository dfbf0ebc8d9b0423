"""checkpointing_steps epoch on a run shorter than an epoch saves at its end; resuming the finished run says so
and changes nothing, unless more steps are asked for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import DEMO_DATA, REPO, base_env, make_tiny_model

pytestmark = pytest.mark.slow


def _snapshot(out: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.stat().st_size) for p in out.rglob("*")
            if p.is_file() and p.name != ".lock"}


def test_epoch_checkpoint_of_a_short_run_and_resuming_it_when_finished(tmp_path: Path) -> None:
    tiny = make_tiny_model(tmp_path / "tiny")
    out = tmp_path / "out"
    args = [sys.executable, str(REPO / "train.py"), "--model_name_or_path", str(tiny), "--train_file",
            str(DEMO_DATA / "train.json"), "--validation_file", str(DEMO_DATA / "dev.json"), "--max_eval_samples", "4",
            "--output_dir", str(out), "--report_to", "none", "--deepspeed", "null", "--max_seq_length", "128",
            "--doc_stride", "32", "--mixed_precision", "no", "--dataloader_num_workers", "0",
            "--per_device_train_batch_size", "2", "--checkpointing_steps", "epoch"]
    env = base_env(tmp_path)

    def run(*extra: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([*args, *extra], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    run("--max_train_steps", "2")  # one epoch is hundreds of steps
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000002"]
    assert (ckpts / "step_0000002" / "COMPLETE").exists()

    before = _snapshot(out)
    proc = run("--max_train_steps", "2", "--resume_from_checkpoint", "auto")
    lines = [ln for ln in proc.stderr.splitlines() if "already finished" in ln]
    assert lines == [f"resume_from_checkpoint: the run in {out} already finished at step 2 (final/ is exported); "
                     "nothing was changed. To train further, raise --max_train_steps or --num_train_epochs"]
    assert _snapshot(out) == before  # no evaluation, no export, no metrics, run_config.yaml untouched

    run("--max_train_steps", "3", "--resume_from_checkpoint", "auto")  # more steps asked for: it trains on
    assert (ckpts / "step_0000003" / "COMPLETE").exists()
    assert _snapshot(out)["final/model.safetensors"] != before["final/model.safetensors"]
