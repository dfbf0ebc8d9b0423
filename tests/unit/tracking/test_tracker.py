"""Tests for qa.tracking: real Accelerator + real wandb in offline mode; nothing leaves the machine.

Every test runs with WANDB_MODE=offline (or a deliberately unreachable WANDB_BASE_URL on 127.0.0.1),
WANDB_DIR under tmp_path and no real credentials.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from qa.tracking.redaction import REDACTED
from qa.tracking.tracker import Tracker
from wandb_records import (  # noqa: F401
    config_values,
    history_rows,
    offline_dirs,
    read_jsonl,
    read_wandb_records,
    records_of,
    summary_values,
    synced_history,
)

UNREACHABLE = "http://127.0.0.1:9"  # discard port: connection refused, never leaves the host


# ---- fixtures / helpers ----------------------------------------------------------------------------


@pytest.fixture
def wandb_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    wandb_dir = tmp_path / "wandb_dir"
    wandb_dir.mkdir()
    for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    monkeypatch.setenv("WANDB_SILENT", "true")
    # Belt and braces: even a wrongly-online run could only reach a closed local port.
    monkeypatch.setenv("WANDB_BASE_URL", UNREACHABLE)
    # s3:// references build a boto3 resource; never let it probe the EC2 metadata endpoint.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return wandb_dir


@pytest.fixture
def accelerator(wandb_env: Path):
    import wandb
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # wandb's process-wide singleton reads WANDB_* once, at its first setup: tear it down around each
    # test so that this test's environment (WANDB_DIR, WANDB_MODE...) is the one that applies.
    wandb.teardown()
    acc = Accelerator(cpu=True, log_with="wandb")
    yield acc
    for t in list(acc.trackers):  # a failed test must not leave a live run for the next one
        try:
            t.finish()
        except Exception:
            pass
    wandb.teardown()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def make_tracker(accelerator: Any, output_dir: Path, **kwargs: Any) -> Tracker:
    params: dict[str, Any] = dict(
        output_dir=output_dir,
        report_to="wandb",
        project="qa-tests",
        run_name="unit-run",
        tags=["test"],
        config={"learning_rate": 3e-5, "max_seq_length": 384},
    )
    params.update(kwargs)
    return Tracker(accelerator, **params)


def tracking_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("qa.tracking") and r.levelno >= logging.WARNING]


# ---- pure helpers ----------------------------------------------------------------------------------


# ---- Tracker with a real Accelerator and offline wandb ------------------------------------------------


def test_offline_run_round_trip(
    accelerator: Any, wandb_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # No WANDB_MODE and no API key: the tracker itself must choose offline.
    monkeypatch.delenv("WANDB_MODE")
    out = tmp_path / "out"
    tracker = make_tracker(accelerator, out)
    assert tracker.mode == "offline" and tracker.wandb_active
    run_id = tracker.run_id
    for step in (10, 20, 30):
        tracker.log(
            {"train/loss": 3.0 / step, "train/lr": 3e-5, "train/samples_per_sec": 40.0 + step}, step=step
        )
    tracker.log_table("eval/samples", columns=["question", "pred"], rows=[["Who?", "Ada"], ["When?", "1843"]],
                      step=30)
    tracker.log_checkpoint(step=30, uri="s3://bucket/prefix/run/checkpoints/step_0000030")
    tracker.summary({"best/f1": 88.5, "best/step": 30})
    tracker.finish()
    tracker.finish()  # idempotent
    assert accelerator.trackers == []

    dirs = offline_dirs(wandb_env, run_id)
    assert len(dirs) == 1
    assert [p for p in (wandb_env / "wandb").iterdir() if p.is_dir() and not p.is_symlink()] == dirs
    run_dir = dirs[0]
    records = read_wandb_records(run_dir / f"run-{run_id}.wandb")

    (run_rec,) = records_of(records, "run")
    assert run_rec.run_id == run_id and run_rec.project == "qa-tests" and run_rec.display_name == "unit-run"
    assert run_rec.run_group == "unit-run" and list(run_rec.tags) == ["test"]

    config = config_values(records)
    assert config["learning_rate"] == 3e-5 and config["max_seq_length"] == 384
    env = config["environment"]
    assert env["world_size"] == 1 and env["gpu"] == "cpu"
    assert set(env["versions"]) == {"torch", "transformers", "accelerate", "deepspeed", "datasets", "wandb"}
    assert env["versions"]["torch"] and "git_commit" in env

    rows = history_rows(records)
    assert [r["_step"] for r in rows] == [10, 20, 30]
    assert all("train/loss" in r and "train/lr" in r for r in rows)
    assert rows[-1]["eval/samples/_type"] == "table-file"
    table_files = list((run_dir / "files" / "media" / "table").rglob("*.table.json"))
    assert len(table_files) == 1
    assert json.loads(table_files[0].read_text())["data"] == [["Who?", "Ada"], ["When?", "1843"]]

    summary = summary_values(records)
    assert summary["best/f1"] == 88.5
    assert summary["checkpoint/latest_uri"] == "s3://bucket/prefix/run/checkpoints/step_0000030"
    assert summary["checkpoint/latest_step"] == 30

    model_artifacts = [a for a in records_of(records, "artifact") if a.type == "model"]
    assert len(model_artifacts) == 1
    art = model_artifacts[0]
    assert art.name == f"checkpoint-{run_id}" and {"latest", "step_30"} <= set(art.aliases)
    assert [e.ref for e in art.manifest.contents] == ["s3://bucket/prefix/run/checkpoints/step_0000030"]

    lines = read_jsonl(out / "metrics.jsonl")
    assert [line["step"] for line in lines] == [10, 20, 30]
    assert all({"step", "time", "train/loss", "train/lr"} <= set(line) for line in lines)
    assert lines[0]["time"] <= lines[-1]["time"]

    stdout = capsys.readouterr().out
    assert "step 20 | loss 0.1500 | lr 3.00e-05 | 60.0 samples/s" in stdout
    assert f"wandb sync {run_dir}" in stdout
    assert tracker.sync_command == f"wandb sync {run_dir}"


def test_resume_continues_same_run(
    accelerator: Any, wandb_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    first = make_tracker(accelerator, out)
    for step in (1, 2, 3):
        first.log({"train/loss": 1.0 / step}, step=step)
    first.log_checkpoint(step=3, uri=str(tmp_path / "ckpt" / "step_3"))
    first.finish()
    run_id = first.run_id

    second = make_tracker(accelerator, out, resume_run_id=run_id)
    assert second.run_id == run_id and second.mode == "offline"
    for step in (4, 5):
        second.log({"train/loss": 1.0 / step}, step=step)
    second.finish()

    dirs = offline_dirs(wandb_env, run_id)
    assert len(dirs) == 2  # one per attempt, same run id; `wandb sync` replays them in order
    first_rows = history_rows(read_wandb_records(dirs[0] / f"run-{run_id}.wandb"))
    second_records = read_wandb_records(dirs[1] / f"run-{run_id}.wandb")
    assert [r["_step"] for r in first_rows] == [1, 2, 3]
    assert [r["_step"] for r in history_rows(second_records)] == [4, 5]
    (run_rec,) = records_of(second_records, "run")
    assert run_rec.run_id == run_id

    steps = [line["step"] for line in read_jsonl(out / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5]
    assert second.sync_command == "wandb sync " + " ".join(str(d) for d in dirs)
    assert second.sync_command in capsys.readouterr().out


def test_a_restart_before_any_checkpoint_continues_the_same_run(accelerator: Any, wandb_env: Path,
                                                                  tmp_path: Path) -> None:
    """Found by the fault campaign: a job killed before its first checkpoint restarted from scratch (nothing to
    resume) under a second W&B run id, leaving the first attempt's steps in a run of their own."""
    out = tmp_path / "out"
    first = make_tracker(accelerator, out)
    for step in (1, 2):
        first.log({"train/loss": 1.0 / step}, step=step)
    first.finish()

    second = make_tracker(accelerator, out)  # no checkpoint, so no resume_run_id: training starts over
    assert second.run_id == first.run_id
    for step in (1, 2, 3):
        second.log({"train/loss": 1.0 / step}, step=step)
    second.finish()
    dirs = offline_dirs(wandb_env, first.run_id)
    assert [r["_step"] for r in synced_history(dirs, first.run_id)] == [1, 2, 3]  # one run, each step once

    other = make_tracker(accelerator, tmp_path / "elsewhere")
    assert other.run_id != first.run_id  # another output_dir is another run
    other.finish()


KILLED_ATTEMPT = """
import os, signal, sys
from accelerate import Accelerator
from qa.tracking.tracker import Tracker
tracker = Tracker(Accelerator(cpu=True, log_with="wandb"), output_dir=sys.argv[1], report_to="wandb", project="p")
print(tracker.run_id, flush=True)
for step in (1, 2, 3, 4):
    tracker.log({"train/loss": 1.0 / step}, step=step)
os.kill(os.getpid(), signal.SIGKILL)  # as a scheduler would: nothing is flushed
"""


def test_a_resume_after_a_kill_sends_the_rows_wandb_had_not_written(accelerator: Any, wandb_env: Path,
                                                                    tmp_path: Path) -> None:
    """Found by the fault campaign (seed 273878287): wandb writes its rows in batches (every 15 s offline), so a
    kill lost the last rows, and the resume did not send them again because metrics.jsonl had them."""
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", KILLED_ATTEMPT, str(out)], capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -9, killed.stderr
    run_id = killed.stdout.split()[0]
    assert [line["step"] for line in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]

    second = make_tracker(accelerator, out, resume_run_id=run_id, resume_step=3)  # the checkpoint of step 3
    for step in (4, 5):  # the resume trains step 4 again, then goes on
        second.log({"train/loss": 1.0 / step}, step=step)
    second.finish()
    rows = synced_history(offline_dirs(wandb_env, run_id), run_id)
    assert [(r["_step"], r["train/loss"]) for r in rows] == [(s, 1.0 / s) for s in (1, 2, 3, 4, 5)]


def test_init_raising_continues_without_wandb(
    accelerator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import wandb

    def broken_init(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("wandb is down")

    monkeypatch.setattr(wandb, "init", broken_init)
    caplog.set_level(logging.DEBUG, logger="qa.tracking")
    out = tmp_path / "out"
    tracker = make_tracker(accelerator, out)
    assert tracker.mode is None and not tracker.wandb_active and accelerator.trackers == []
    for step in (1, 2, 3):
        tracker.log({"train/loss": 0.5}, step=step)
    tracker.log_table("eval/samples", columns=["a"], rows=[["b"]], step=3)
    tracker.log_checkpoint(step=3, uri="s3://b/p")
    tracker.summary({"best/f1": 1.0})
    tracker.finish()

    assert len(tracking_warnings(caplog)) == 1
    assert [line["step"] for line in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3]
    assert tracker.sync_command is None and "wandb sync" not in capsys.readouterr().out


def test_online_init_failure_falls_back_to_offline(
    accelerator: Any, wandb_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import wandb

    # Online attempt against a closed local port: wandb retries until init_timeout, then raises.
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "2")
    real_init = wandb.init
    modes: list[Any] = []

    def recording_init(*args: Any, **kwargs: Any) -> Any:
        modes.append(kwargs.get("mode"))
        return real_init(*args, **kwargs)

    monkeypatch.setattr(wandb, "init", recording_init)
    caplog.set_level(logging.DEBUG, logger="qa.tracking")
    out = tmp_path / "out"
    tracker = make_tracker(accelerator, out)
    assert modes == [None, "offline"]
    assert tracker.mode == "offline" and tracker.wandb_active
    tracker.log({"train/loss": 0.25}, step=1)
    tracker.finish()

    (warning,) = tracking_warnings(caplog)
    assert "offline" in warning.getMessage()
    (run_dir,) = offline_dirs(wandb_env, tracker.run_id)
    records = read_wandb_records(run_dir / f"run-{tracker.run_id}.wandb")
    assert [r["_step"] for r in history_rows(records)] == [1]
    assert [line["step"] for line in read_jsonl(out / "metrics.jsonl")] == [1]


def test_online_and_offline_init_failing(
    accelerator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import wandb

    calls: list[Any] = []

    def broken_init(*args: Any, **kwargs: Any) -> None:
        calls.append(kwargs.get("mode"))
        raise ConnectionError("unreachable")

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr(wandb, "init", broken_init)
    caplog.set_level(logging.DEBUG, logger="qa.tracking")
    tracker = make_tracker(accelerator, tmp_path / "out")
    assert calls == [None, "offline"]  # exactly one offline retry
    assert not tracker.wandb_active
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.finish()
    assert len(tracking_warnings(caplog)) == 1
    assert len(read_jsonl(tmp_path / "out" / "metrics.jsonl")) == 1


def test_wandb_raising_mid_run_warns_once(
    accelerator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    tracker = make_tracker(accelerator, out)
    tracker.log({"train/loss": 1.0}, step=1)
    run = accelerator.get_tracker("wandb", unwrap=True)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("wandb service died")

    monkeypatch.setattr(run, "log", broken)
    monkeypatch.setattr(run, "log_artifact", broken)
    monkeypatch.setattr(run, "summary", SimpleNamespace(update=broken))
    caplog.set_level(logging.DEBUG, logger="qa.tracking")
    for step in range(2, 7):
        tracker.log({"train/loss": 1.0 / step}, step=step)
    tracker.log_table("eval/samples", columns=["a"], rows=[["b"]], step=6)
    tracker.log_checkpoint(step=6, uri="s3://b/p")
    tracker.summary({"best/f1": 1.0})
    monkeypatch.undo()  # let the run close normally
    tracker.finish()

    assert len(tracking_warnings(caplog)) == 1
    assert [line["step"] for line in read_jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_secrets_never_reach_disk_or_console(
    accelerator: Any, wandb_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    aws = "SENTINEL_aws_secret_8f3a9c"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws)
    monkeypatch.setenv("HF_TOKEN", "SENTINEL_hf_token_77d2")
    monkeypatch.setenv("WANDB_API_KEY", "SENTINEL" + "w" * 32)  # WANDB_MODE=offline stays set
    out = tmp_path / "out"
    config = {
        "hub_token": "SENTINEL_cfg_hub_token",
        "storage": {"s3_secret": "SENTINEL_cfg_s3", "endpoint": f"http://user:{aws}@minio:9000"},
        "max_tokens": 384,
    }
    tracker = make_tracker(accelerator, out, config=config, run_name=f"run-{aws}")
    tracker.log({"train/loss": 1.0, "train/note": f"key={aws}"}, step=1)
    tracker.log_table("eval/samples", columns=["context"], rows=[[f"leak {aws}"]], step=1)
    tracker.log_checkpoint(step=1, uri=f"s3://bucket/{aws}/ckpt")
    tracker.summary({"final/msg": f"done {aws}"})
    tracker.finish()

    files = [p for root in (out, wandb_env) for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.suffix == ".wandb" for p in files) and (out / "metrics.jsonl") in files
    leaking = [str(p) for p in files if b"SENTINEL" in p.read_bytes()]
    assert leaking == []
    captured = capsys.readouterr()
    assert "SENTINEL" not in captured.out + captured.err
    assert read_jsonl(out / "metrics.jsonl")[0]["train/note"] == f"key={REDACTED}"


def test_non_main_rank_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Importing wandb now would fail: proves non-main ranks never import it.
    monkeypatch.setitem(sys.modules, "wandb", None)
    fake = SimpleNamespace(is_main_process=False, num_processes=1, trackers=[], log_with=["wandb"])
    out = tmp_path / "out"
    tracker = Tracker(
        fake,  # type: ignore[arg-type]
        output_dir=out, report_to="wandb", config={"a": 1}, resume_run_id="abc12345",
    )
    assert tracker.run_id == "abc12345" and tracker.metrics_path is None
    tracker.log({"train/loss": 1.0}, step=1)
    tracker.log_table("t", columns=["a"], rows=[["b"]], step=1)
    tracker.log_checkpoint(step=1, uri="s3://b/p")
    tracker.summary({"x": 1})
    tracker.finish()
    assert not out.exists()


def test_report_to_none_writes_files_only(
    accelerator: Any, wandb_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    tracker = make_tracker(accelerator, out, report_to="none")
    tracker.log({"train/loss": 2.0}, step=5)
    tracker.finish()
    assert tracker.mode is None and accelerator.trackers == []
    assert not (wandb_env / "wandb").exists()
    assert read_jsonl(out / "metrics.jsonl")[0]["train/loss"] == 2.0
    assert "step 5 | loss 2.0000" in capsys.readouterr().out


