"""Checkpoints to a real S3 server (SeaweedFS), exact resume, preemption and start-up failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures import (
    DEMO_DATA,
    REPO,
    base_env,
    free_port,
    launch,
    launch_and_crash,
    make_tiny_model,
    subset_squad,
)
from store_tools import download_dir

pytestmark = [pytest.mark.slow, pytest.mark.s3]

STEPS = 8
COMMON = ["--max_seq_length", "128", "--doc_stride", "32", "--report_to", "none", "--mixed_precision", "no",
          "--dataloader_num_workers", "0", "--logging_steps", "1", "--per_device_train_batch_size", "4",
          "--learning_rate", "2e-3", "--do_eval", "false", "--deepspeed", "configs/deepspeed/zero2.json",
          "--checkpointing_steps", "3", "--save_total_limit", "5", "--run_name", "resume-test"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("resume")
    # dropout on: exact resume must restore the RNG state too
    return {"root": root, "model": make_tiny_model(root / "tiny", dropout=0.1),
            "train": subset_squad(DEMO_DATA / "train.json", root / "train.json", 6)}


def _env(work: dict[str, Path], server) -> dict[str, str]:
    env = base_env(work["root"])
    for k in [k for k in env if k.startswith("AWS_")]:
        del env[k]
    env.update(server.env())
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def _args(work: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(work["model"]), "--train_file", str(work["train"]),
            "--output_dir", str(out), "--max_train_steps", str(STEPS), *COMMON, *extra]


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}  # a resumed step overwrites


def _weights(final: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(final / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] == wb[k]).all(), f"{k} differs"


@pytest.fixture(scope="module")
def reference(work: dict[str, Path], s3_server) -> Path:  # noqa: F811
    out = work["root"] / "reference"
    launch(_args(work, out), tmp=work["root"], env=_env(work, s3_server))
    return out


def test_killed_rank_then_auto_resume_is_exact(work, reference, s3_server) -> None:  # noqa: F811
    out = work["root"] / "killed"
    env = _env(work, s3_server)
    # Rank 1 dies (SIGKILL, no handler runs) right after the step-3 checkpoint; the run must not finish.
    proc = launch_and_crash(_args(work, out), tmp=work["root"], env=env,
                            after=out / "checkpoints" / "step_0000003" / "COMPLETE")
    assert proc.returncode != 0
    assert not (out / "final").exists()
    # An earlier attempt's interrupted export: the resume's export starts from an empty final.partial, so nothing
    # of it reaches final/.
    stale = out / "final.partial"
    for i in range(30):
        (stale / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (stale / f"d{i % 3}" / f"f{i}").write_bytes(b"")
    (stale / "stale-00001-of-00002.safetensors").write_bytes(b"not weights")
    launch(_args(work, out, "--resume_from_checkpoint", "auto"), tmp=work["root"], env=env)
    assert not stale.exists()
    assert sorted(p.name for p in (out / "final").iterdir() if p.name.startswith(("d", "stale"))) == []
    ref, got = _losses(reference), _losses(out)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step] == ref[step], f"step {step}: {got[step]} != {ref[step]}"
    _assert_same_weights(reference / "final", out / "final")


def test_resume_from_s3_only_and_corrupt_object_falls_back(work, reference, s3_server) -> None:  # noqa: F811
    bucket = s3_server.create_bucket()
    out = work["root"] / "s3run"
    env = _env(work, s3_server)
    uri = f"s3://{bucket}/runs"
    launch(_args(work, out, "--s3_uri", uri), tmp=work["root"], env=env)
    store = s3_server.store(uri)
    assert store.list_complete("resume-test/checkpoints") == ["step_0000003", "step_0000006"]
    assert "manifest.json" in " ".join(store.list_keys("resume-test/final"))
    # Lose the machine: only the bucket remains. Corrupt one object of the newest checkpoint.
    import shutil

    shutil.rmtree(out)
    manifest = store.read_manifest("resume-test/checkpoints/step_0000006")
    victim = sorted(f for f in manifest["files"] if f.endswith(".pt"))[0]
    key = f"runs/resume-test/checkpoints/step_0000006/{victim}"
    store.client.put_object(Bucket=bucket, Key=key, Body=b"x" * manifest["files"][victim]["size"])
    proc = launch(_args(work, out, "--s3_uri", uri, "--resume_from_checkpoint", "auto"), tmp=work["root"], env=env)
    log = proc.stdout + proc.stderr
    assert f"s3://{bucket}/{key}" in log  # the refused object is named
    assert "resumed from" in log and "step_0000003" in log
    got, ref = _losses(out), _losses(reference)
    for step in range(4, STEPS + 1):
        assert got[step] == ref[step]
    _assert_same_weights(reference / "final", out / "final")
    assert s3_server.secret_key not in log
    for path in out.rglob("*"):
        if path.is_file():
            assert s3_server.secret_key.encode() not in path.read_bytes(), path


def _wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)  # polling a condition with a deadline, not synchronising on time


def test_preemption_checkpoints_uploads_and_requeues(work, s3_server) -> None:  # noqa: F811
    bucket = s3_server.create_bucket()
    out = work["root"] / "preempt"
    uri = f"s3://{bucket}/runs"
    env = _env(work, s3_server)
    args = _args(work, out, "--s3_uri", uri, "--max_train_steps", "100000", "--checkpointing_steps", "null",
                 "--logging_steps", "1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
           "--use_deepspeed", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(REPO / "train.py"), *args]
    launcher = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        metrics = out / "metrics.jsonl"
        _wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 3, 180, "training to start")
        # What launch/slurm.sbatch does on SIGUSR1: signal the training processes themselves.
        workers = subprocess.run(["pgrep", "-f", f"train.py.*{out}"], capture_output=True, text=True).stdout.split()
        workers = [int(p) for p in workers if int(p) != launcher.pid]
        assert len(workers) == 2
        for pid in workers:
            os.kill(pid, signal.SIGTERM)
        output, _ = launcher.communicate(timeout=180)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert "exitcode  : 42" in output or "exit status 42" in output, output[-3000:]
    assert (out / "PREEMPTED").is_file()
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    assert len(ckpts) == 1 and (ckpts[0] / "COMPLETE").is_file()
    store = s3_server.store(uri)
    assert store.list_complete("resume-test/checkpoints") == [ckpts[0].name]
    download_dir(store, f"resume-test/checkpoints/{ckpts[0].name}", str(work["root"] / "verify"))  # verifies
    stopped_at = int(ckpts[0].name.split("_")[1])
    # Requeued: the relaunch resumes and finishes.
    finish_at = stopped_at + 3
    launch(_args(work, out, "--s3_uri", uri, "--max_train_steps", str(finish_at), "--checkpointing_steps",
                 "null", "--resume_from_checkpoint", "auto"), tmp=work["root"], env=env)
    assert (out / "final" / "model.safetensors").is_file()
    assert not (out / "PREEMPTED").exists()
    assert max(_losses(out)) == finish_at


@pytest.mark.parametrize("case", ["wrong_credentials", "missing_bucket"])
def test_s3_problems_fail_at_start_up(work, s3_server, case: str) -> None:  # noqa: F811
    env = _env(work, s3_server)
    bucket = s3_server.create_bucket()
    if case == "wrong_credentials":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    else:
        bucket = s3_server.new_bucket_name()
    out = work["root"] / f"startup_{case}"
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *_args(work, out, "--s3_uri", f"s3://{bucket}/x")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    expected = "credentials were rejected" if case == "wrong_credentials" else "s3_create_bucket"
    assert expected in text
    assert "train:" not in text  # failed before any data or model work
    assert not (out / "checkpoints").exists()


def test_another_global_batch_is_refused_unless_weights_only(work, reference) -> None:
    """Another world size is fine (tests/e2e/test_world_size_change.py) but the global batch must stay: the data
    position and the schedule count global batches. Refused at start-up, before anything is written."""
    ckpt = reference / "checkpoints" / "step_0000006"
    out = work["root"] / "one_rank"
    args = _args(work, out, "--resume_from_checkpoint", str(ckpt), "--max_train_steps", "7")
    proc = launch(args, tmp=work["root"], nproc=1, check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "saved with a global batch of 8" in text and "gradient_accumulation_steps: 2" in text
    assert not out.exists()
    proc = launch([*args, "--resume_weights_only", "true"], tmp=work["root"], nproc=1)
    assert "loaded weights only" in proc.stdout + proc.stderr
    assert (out / "final" / "model.safetensors").is_file()
    # A changed batch geometry would replay the wrong data: refused too.
    proc = launch(_args(work, work["root"] / "geometry", "--resume_from_checkpoint", str(ckpt),
                        "--per_device_train_batch_size", "2"), tmp=work["root"], check=False)
    assert proc.returncode != 0 and "saved with a global batch of 8" in proc.stdout + proc.stderr
