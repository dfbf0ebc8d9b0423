"""Config: YAML + overrides, every bad value rejected with the key named, before any model work."""

from __future__ import annotations

from pathlib import Path

import pytest

from qa.config import make_config
from qa.errors import ConfigError
from qa.preflight.config_checks import load_and_check

REPO = Path(__file__).resolve().parents[3]
TRAIN = str(REPO / "data" / "demo" / "train.json")
DEV = str(REPO / "data" / "demo" / "dev.json")


def _base(*extra: str) -> list[str]:
    return ["--train_file", TRAIN, "--validation_file", DEV, "--deepspeed", "null", *extra]


def test_defaults_follow_run_qa_no_trainer() -> None:
    cfg = make_config()
    assert (cfg.data.max_seq_length, cfg.data.doc_stride, cfg.eval.n_best_size, cfg.eval.max_answer_length) == (384, 128, 20, 30)
    assert cfg.model.model_name_or_path == "distilbert-base-cased"


def test_yaml_then_overrides(tmp_path: Path) -> None:
    y = tmp_path / "run.yaml"
    y.write_text(f"train_file: {TRAIN}\nvalidation_file: {DEV}\nlearning_rate: 1.0e-4\nnum_train_epochs: 3\n"
                 "deepspeed: null\nwandb_tags: [a, b]\n")
    cfg = load_and_check(["--config", str(y), "--learning_rate", "5e-5", "--checkpointing_steps", "epoch",
                       "--max_train_steps=7", "--dry_run"])
    assert cfg.optimizer.learning_rate == 5e-5 and cfg.schedule.num_train_epochs == 3.0
    assert cfg.schedule.checkpointing_steps == "epoch" and cfg.schedule.max_train_steps == 7 and cfg.run.dry_run is True
    assert cfg.tracking.wandb_tags == ["a", "b"]
    assert load_and_check(_base("--checkpointing_steps", "100")).schedule.checkpointing_steps == 100
    assert load_and_check(_base("--resume_from_checkpoint", "null")).checkpoint.resume_from_checkpoint is None


@pytest.mark.parametrize("args, key", [
    (["--doc_stride", "384"], "doc_stride"),
    (["--doc_stride", "-1"], "doc_stride"),
    (["--learning_rate", "-1e-5"], "learning_rate"),
    (["--weight_decay", "-0.1"], "weight_decay"),
    (["--per_device_train_batch_size", "0"], "per_device_train_batch_size"),
    (["--per_device_train_batch_size", "eight"], "per_device_train_batch_size"),
    (["--num_train_epochs", "many"], "num_train_epochs"),
    (["--version_2_with_negative", "maybe"], "version_2_with_negative"),
    (["--lr_scheduler_type", "exponential"], "lr_scheduler_type"),
    (["--mixed_precision", "fp8"], "mixed_precision"),
    (["--checkpointing_steps", "often"], "checkpointing_steps"),
    (["--train_file", "/nonexistent/train.json"], "train_file"),
    (["--s3_uri", "bucket/prefix"], "s3_uri"),
    (["--learning_rat", "1e-5"], "learning_rat"),
    (["--adam_beta2", "1.0"], "adam_beta2"),
    (["--max_eval_samples", "0"], "max_eval_samples"),
])
def test_bad_values_name_the_key(args: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_and_check(_base(*args))


def test_unknown_yaml_key_and_missing_file(tmp_path: Path) -> None:
    y = tmp_path / "run.yaml"
    y.write_text("learning_rate: 1.0e-4\nlearnig_rate: 2\n")
    with pytest.raises(ConfigError, match="learnig_rate"):
        load_and_check(["--config", str(y)])
    with pytest.raises(ConfigError, match="not found"):
        load_and_check(["--config", str(tmp_path / "absent.yaml")])


def test_needs_data_and_v2_consistency() -> None:
    with pytest.raises(ConfigError, match="train_file"):
        load_and_check(["--deepspeed", "null", "--validation_file", DEV])
    with pytest.raises(ConfigError, match="version_2_with_negative"):
        load_and_check(["--deepspeed", "null", "--dataset_name", "squad_v2"])
    # eval-only runs need no training data
    cfg = load_and_check(["--deepspeed", "null", "--validation_file", DEV, "--do_train", "false"])
    assert cfg.run.do_train is False


def test_train_py_rejects_bad_config_before_loading_anything(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--doc_stride", "999", "--train_file", TRAIN,
                           "--validation_file", DEV, "--output_dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "doc_stride" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_eval_only_with_resume_is_refused() -> None:
    with pytest.raises(ConfigError, match="resume_from_checkpoint: only for training"):
        load_and_check(["--deepspeed", "null", "--validation_file", DEV, "--do_train", "false",
                     "--resume_from_checkpoint", "auto"])


def test_yaml_no_means_the_string_no(tmp_path: Path) -> None:
    y = tmp_path / "run.yaml"
    y.write_text(f"train_file: {TRAIN}\nvalidation_file: {DEV}\ndeepspeed: null\nmixed_precision: no\n")
    assert load_and_check(["--config", str(y)]).distributed.mixed_precision == "no"
    assert load_and_check(_base("--mixed_precision", "no")).distributed.mixed_precision == "no"
