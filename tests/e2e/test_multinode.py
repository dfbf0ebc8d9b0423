"""Two `accelerate launch` "nodes" on one machine (one CPU process each, ZeRO-2 over gloo), with and without a
filesystem they share, publishing checkpoints to a real S3 server (SeaweedFS)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures import DEMO_DATA, REPO, base_env, free_port, make_tiny_model, subset_squad, workers

pytestmark = [pytest.mark.slow, pytest.mark.s3]

STEPS = 8
TRAIN = ["--max_seq_length", "128", "--doc_stride", "32", "--report_to", "none", "--mixed_precision", "no",
         "--dataloader_num_workers", "0", "--per_device_train_batch_size", "4", "--logging_steps", "1",
         "--deepspeed", "configs/deepspeed/zero2.json"]


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


def _start_nodes(args: list[list[str]], envs: list[dict[str, str]]) -> list[subprocess.Popen]:
    """Node k runs ``train.py *args[k]`` with ``envs[k]``: machine_rank k of 2, one process each."""
    port = free_port()
    procs: list[subprocess.Popen] = []
    for rank in (0, 1):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "2", "--machine_rank", str(rank),
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--num_processes", "2",
               "--use_deepspeed", "--deepspeed_multinode_launcher", "standard", "--rdzv_backend", "c10d",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "train.py"), *args[rank]]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=envs[rank], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
        if rank == 0:
            # Both "nodes" are 127.0.0.1, so node 1's agent would also try to host the rendezvous store if it
            # came first; start it once node 0 listens on the port, as a real second node joins later.
            _wait_until_listening(port, procs[0])
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[str]:
    try:
        return [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:  # one node failing must not leave the other waiting for its peer
            if p.poll() is None:
                p.kill()


def _run_nodes(args: list[list[str]], envs: list[dict[str, str]]) -> list[str]:
    procs = _start_nodes(args, envs)
    outputs = _finish(procs)
    for p, text in zip(procs, outputs, strict=True):
        assert p.returncode == 0, text[-6000:]
    return outputs


def _s3_env(tmp: Path, server, node: int) -> dict[str, str]:
    env = base_env(tmp)
    for k in [k for k in env if k.startswith("AWS_")]:
        del env[k]
    env.update(server.env())
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env["HF_DATASETS_CACHE"] = str(tmp / f"hf_cache_node{node}")  # nothing shared between the nodes' disks
    return env


def _check_published(store, run: str) -> dict[str, int]:
    """Every checkpoint in the store lists both ranks' files, and holds nothing else than its files, its manifest
    and one part record per node. Returns the number of objects of each checkpoint."""
    counts = {}
    for name in store.list_complete(f"{run}/checkpoints"):
        prefix = f"{run}/checkpoints/{name}"
        files = store.read_manifest(prefix)["files"]
        for rank in (0, 1):
            assert f"random_states_{rank}.pkl" in files, (name, sorted(files))
            assert f"pytorch_model/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in files, (name, sorted(files))
        assert {"pytorch_model/mp_rank_00_model_states.pt", "trainer_state.json", "COMPLETE"} <= set(files)
        keys = store.list_keys(prefix)
        parts = sorted(k.rpartition("/")[2] for k in keys if "/parts/" in k)
        assert parts == ["ranks_0-0.json", "ranks_1-1.json"]
        node_files = [set(store.read_record(f"{prefix}/parts/{p}")["files"]) for p in parts]
        assert not node_files[0] & node_files[1] and node_files[0] | node_files[1] == set(files), "each file once"
        assert len(keys) == len(files) + 1 + len(parts)
        counts[name] = len(keys)
    return counts


def test_two_nodes_train_evaluate_once_and_write_one_set_of_outputs(tmp_path: Path, s3_server) -> None:
    """A shared output_dir: one set of outputs, and each checkpoint file uploaded once, by its rank's node."""
    model = make_tiny_model(tmp_path / "tiny")
    train = subset_squad(DEMO_DATA / "train.json", tmp_path / "train.json", 4)
    dev = subset_squad(DEMO_DATA / "dev.json", tmp_path / "dev.json", 2)
    out = tmp_path / "out"
    uri = f"s3://{s3_server.create_bucket()}/runs"
    args = ["--model_name_or_path", str(model), "--train_file", str(train), "--validation_file", str(dev),
            "--output_dir", str(out), *TRAIN, "--max_train_steps", "4", "--eval_strategy", "end",
            "--checkpointing_steps", "2", "--s3_uri", uri, "--run_name", "shared"]
    env = {**_s3_env(tmp_path, s3_server, 0), "HF_DATASETS_CACHE": str(tmp_path / "hf_cache")}
    outputs = _run_nodes([args, args], [env, env])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]
    assert len([r for r in rows if "eval/f1" in r]) == 1  # evaluated once, on rank 0
    assert "world_size=2" in outputs[0]
    assert json.loads((out / "eval_results.json").read_text())["f1"] >= 0
    assert (out / "final" / "model.safetensors").is_file()
    # one set of outputs: no per-rank copies
    assert sorted(p.name for p in out.glob("predictions*.json")) == ["predictions.json"]
    store = s3_server.store(uri)
    assert store.list_complete("shared/checkpoints") == ["step_0000002", "step_0000004"]
    _check_published(store, "shared")


def _weights(final: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(final / "model.safetensors"))


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _rank0_dir(outs: list[Path]) -> Path:
    found = [o for o in outs if (o / "metrics.jsonl").is_file()]
    assert len(found) == 1, f"exactly one node writes the run's outputs: {found}"
    return found[0]


def _kill_after(procs: list[subprocess.Popen], ready, timeout: float = 600) -> None:
    """Once ``ready()`` holds, freeze every worker of both nodes (SIGSTOP: none runs on meanwhile) and SIGKILL
    them: both machines are lost at once."""
    deadline = time.monotonic() + timeout
    while not ready():
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            _finish(procs, timeout=5)
            raise AssertionError(f"never ready (exit codes {[p.returncode for p in procs]})")
        time.sleep(0.05)  # polling the store for a condition, not waiting for time to pass
    found = {rank: w for p in procs for rank, w in workers(p.pid).items()}
    assert sorted(found) == [0, 1], found
    for w in found.values():
        w.send_signal(signal.SIGSTOP)
    for w in found.values():
        w.send_signal(signal.SIGKILL)


def test_nodes_without_a_shared_filesystem_publish_every_rank_and_resume_from_the_store_alone(
        tmp_path: Path, s3_server) -> None:
    model = make_tiny_model(tmp_path / "tiny", dropout=0.1)  # dropout on: the RNG states must come back too
    train = subset_squad(DEMO_DATA / "train.json", tmp_path / "train.json", 6)
    uri = f"s3://{s3_server.create_bucket()}/runs"
    store = s3_server.store(uri)
    envs = [_s3_env(tmp_path, s3_server, k) for k in (0, 1)]

    def args(out: Path, run: str, *extra: str) -> list[str]:
        return ["--model_name_or_path", str(model), "--train_file", str(train), "--output_dir", str(out), *TRAIN,
                "--max_train_steps", str(STEPS), "--learning_rate", "2e-3", "--do_eval", "false",
                "--checkpointing_steps", "3", "--save_total_limit", "5", "--s3_uri", uri, "--run_name", run, *extra]

    # Uninterrupted: each node has its own output_dir.
    ref = [tmp_path / f"ref_node{k}" for k in (0, 1)]
    _run_nodes([args(ref[0], "ref"), args(ref[1], "ref")], envs)
    assert store.list_complete("ref/checkpoints") == ["step_0000003", "step_0000006"]
    counts = _check_published(store, "ref")
    print(f"\nS3 objects per checkpoint, two nodes: {counts}")
    ref_out = _rank0_dir(ref)

    # Both machines die after a checkpoint reached the store, and their disks are gone with them.
    outs = [tmp_path / f"node{k}" for k in (0, 1)]
    procs = _start_nodes([args(outs[0], "crash"), args(outs[1], "crash")], envs)
    _kill_after(procs, lambda: bool(store.list_complete("crash/checkpoints")))
    crashed = _finish(procs, timeout=120)
    assert all(p.returncode != 0 for p in procs), [t[-3000:] for t in crashed]
    for out in outs:
        shutil.rmtree(out)

    logs = _run_nodes([args(outs[0], "crash", "--resume_from_checkpoint", "auto"),
                       args(outs[1], "crash", "--resume_from_checkpoint", "auto")], envs)
    log = "\n".join(logs)
    fetched = re.search(r"resuming from (s3://\S+/step_(\d+)): 2 node\(s\) fetched their ranks' files in ([\d.]+)s", log)
    loaded = re.search(r"state loaded in ([\d.]+)s", log)
    assert fetched and loaded, log[-6000:]
    resumed_at = int(fetched.group(2))
    assert resumed_at in (3, 6)
    print(f"resumed at step {resumed_at}: fetch {fetched.group(3)}s, load {loaded.group(1)}s")
    out = _rank0_dir(outs)
    got, want = _losses(out), _losses(ref_out)
    assert sorted(got) == list(range(resumed_at + 1, STEPS + 1))
    for step in got:
        assert got[step] == want[step], f"step {step}: {got[step]} != {want[step]}"
    wa, wb = _weights(ref_out / "final"), _weights(out / "final")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] == wb[k]).all(), f"{k} differs"
    _check_published(store, "crash")
