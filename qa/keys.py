"""How a config key is declared: a dataclass field with its default and the one line ``train.py --help`` prints.

Each component declares its keys once, in the frozen dataclass of its folder's ``settings.py``; the parser
(``qa/config/load.py``) builds the command line, the ``--help`` groups and YAML loading from those classes.
Help text goes through argparse's %-formatting, so it must not contain a bare ``%``.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from qa.errors import ConfigError


def key(default: Any, text: str) -> Any:
    """A config key: its default and its one-line description."""
    return field(default=default, metadata={"help": text})


def list_key(text: str) -> Any:
    """A list-valued key, empty by default (``--key a b`` or ``key: [a, b]``)."""
    return field(default_factory=list, metadata={"help": text})


def need(cond: bool, name: str, message: str) -> None:
    """A section's own value check: raises ConfigError naming the key."""
    if not cond:
        raise ConfigError(f"{name}: {message}")
