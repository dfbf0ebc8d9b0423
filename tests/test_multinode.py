"""Two `accelerate launch` "nodes" on one machine (one CPU process each, ZeRO-2 over gloo)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import DEMO_DATA, REPO, base_env, free_port, make_tiny_model, subset_squad

pytestmark = pytest.mark.slow


def test_two_nodes_train_evaluate_once_and_write_one_set_of_outputs(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "tiny")
    train = subset_squad(DEMO_DATA / "train.json", tmp_path / "train.json", 4)
    dev = subset_squad(DEMO_DATA / "dev.json", tmp_path / "dev.json", 2)
    out = tmp_path / "out"
    port = free_port()
    env = base_env(tmp_path)
    procs = []
    for rank in (0, 1):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "2", "--machine_rank", str(rank),
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--num_processes", "2",
               "--use_deepspeed", "--deepspeed_multinode_launcher", "standard", "--rdzv_backend", "c10d",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "train.py"),
               "--model_name_or_path", str(model), "--train_file", str(train), "--validation_file", str(dev),
               "--output_dir", str(out), "--max_seq_length", "128", "--doc_stride", "32", "--report_to", "none",
               "--mixed_precision", "no", "--dataloader_num_workers", "0", "--per_device_train_batch_size", "4",
               "--max_train_steps", "4", "--logging_steps", "1", "--eval_strategy", "end",
               "--deepspeed", "configs/deepspeed/zero2.json"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text[-4000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
    assert len([r for r in rows if "eval/f1" in r]) == 1  # evaluated once, on rank 0
    assert "world_size=2" in outputs[0]
    assert json.loads((out / "eval_results.json").read_text())["f1"] >= 0
    assert (out / "final" / "model.safetensors").is_file()
    # one set of outputs: no per-rank copies
    assert sorted(p.name for p in out.glob("predictions*.json")) == ["predictions.json"]
