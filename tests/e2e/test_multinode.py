"""Two `accelerate launch` "nodes" on one machine (one CPU process each, ZeRO-2 over gloo)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures import DEMO_DATA, REPO, base_env, free_port, make_tiny_model, subset_squad

pytestmark = pytest.mark.slow


def _wait_until_listening(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None:
            raise AssertionError(f"node 0 exited early ({proc.returncode}):\n{proc.communicate()[0][-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("node 0 never opened the rendezvous port")
        time.sleep(0.1)  # polling a condition with a deadline


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
        if rank == 0:
            # Both "nodes" are 127.0.0.1, so node 1's agent would also try to host the rendezvous store if it
            # came first; start it once node 0 listens on the port, as a real second node joins later.
            _wait_until_listening(port, procs[0])
    try:
        outputs = [p.communicate(timeout=600)[0] for p in procs]
    finally:
        for p in procs:  # one node failing must not leave the other waiting for its peer
            if p.poll() is None:
                p.kill()
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
