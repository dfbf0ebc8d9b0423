"""W&B (offline) and metrics.jsonl from real 2-process runs, across a crash and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures import DEMO_DATA, base_env, launch, launch_and_crash, make_tiny_model, subset_squad
from wandb_records import config_values, offline_dirs, read_wandb_records, summary_values, synced_history

pytestmark = pytest.mark.slow

SENTINELS = {"AWS_SECRET_ACCESS_KEY": "SENTINEL-aws-7f3a", "WANDB_API_KEY": "SENTINEL-wandb-91c2",
             "HF_TOKEN": "SENTINEL-hf-55d0"}
KMS_SENTINEL = "SENTINEL-kms-0b1e"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("wandb")
    return {"root": root, "model": make_tiny_model(root / "tiny"),
            "train": subset_squad(DEMO_DATA / "train.json", root / "train.json", 8),
            "dev": subset_squad(DEMO_DATA / "dev.json", root / "dev.json", 2)}


def _args(work: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(work["model"]), "--train_file", str(work["train"]),
            "--validation_file", str(work["dev"]), "--output_dir", str(out), "--max_seq_length", "128",
            "--doc_stride", "32", "--mixed_precision", "no", "--dataloader_num_workers", "0",
            "--deepspeed", "configs/deepspeed/zero2.json", "--per_device_train_batch_size", "4",
            "--learning_rate", "3e-3", "--max_train_steps", "24", "--logging_steps", "2", "--eval_strategy", "steps",
            "--eval_steps", "12", "--checkpointing_steps", "8", "--report_to", "wandb", "--run_name", "wb",
            "--wandb_project", "qa-tests", "--s3_sse", "aws:kms", "--s3_sse_kms_key_id", KMS_SENTINEL, *extra]


def test_wandb_offline_run_across_crash_and_resume(work: dict[str, Path]) -> None:
    out = work["root"] / "run"
    env = {**base_env(work["root"]), **SENTINELS, "WANDB_MODE": "offline", "WANDB_DIR": str(work["root"] / "wb")}
    crashed = launch_and_crash(_args(work, out), tmp=work["root"], env=env,
                               after=out / "checkpoints" / "step_0000008" / "COMPLETE")
    assert crashed.returncode != 0
    done = launch(_args(work, out, "--resume_from_checkpoint", "auto"), tmp=work["root"], env=env)

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/loss" in r]
    for key in ("train/loss", "train/lr", "train/grad_norm", "perf/samples_per_s", "perf/tokens_per_s",
                "train/skipped_steps"):
        assert all(key in r for r in train), key
    assert all(r["perf/samples_per_s"] > 0 and r["perf/tokens_per_s"] > r["perf/samples_per_s"] for r in train)
    first, last = train[0]["train/loss"], train[-1]["train/loss"]
    assert last < first, f"loss did not decrease on a learnable fixture: {first} -> {last}"
    evals = [r for r in rows if "eval/f1" in r]
    assert evals and all({"eval/exact_match", "eval/time_forward_s", "eval/time_gather_s",
                          "eval/time_decode_s"} <= set(r) for r in evals)

    # One W&B run (same id) continued by the resume: synced in order, every logged step once, with the values
    # of metrics.jsonl (the resume sends again what the crash may have kept wandb from writing).
    run_ids = {p.name.rsplit("-", 1)[-1] for p in (work["root"] / "wb" / "wandb").glob("offline-run-*")}
    assert len(run_ids) == 1, run_ids
    (run_id,) = run_ids
    dirs = offline_dirs(work["root"] / "wb", run_id)
    assert len(dirs) == 2  # the crashed attempt and the resumed one
    synced = {r["_step_num"]: r for r in synced_history(dirs, run_id)}
    loss_of_step = {r["step"]: r["train/loss"] for r in train}  # the last line of each step
    assert sorted(synced) == sorted(loss_of_step) == list(range(2, 25, 2))
    assert all(synced[s]["train/loss"] == loss_of_step[s] for s in synced)
    assert all("eval/f1" in synced[s] for s in (12, 24))  # eval rows merged into their step
    last_recs = read_wandb_records(next(dirs[-1].glob("*.wandb")))
    summary = summary_values(last_recs)
    assert "best/f1" in summary and "checkpoint/latest_uri" in summary
    config = config_values(last_recs)
    assert config.get("learning_rate") == 0.003 and "environment" in config
    # What the run decided from the machine, and why (base_env's OMP_NUM_THREADS=1 is the user's).
    env = config["environment"]
    assert env["precision"] == {"chosen": "fp32", "reason": "mixed_precision no"}
    assert env["threads_per_rank"] == "1 CPU thread per rank (OMP_NUM_THREADS=1 from the user)"
    assert env["torch_threads"] == 1 and env["cpu"]
    assert "wandb sync" in done.stdout + done.stderr

    # No secret in any file we or wandb wrote, nor in the console.
    texts = [crashed.stdout, crashed.stderr, done.stdout, done.stderr]
    for root in (out, work["root"] / "wb"):
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for s in [*SENTINELS.values(), KMS_SENTINEL]:
                    assert s.encode() not in data, f"{s} leaked into {path}"
    for t in texts:
        for s in [*SENTINELS.values(), KMS_SENTINEL]:
            assert s not in t


def test_unreachable_wandb_never_stops_training(work: dict[str, Path]) -> None:
    out = work["root"] / "unreachable"
    env = {**base_env(work["root"]), "WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40,
           "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_INIT_TIMEOUT": "3", "WANDB_DIR": str(work["root"] / "wb2")}
    proc = launch(_args(work, out, "--max_train_steps", "4", "--eval_strategy", "end", "--checkpointing_steps",
                        "null"), tmp=work["root"], env=env)
    assert (out / "final" / "model.safetensors").is_file()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in rows) and any("eval/f1" in r for r in rows)
    assert (proc.stdout + proc.stderr).count("W&B") >= 1
