"""The console line, secret redaction and the W&B init arguments: pure functions, no run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from qa.tracking.console import format_console_line
from qa.tracking.environment import git_commit
from qa.tracking.redaction import REDACTED, is_secret_name, redact, redact_argv
from qa.tracking.tracker import log_with_for
from qa.tracking.wandb_sink import tracker_init_kwargs


def test_format_console_line_compact_fixed_precision() -> None:
    line = format_console_line(
        {
            "train/loss": 1.23456,
            "train/learning_rate": 3e-5,
            "train/grad_norm": 0.81234,
            "train/samples_per_sec": 45.234,
            "train/epoch": 1.5,
            "eval/f1": 87.12345,
            "tokens_seen": 123456,
        },
        step=120,
    )
    assert line == (
        "step 120 | loss 1.2346 | lr 3.00e-05 | grad_norm 0.812 | 45.2 samples/s | epoch 1.5 "
        "| eval/f1 87.12 | tokens_seen 123456"
    )


def test_format_console_line_odd_values() -> None:
    line = format_console_line(
        {"loss": float("nan"), "eval/tokens_per_second": 10, "note": "x" * 100, "hist": [1, 2], "none": None,
         "amp": True, "step": 5, "time": 1.0, "tiny": 1e-7, "big": 12345.678},
        step=7,
    )
    assert line == (
        f"step 7 | loss nan | 10.0 eval/tokens/s | note {'x' * 37}... | amp true "
        "| tiny 1.00e-07 | big 12345.7"
    )


@pytest.mark.parametrize(
    "name, secret",
    [
        ("hub_token", True), ("s3_secret", True), ("api_key", True), ("apiKey", True), ("APIKey", True),
        ("AWS_SECRET_ACCESS_KEY", True), ("AWS_SESSION_TOKEN", True), ("WANDB_API_KEY", True),
        ("db-password", True), ("passwd", True), ("Authorization", True), ("gcp_credentials", True),
        ("max_tokens", False), ("tokenizer_name", False), ("num_tokens", False), ("keys", False),
        ("pad_token", False), ("eos_token_id", False), ("TOKENIZERS_PARALLELISM", False),
        ("author", False), ("learning_rate", False), ("monkey", False), ("PWD", False), ("OLDPWD", False),
        ("db_pwd", True),
    ],
)
def test_is_secret_name(name: str, secret: bool) -> None:
    assert is_secret_name(name) is secret


def test_redact_by_key_and_env_value() -> None:
    env = {
        "AWS_SECRET_ACCESS_KEY": "SENTINEL_aws_0123456789",
        "HF_TOKEN": "hf_SENTINEL_abcdef",
        "SHORT_TOKEN": "abc",  # too short to scrub from text
        "HOME": "/root/SENTINEL_not_secret_name",
    }
    cfg = {
        "hub_token": "hf_SENTINEL_abcdef",
        "storage": {"s3_secret": "s3pass", "endpoint": "http://x", "credentials": {"user": "bob", "uid": 7}},
        "max_tokens": 512,
        "num_key_value_heads": 8,
        "api_key": None,
        "pad_token": "[PAD]",
        "notes": ["uses SENTINEL_aws_0123456789 inline", ("abc",)],
        "SENTINEL_aws_0123456789": 1,
        "home": "/root/SENTINEL_not_secret_name",
    }
    out = redact(cfg, environ=env)
    assert out == {
        "hub_token": REDACTED,
        "storage": {
            "s3_secret": REDACTED, "endpoint": "http://x", "credentials": {"user": REDACTED, "uid": 7}
        },
        "max_tokens": 512,
        "num_key_value_heads": 8,
        "api_key": None,
        "pad_token": "[PAD]",
        "notes": [f"uses {REDACTED} inline", ("abc",)],
        REDACTED: 1,
        "home": "/root/SENTINEL_not_secret_name",
    }
    assert cfg["hub_token"] == "hf_SENTINEL_abcdef"  # input untouched


def test_redact_dataclass_and_scalars(monkeypatch: pytest.MonkeyPatch) -> None:
    @dataclass
    class Cfg:
        model: str
        hub_token: str | None

    monkeypatch.setenv("MY_SECRET", "topsecretvalue")
    assert redact(Cfg("bert", "t0k3n-value")) == {"model": "bert", "hub_token": REDACTED}
    assert redact("a topsecretvalue b") == f"a {REDACTED} b"
    assert redact(3.5) == 3.5 and redact(None) is None


def test_log_with_for() -> None:
    assert log_with_for("wandb") == "wandb"
    assert log_with_for("WandB") == "wandb"
    assert log_with_for("none") is None
    assert log_with_for(None) is None
    with pytest.raises(ValueError):
        log_with_for("tensorboard")


def test_tracker_init_kwargs() -> None:
    no_creds: dict[str, str] = {}
    kw = tracker_init_kwargs(run_id="abc12345", run_name="r", tags="a, b", environ=no_creds)["wandb"]
    assert kw == {"id": "abc12345", "name": "r", "tags": ["a", "b"], "group": "r", "mode": "offline"}

    kw = tracker_init_kwargs(
        run_id="abc12345", entity="team", group="g", resume=True, wandb_dir="/tmp/x",
        environ={"WANDB_API_KEY": "k" * 40},
    )["wandb"]
    assert kw == {"id": "abc12345", "entity": "team", "group": "g", "resume": "allow", "dir": "/tmp/x"}

    # An explicit WANDB_MODE / WANDB_DIR is the user's choice and wins.
    kw = tracker_init_kwargs(
        run_id="x", wandb_dir="/tmp/x", environ={"WANDB_MODE": "online", "WANDB_DIR": "/d"}
    )
    assert kw == {"wandb": {"id": "x"}}


def test_git_commit_outside_a_repo_is_none(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None
    assert git_commit(tmp_path / "missing") is None


def test_redact_argv_hides_secret_flag_values() -> None:
    argv = ["train.py", "--s3_sse_kms_key_id", "K-123", "--learning_rate", "1e-5", "--hub_token=abc",
            "--max_tokens", "5", "--note", "uses verysecretvalue inside"]
    assert redact_argv(argv, {"AWS_SECRET_ACCESS_KEY": "verysecretvalue"}) == [
        "train.py", "--s3_sse_kms_key_id", "***", "--learning_rate", "1e-5", "--hub_token=***",
        "--max_tokens", "5", "--note", "uses *** inside"]
