"""Storage faults inside a real run: 2 ranks, DeepSpeed ZeRO-2, a real S3 server (SeaweedFS) that dies.

Two runs cover the three faults:

* ``test_server_killed_mid_upload_then_back``: the server is SIGKILLed in the middle of a multipart upload of a
  checkpoint and stays down while training runs on to its last checkpoint (saved locally, several of them during
  the outage: training never waits for the store), then comes back on the same endpoint while the end of the run
  waits for the uploads. The interrupted upload is redone from scratch, every later one completes, the run ends
  normally, and every checkpoint in the store downloads intact.
* ``test_server_left_down_the_run_fails_naming_what_is_missing``: same kill, but the server stays down. The
  checkpoint whose upload was cut has no manifest (it does not exist for readers); the end of the run waits at
  most ``s3_upload_timeout`` and then fails, naming exactly the uploads that are missing. The checkpoints
  uploaded before the kill download intact.

Checkpoint files are a few MiB, so ``QA_S3_MULTIPART_THRESHOLD_MIB=1`` (qa.checkpoint.s3) makes them go up as
multipart uploads. Every wait polls a condition (the store, the output directory) with a deadline.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fixtures import DEMO_DATA, base_env, make_tiny_model, spawn, subset_squad
from qa.checkpoint.s3 import MULTIPART_ENV
from qa.checkpoint.state import complete_checkpoints, step_name
from store_tools import download_dir

pytestmark = [pytest.mark.slow, pytest.mark.s3]

STEPS, EVERY = 30, 5
CHECKPOINTS = [step_name(s) for s in range(EVERY, STEPS + 1, EVERY)]
RUN = "faults"
PREFIX = f"{RUN}/checkpoints"
COMMON = ["--max_seq_length", "128", "--doc_stride", "32", "--report_to", "none", "--mixed_precision", "no",
          "--dataloader_num_workers", "0", "--logging_steps", "1", "--per_device_train_batch_size", "4",
          "--learning_rate", "1e-3", "--do_eval", "false", "--deepspeed", "configs/deepspeed/zero2.json",
          "--max_train_steps", str(STEPS), "--checkpointing_steps", str(EVERY), "--save_total_limit", "null",
          "--run_name", RUN]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    return {"root": root, "model": make_tiny_model(root / "tiny"),
            "train": subset_squad(DEMO_DATA / "train.json", root / "train.json", 6)}


def _env(work: dict[str, Path], server) -> dict[str, str]:
    env = {k: v for k, v in base_env(work["root"]).items() if not k.startswith("AWS_")}
    env.update(server.env())
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    env[MULTIPART_ENV] = "1"
    return env


def _start(work: dict[str, Path], server, name: str, uri: str, *extra: str) -> tuple[subprocess.Popen, Path, Path]:
    out, log = work["root"] / name, work["root"] / f"{name}.log"
    args = ["--model_name_or_path", str(work["model"]), "--train_file", str(work["train"]), "--output_dir", str(out),
            "--s3_uri", uri, *COMMON, *extra]
    return spawn(args, tmp=work["root"], log=log, env=_env(work, server)), out, log


def _wait_for(cond: Callable[[], object], timeout: float, what: str, proc: subprocess.Popen, log: Path,
              interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(interval)  # polling a condition with a deadline, not synchronising on time


def _local(out: Path) -> list[str]:
    return [p.name for p in complete_checkpoints(out / "checkpoints")]


def _kill_during_multipart_upload(server, store, proc: subprocess.Popen, log: Path) -> str:
    """SIGKILL the server while a checkpoint's multipart upload is in progress; returns that checkpoint."""
    found: list[str] = []

    def uploading() -> bool:
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix).get("Uploads", [])
        found[:] = sorted({m.group(1) for u in uploads if (m := re.search(r"/checkpoints/(step_\d+)/", u["Key"]))})
        return bool(found)

    # Multipart windows last tens of milliseconds: poll often.
    _wait_for(uploading, 240, "a multipart upload of a checkpoint", proc, log, interval=0.005)
    server.stop(kill=True)
    return found[0]


def _assert_intact(store, names: list[str], dest: Path) -> None:
    for name in names:  # download_dir re-hashes every file against the manifest and raises on any mismatch
        download_dir(store, f"{PREFIX}/{name}", str(dest / name))


def test_server_killed_mid_upload_then_back(work: dict[str, Path], s3_server) -> None:  # noqa: F811
    bucket = s3_server.create_bucket()
    uri = f"s3://{bucket}/runs"
    store = s3_server.store(uri)
    proc, out, log = _start(work, s3_server, "killed_then_back", uri, "--s3_upload_timeout", "600")
    try:
        killed = _kill_during_multipart_upload(s3_server, store, proc, log)
        before_kill = _local(out)
        # The store is down: training goes on to its last checkpoint, saved locally.
        _wait_for(lambda: CHECKPOINTS[-1] in _local(out), 300, "the last checkpoint while the store is down",
                  proc, log)
        assert len(set(CHECKPOINTS) - set(before_kill)) >= 2  # several checkpoints were saved during the outage
        s3_server.start()
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        s3_server.ensure_running()
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    assert f"upload to {store.uri_for(f'{PREFIX}/{killed}')} failed" in text  # the cut upload was retried
    assert _local(out) == CHECKPOINTS
    assert store.list_complete(PREFIX) == CHECKPOINTS  # the uploads caught up, the cut one included
    assert "final" in store.list_complete(RUN)
    _assert_intact(store, CHECKPOINTS, work["root"] / "verify_back")


def test_server_left_down_the_run_fails_naming_what_is_missing(work: dict[str, Path], s3_server) -> None:  # noqa: F811
    bucket = s3_server.create_bucket()
    uri = f"s3://{bucket}/runs"
    store = s3_server.store(uri)
    proc, out, log = _start(work, s3_server, "left_down", uri, "--s3_upload_timeout", "10")
    try:
        # One checkpoint reaches the store first, so there is something that must stay intact.
        _wait_for(lambda: store.list_complete(PREFIX), 300, "a first checkpoint in the store", proc, log)
        killed = _kill_during_multipart_upload(s3_server, store, proc, log)
        proc.wait(timeout=600)  # the run ends by itself: the final wait is bounded by s3_upload_timeout
    finally:
        if proc.poll() is None:
            proc.kill()
        s3_server.ensure_running()
    text = log.read_text()
    assert proc.returncode != 0
    # Everything is complete locally: only the store is behind.
    assert _local(out) == CHECKPOINTS and (out / "final" / "model.safetensors").is_file()
    before = [n for n in CHECKPOINTS if n < killed]
    assert before and store.list_complete(PREFIX) == before  # the cut checkpoint has no manifest
    assert "final" not in store.list_complete(RUN)
    lines = [line for line in text.splitlines() if "did not reach the checkpoint store" in line]
    assert lines, text[-4000:]
    named = set(re.findall(r"s3://[^\s,]+", lines[-1]))
    missing = {store.uri_for(f"{PREFIX}/{n}") for n in CHECKPOINTS if n >= killed} | {store.uri_for(f"{RUN}/final")}
    assert named == missing
    _assert_intact(store, before, work["root"] / "verify_down")
