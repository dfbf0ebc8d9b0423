"""YAML file + ``--key value`` overrides -> a :class:`Config` whose sections passed their own checks.

The command line is parsed by ``transformers.HfArgumentParser``: transformers is already a dependency, people who
ran its ``run_qa.py`` examples know its flags (``--key value``, a bare ``--flag`` for true, ``--no_flag``,
lists as ``--key a b``), and it turns the dataclass fields (type, default, ``metadata["help"]``) into argparse
arguments, so ``train.py --help`` lists every key with its type, default and description. It takes several
dataclasses: here, the sections of ``qa/config/sections.py``, one ``--help`` group each.

Written by hand on top of it, because it does not do these:

- YAML as the layer under the command line, with errors naming the file and the key. Its ``parse_yaml_file``
  builds the dataclass from the YAML unchecked and cannot be combined with overrides; here every YAML value goes
  through the argparse type function of its key (so YAML and ``--key value`` accept the same things) and
  seeds the namespace that argparse then overrides.
- Unknown keys, all of them at once, get a difflib "did you mean" or, for flags of HF's run_qa scripts, what to
  do instead (qa/config/foreign_flags.py), and argparse's own errors (usage + SystemExit(2)) become
  ``ConfigError`` (train.py prints one line and exits 2); ``--help`` still exits 0.
- ``null``/``none`` for Optional keys (HfArgumentParser types ``int | None`` as plain ``int``), quoted values as
  literal strings (``--mixed_precision "'no'"``), and ``checkpointing_steps: int | "epoch" | None`` (it refuses
  any Union but Optional): parsed as a string whose digits become an int.
- Relative ``deepspeed`` paths that do not depend on the working directory (:func:`resolve_repo_path`).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import os
import re
import sys
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, get_args

import yaml
from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from qa.config.foreign_flags import unknown_keys_message
from qa.config.sections import SECTIONS, Config, make_config
from qa.errors import ConfigError

_FIELDS = {f.name: f for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
_HINTS = {k: v for cls in SECTIONS.values() for k, v in typing.get_type_hints(cls).items()}
_REPO = Path(__file__).resolve().parents[2]
_NULLS = frozenset({"null", "none", "~"})
# What HfArgumentParser is told a field's type is, where the schema's type is one it refuses.
_PARSE_AS: dict[str, Any] = {"checkpointing_steps": str | None}
_KINDS: dict[Any, tuple[str, str]] = {int: ("an integer", "INT"), float: ("a number", "FLOAT"),
                                      str: ("a string", "STR"), string_to_bool: ("true or false", "BOOL")}


@functools.cache
def _scheduler_types() -> tuple[str, ...]:
    # transformers.SchedulerType lives in a module that imports torch, so only the parser asks for it.
    from transformers import SchedulerType

    return tuple(s.value for s in SchedulerType)


def _steps_or_epoch(text: str) -> int | str:
    return text if text == "epoch" else int(text)


class _Convert:
    """The argparse type of one key; YAML values go through it too, so both accept the same text."""

    def __init__(self, base: Callable[[str], Any], kind: str, *, optional: bool,
                 choices: Sequence[str] | None = None) -> None:
        self.base, self.kind, self.optional, self.choices = base, kind, optional, choices

    def __call__(self, text: str) -> Any:
        if self.choices is not None and text in self.choices:
            return text  # report_to: none is a choice, not null
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1]  # quoted, as in YAML: a literal string, never null
        elif text.strip().lower() in _NULLS:
            if self.optional:
                return None
            raise argparse.ArgumentTypeError(f"cannot be null (expected {self.kind})")
        try:
            value = self.base(text)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(f"expected {self.kind}, got {text!r}") from None
        if self.choices is not None and value not in self.choices:
            raise argparse.ArgumentTypeError(f"expected {self.kind}, got {text!r}")
        return value


def _raise_config_error(message: str) -> NoReturn:
    # argparse.ArgumentParser.error prints usage and exits 2; train.py wants one line and its own exit.
    # "argument --key/--key-alias: msg" -> "--key: msg".
    raise ConfigError(re.sub(r"^argument (--\w+)[^:]*: ", r"\1: ", message))


class _PreParser(argparse.ArgumentParser):
    """Finds --config before the real parse: the YAML values must be in place before argparse runs."""

    def __init__(self) -> None:
        super().__init__(add_help=False, allow_abbrev=False)
        self.add_argument("--config", action="append", default=[])

    def error(self, message: str) -> NoReturn:
        _raise_config_error(message)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """One ``--key TYPE`` per line: HfArgumentParser's ``--key-with-dashes`` aliases work but are not listed."""

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        args = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{action.option_strings[0]} {args}"


class _WithTracking(argparse.Action):
    """run_qa_no_trainer.py's ``--with_tracking``: ``--report_to wandb`` (``--with_tracking false``: none)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        namespace.report_to = "wandb" if values else "none"


class ConfigParser(HfArgumentParser):
    """``train.py``'s arguments: one per key, a ``--help`` group per section, plus --config/--with_tracking."""

    def __init__(self) -> None:
        self.groups: dict[str, Any] = {}
        super().__init__(
            tuple(SECTIONS.values()), prog="train.py", allow_abbrev=False,  # a typo must not silently match a longer key
            usage="train.py [-h] [--config FILE.yaml] [--key value ...]", formatter_class=_HelpFormatter,
            description="Fine-tune an extractive QA model. Keys come from --config FILE.yaml (key: value) "
                        "and are overridden by --key value.",
            epilog="Booleans: --flag (true), --flag true|false, --no_flag for those on by default. "
                   "null or none clears an optional key. Lists: --wandb_tags a b (or a,b).")
        self.add_argument("--config", action="append", metavar="FILE.yaml", default=argparse.SUPPRESS,
                          help="YAML file of key: value pairs; relative deepspeed paths in it may be relative "
                               "to the repository it lives in")
        self.groups["tracking"].add_argument(
            "--with_tracking", "--with-tracking", action=_WithTracking, nargs="?", const=True,
            default=argparse.SUPPRESS, metavar="BOOL", type=_Convert(string_to_bool, "true or false", optional=False),
            help="Alias of --report_to wandb (false: --report_to none), as in run_qa_no_trainer.py")
        # The argument of each key (HfArgumentParser's --no_<flag> complements share the dest; skip them).
        self.actions = {a.dest: a for a in self._actions if a.nargs != 0}

    def _add_dataclass_arguments(self, dtype: Any) -> None:
        group = self.groups[dtype.TITLE] = self.add_argument_group(dtype.TITLE)
        for f in dataclasses.fields(dtype):
            hint = _HINTS[f.name]
            f = copy.copy(f)  # HfArgumentParser rewrites field.type: leave the section's own fields alone
            f.type = _PARSE_AS.get(f.name, hint)
            first = len(self._actions)
            self._parse_dataclass_field(group, f)
            for action in self._actions[first:]:
                _finish(action, hint)

    def error(self, message: str) -> NoReturn:
        _raise_config_error(message)

    def yaml_value(self, key: str, value: Any) -> Any:
        """A YAML value through the same type function as its ``--key`` text; ArgumentTypeError if wrong."""
        action = self.actions[key]
        conv: _Convert = action.type
        if action.nargs == "+":
            items = value if isinstance(value, list) else [value]
            return _split_commas([_yaml_scalar(conv, v) for v in items])
        if isinstance(value, list | dict):
            raise argparse.ArgumentTypeError(f"expected {conv.kind}, got {value!r}")
        return _yaml_scalar(conv, value)


def _finish(action: argparse.Action, hint: Any) -> None:
    """Our type function and a metavar that says the type, on an argument HfArgumentParser made."""
    if action.nargs == 0:  # --no_<flag>: works, but one line per key in --help is enough
        action.help = argparse.SUPPRESS
        return
    optional = type(None) in get_args(hint)
    choices: Sequence[str] | None = None
    if action.dest == "checkpointing_steps":
        base, kind, metavar = _steps_or_epoch, "an integer, 'epoch' or null", "INT|epoch"
    else:
        if action.dest == "lr_scheduler_type":
            choices = _scheduler_types()
        elif action.choices is not None:  # a Literal
            choices = tuple(action.choices)
            action.choices = None  # checked by _Convert, so YAML and null get the same message
        base = str if choices is not None else action.type
        kind, metavar = _KINDS[base]
        if choices is not None:
            kind, metavar = f"one of {', '.join(choices)}", "{" + ",".join(choices) + "}"
    action.type = _Convert(base, kind, optional=optional, choices=choices)
    action.metavar = metavar + ("|null" if optional else "")


def _yaml_scalar(conv: _Convert, value: Any) -> Any:
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        if conv.base is string_to_bool:
            return value
        if conv.choices is None or "no" not in conv.choices:
            raise argparse.ArgumentTypeError(f"expected {conv.kind}, got {str(value).lower()} (YAML reads "
                                             "yes/no/on/off/true/false unquoted as booleans; quote it)")
        text = "yes" if value else "no"  # YAML 1.1 reads `mixed_precision: no` as False
    elif isinstance(value, list | dict):
        raise argparse.ArgumentTypeError(f"expected {conv.kind}, got {value!r}")
    else:
        text = str(value)
    return conv(text)


def _split_commas(items: list[Any]) -> list[Any]:
    # `--wandb_tags a,b` and `wandb_tags: a,b` were lists before HfArgumentParser; keep accepting them.
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def _unknown(unknown: Sequence[str], where: str, keys: Sequence[str]) -> ConfigError:
    return ConfigError(f"{where}{unknown_keys_message(unknown, keys)}")


def resolve_repo_path(value: str | None, near: Path | None = None) -> str | None:
    """Find a relative ``deepspeed`` path without depending on the working directory.

    Rule: an absolute path, or a relative one that exists from the current directory, is used as given (so a
    run started from the repository keeps its relative path). Otherwise it is looked up from the directory of
    the YAML file that named it (``near``) and each directory above it (``configs/demo_cpu.yaml`` names
    ``configs/deepspeed/zero2.json``, relative to the repository root above it), then from this package's
    repository root (the default). The first hit is returned absolute; with none, the value is returned as
    given and the file check reports it. Data paths (train_file, ...) are not resolved: they are the user's,
    relative to where they run.
    """
    if value is None or Path(value).is_absolute() or Path(value).exists():
        return value
    bases = [*Path(near).resolve().parents] if near is not None else []
    for base in [*bases, _REPO]:
        if (base / value).is_file():
            return str(base / value)
    return value


def _join_negative_numbers(argv: Sequence[str]) -> list[str]:
    # Python < 3.13 argparse takes "-1e-3" for an option, not a value: `--null_score_diff_threshold -1e-3`.
    out: list[str] = []
    for tok in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and tok.startswith("-") and tok[1:2].isdigit():
            try:
                float(tok)
                out[-1] = f"{out[-1]}={tok}"
                continue
            except ValueError:
                pass
        out.append(tok)
    return out


def _convert_mapping(parser: ConfigParser, values: Mapping[Any, Any], source: str,
                     unknown: list[str] | None = None) -> dict[str, Any]:
    """YAML-ish key: value pairs -> typed values; every error names ``source`` and the key. Unknown keys are
    appended to ``unknown`` when given (the caller reports them with the command line's), else raised together."""
    keys = [*_FIELDS, "with_tracking"]
    out: dict[str, Any] = {}
    strays = [str(k) for k in values if str(k) not in keys]
    if strays and unknown is None:
        raise _unknown(strays, f"{source}: ", keys)
    for raw_key, value in values.items():
        key = str(raw_key)
        if key not in keys:
            unknown.append(key)  # type: ignore[union-attr]  # None raised above
            continue
        try:
            out[key] = parser.yaml_value(key, value)
        except argparse.ArgumentTypeError as e:
            raise ConfigError(f"{source}: {key}: {e}") from None
    if "with_tracking" in out:
        report_to = "wandb" if out.pop("with_tracking") else "none"
        if out.setdefault("report_to", report_to) != report_to:
            raise ConfigError(f"{source}: with_tracking and report_to: {out['report_to']} disagree; set one of them")
    return out


def _refuse_unknown(extras: Sequence[str], in_yaml: Sequence[str], yaml_path: str) -> None:
    """Every unknown key of the YAML file and the command line in one ConfigError."""
    flags: list[str] = []
    for i, tok in enumerate(extras):
        if tok.startswith("-"):
            flags.append(tok.lstrip("-").split("=", 1)[0].replace("-", "_"))
        elif i == 0 or not extras[i - 1].startswith("-") or "=" in extras[i - 1]:
            raise ConfigError(f"unexpected argument {tok!r}; use --key value")
        # else: the value of the unknown flag before it (--hub_model_id me/model)
    keys = [*_FIELDS, "config", "with_tracking"]
    if in_yaml and flags:
        raise ConfigError(f"{yaml_path} and command line: {unknown_keys_message([*in_yaml, *flags], keys)}")
    if in_yaml:
        raise _unknown(in_yaml, f"{yaml_path}: ", keys)
    if flags:
        raise _unknown(flags, "command line: ", keys)


def _read_yaml(path: str) -> dict[Any, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: file not found: {path}")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value")
    return loaded


def load_config(argv: Sequence[str] | None = None) -> Config:
    """``--config FILE`` (YAML), then ``--key value`` overrides; raises ConfigError naming the key.

    Each section checks its own values here; checks across sections (and of files) are qa.preflight's."""
    argv = _join_negative_numbers(sys.argv[1:] if argv is None else argv)
    parser = ConfigParser()
    paths = _PreParser().parse_known_args(argv)[0].config
    if len(paths) > 1:
        raise ConfigError(f"--config given {len(paths)} times ({', '.join(paths)}); give one file and override "
                          "its keys with --key value")
    namespace = argparse.Namespace()
    in_yaml: list[str] = []
    if paths:
        values = _convert_mapping(parser, _read_yaml(paths[0]), paths[0], in_yaml)
        if "deepspeed" in values:
            values["deepspeed"] = resolve_repo_path(values["deepspeed"], near=Path(paths[0]))
        namespace = argparse.Namespace(**values)  # argparse keeps these unless the command line sets the key
    namespace, extras = parser.parse_known_args(argv, namespace=namespace)
    _refuse_unknown(extras, in_yaml, paths[0] if paths else "")
    values = {name: getattr(namespace, name) for name in _FIELDS}
    values["wandb_tags"] = _split_commas(values["wandb_tags"])
    values["deepspeed"] = resolve_repo_path(values["deepspeed"])
    return make_config(**values)


def config_yaml(cfg: Config) -> str:
    """The resolved config as YAML, secrets redacted: it lands in output dirs, checkpoints and buckets."""
    from qa.tracking.redaction import redact

    return yaml.safe_dump(redact(cfg.to_dict()), sort_keys=False)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(config_yaml(cfg))
