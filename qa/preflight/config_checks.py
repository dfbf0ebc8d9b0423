"""Checks across sections of the run config (each section checks its own values: its ``check``), and the files
it names. Every message names its key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qa.checkpoint.location import is_store_uri
from qa.checkpoint.output_dir import OutputDirUse
from qa.config import Config, load_config
from qa.keys import need


def load_and_check(argv: Sequence[str] | None = None, *, check_files: bool = True) -> Config:
    """The run config from ``--config`` and ``--key value`` (qa.config.load_config), checked across sections."""
    cfg = load_config(argv)
    check_config(cfg, check_files=check_files)
    return cfg


def check_config(cfg: Config, *, check_files: bool = True) -> None:
    run, data = cfg.run, cfg.data
    need(cfg.optimizer.learning_rate > 0 or not run.do_train, "learning_rate", "must be positive when training")
    if run.do_train:
        need(cfg.schedule.num_train_epochs > 0 or cfg.schedule.max_train_steps is not None, "num_train_epochs",
             "must be positive unless max_train_steps is set")
    has_hub = data.dataset_name is not None
    if run.do_train:
        need(has_hub or data.train_file is not None, "train_file", "set train_file or dataset_name to train")
    if run.do_eval:
        need(has_hub or data.validation_file is not None, "validation_file",
             "set validation_file or dataset_name to evaluate")
    if run.do_predict:
        need(data.test_file is not None, "test_file", "set test_file (SQuAD JSON or JSONL; answers optional) "
             "to predict")
    need(not cfg.checkpoint.keep_training_when_disk_full or cfg.storage.s3_uri is not None,
         "keep_training_when_disk_full", "needs s3_uri (without a store the local checkpoints are the only copies)")
    r = cfg.checkpoint.resume_from_checkpoint
    need(r is None or run.do_train, "resume_from_checkpoint",
         "only for training; to evaluate a run, pass its exported model (model_name_or_path: OUTPUT_DIR/final) "
         "and resume_from_checkpoint: null")
    if check_files:
        for key, path, used in (("train_file", data.train_file, run.do_train),
                                ("validation_file", data.validation_file, run.do_eval),
                                ("test_file", data.test_file, run.do_predict),
                                ("deepspeed", cfg.distributed.deepspeed, True)):
            if used and path is not None and not Path(path).is_file():
                need(False, key, f"file not found: {path}{_where(path, key)}")
        if r is not None and r != "auto" and not is_store_uri(r) and not Path(r).is_dir():
            need(False, "resume_from_checkpoint", f"directory not found: {r}{_where(r, 'resume_from_checkpoint')}")


def _where(path: str, key: str) -> str:
    """Where a relative path was looked for, for the not-found message."""
    if Path(path).is_absolute():
        return ""
    also = ", then the config file's directory and those above it, then the repository" if key == "deepspeed" else ""
    return f" (relative paths are read from {Path.cwd()}{also})"


def output_dir_use(cfg: Config) -> OutputDirUse:
    """How this run means to use its output_dir (qa.checkpoint.output_dir decides whether it may)."""
    return OutputDirUse(
        output_dir=Path(cfg.run.output_dir), overwrite_output_dir=cfg.run.overwrite_output_dir,
        resume_from_checkpoint=cfg.checkpoint.resume_from_checkpoint, do_train=cfg.run.do_train,
        inputs={"model_name_or_path": cfg.model.model_name_or_path, "tokenizer_name": cfg.model.tokenizer_name,
                "train_file": cfg.data.train_file, "validation_file": cfg.data.validation_file})
