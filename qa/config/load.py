"""YAML file + ``--key value`` overrides -> a checked :class:`TrainConfig`."""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from qa.config.checks import check_config as _check
from qa.config.schema import TrainConfig
from qa.errors import ConfigError

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the annotation; accept YAML-ish strings from the command line."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            if type(None) in options:
                return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(key, value, opt)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not valid ({'; '.join(errors)})")
    if origin is Literal:
        allowed = get_args(hint)
        if isinstance(value, bool):
            # YAML 1.1 reads a bare `no` as False: `mixed_precision: no` must still mean "no".
            value = {False: "no", True: "yes"}[value]
        for a in allowed:
            if value == a or (isinstance(value, str) and str(a) == value):
                return a
        raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
    if origin is list:
        (item,) = get_args(hint)
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(key, v, item) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint}")  # pragma: no cover - guards new fields




def from_dict(values: dict[str, Any], *, source: str = "config", check_files: bool = True) -> TrainConfig:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; see qa/config.py for the valid keys")
    kwargs = {k: _coerce(k, v, _HINTS[k]) for k, v in values.items()}
    cfg = TrainConfig(**kwargs)
    _check(cfg, check_files=check_files)
    return cfg


def _parse_overrides(argv: Sequence[str]) -> tuple[str | None, dict[str, Any]]:
    config_path = None
    overrides: dict[str, Any] = {}
    i = 0
    argv = list(argv)
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; use --key value")
        key, eq, val = arg[2:].partition("=")
        key = key.replace("-", "_")
        if not eq:
            if key == "help":
                raise ConfigError("usage: train.py --config FILE.yaml [--key value ...]; keys: "
                                  + ", ".join(_FIELDS))
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is None or nxt.startswith("--"):
                # A bare boolean flag such as --dry_run means true.
                if key in _HINTS and _HINTS[key] is bool:
                    val = "true"
                else:
                    raise ConfigError(f"--{key}: missing value")
            else:
                val = nxt
                i += 1
        i += 1
        if key == "config":
            config_path = val
        else:
            if key not in _FIELDS:
                raise ConfigError(f"--{key}: unknown option; see qa/config.py for the valid keys")
            # Let YAML type plain scalars (numbers, null, lists) but keep strings as typed.
            try:
                parsed = yaml.safe_load(val)
            except yaml.YAMLError:
                parsed = val
            overrides[key] = val if isinstance(parsed, dict) else parsed
    return config_path, overrides


def load_config(argv: Sequence[str] | None = None, *, check_files: bool = True) -> TrainConfig:
    """``--config FILE`` (YAML), then ``--key value`` overrides; raises ConfigError naming the key."""
    argv = sys.argv[1:] if argv is None else argv
    config_path, overrides = _parse_overrides(argv)
    values: dict[str, Any] = {}
    if config_path is not None:
        p = Path(config_path)
        if not p.is_file():
            raise ConfigError(f"--config: file not found: {config_path}")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{config_path}: invalid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_path}: expected a mapping of key: value")
        unknown = sorted(set(loaded) - set(_FIELDS))
        if unknown:
            raise ConfigError(f"{config_path}: unknown key(s) {unknown}")
        values.update(loaded)
    values.update(overrides)
    return from_dict(values, source=config_path or "command line", check_files=check_files)


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    """The resolved config, secrets redacted: it lands in output dirs, checkpoints and buckets."""
    from qa.tracking.redaction import redact

    Path(path).write_text(yaml.safe_dump(redact(cfg.to_dict()), sort_keys=False))
