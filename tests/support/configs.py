"""Run configs for tests: flat keys as users write them, through the same parser as train.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qa.config import Config, make_config
from qa.config.load import ConfigParser, _convert_mapping, resolve_repo_path
from qa.preflight.config_checks import check_config


def from_mapping(values: Mapping[str, Any], *, source: str = "config", check_files: bool = True) -> Config:
    """A checked config from ``key: value`` pairs as read from YAML (each value through its key's parser)."""
    converted = _convert_mapping(ConfigParser(), values, source)
    if "deepspeed" in converted:
        converted["deepspeed"] = resolve_repo_path(converted["deepspeed"])
    cfg = make_config(**converted)
    check_config(cfg, check_files=check_files)
    return cfg


def ds_sections(cfg: Config) -> tuple[Any, Any, Any]:
    """The sections qa.distributed.accelerator.load_deepspeed_config takes."""
    return cfg.distributed, cfg.optimizer, cfg.batch
