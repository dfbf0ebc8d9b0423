"""train.py on a real 30 MiB tmpfs: the save that does not fit stops the run in one line with the previous
checkpoint intact, and a resume first removes the partial checkpoint an earlier run left filling the disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from small_fs import small_filesystem

from fixtures import DEMO_DATA, REPO, base_env, make_tiny_model

pytestmark = pytest.mark.slow


def test_full_disk_stops_cleanly_and_resume_clears_the_partial_checkpoint(tmp_path: Path) -> None:
    tiny = make_tiny_model(tmp_path / "tiny")  # ~12 MB per checkpoint (fp32 weights + Adam moments)
    with small_filesystem(tmp_path / "disk", 30) as disk:
        out = disk / "out"
        args = [sys.executable, str(REPO / "train.py"), "--model_name_or_path", str(tiny), "--train_file",
                str(DEMO_DATA / "train.json"), "--max_train_samples", "20", "--do_eval", "false", "--output_dir",
                str(out), "--report_to", "none", "--deepspeed", "null", "--max_seq_length", "128", "--doc_stride",
                "32", "--mixed_precision", "no", "--dataloader_num_workers", "0", "--per_device_train_batch_size",
                "2", "--checkpointing_steps", "1", "--save_total_limit", "null"]
        env = base_env(tmp_path)
        proc = subprocess.run([*args, "--max_train_steps", "4"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
        lines = [ln for ln in proc.stderr.splitlines() if " error: " in ln]
        assert len(lines) == 1, proc.stderr[-3000:]
        assert lines[0].startswith(f"disk error: checkpoint at step 3: not enough space in {out / 'checkpoints'} "
                                   "for the next checkpoint: needs ")
        assert f"the newest complete checkpoint {out / 'checkpoints' / 'step_0000002'} is intact" in lines[0]
        assert "Traceback" not in proc.stderr
        ckpts = out / "checkpoints"
        assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000001", "step_0000002"]
        assert all((p / "COMPLETE").exists() for p in ckpts.iterdir())

        # An earlier save that died half-way (no COMPLETE) at a later step: it fills the disk and auto skips it.
        (ckpts / "step_0000002" / "COMPLETE").unlink()
        (ckpts / "step_0000002").rename(ckpts / "step_0000007")
        proc = subprocess.run([*args, "--max_train_steps", "2", "--resume_from_checkpoint", "auto",
                               "--save_total_limit", "1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert f"removed the partial checkpoint {ckpts / 'step_0000007'}" in proc.stdout + proc.stderr
        assert sorted(p.name for p in ckpts.iterdir()) == ["step_0000002"]
        assert (ckpts / "step_0000002" / "COMPLETE").exists() and (out / "final" / "model.safetensors").exists()
