"""Secrets never leave the process: config keys and environment values that look like credentials become ``***``."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

REDACTED = "***"


# --------------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------------

# Whole words only: "max_tokens", "tokenizer" or "keys" are not secrets, "hub_token" and "apiKey" are.
_SECRET_WORDS = frozenset(
    {
        "key",
        "apikey",
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "passphrase",
        "credential",
        "credentials",
        "auth",
        "authorization",
    }
)
# Tokenizer special tokens are public vocabulary entries ("[PAD]"), not credentials.
_PUBLIC_TOKEN_NAMES = re.compile(r"^(pad|bos|eos|cls|sep|mask|unk|special|additional_special)_tokens?(_id)?$")
# Values shorter than this are not scrubbed from text: replacing "1" or "true" everywhere would mangle
# every log line while protecting nothing a real credential looks like.
_MIN_ENV_SECRET_LEN = 8
# The shell's current directories, not passwords: scrubbing them would mangle every saved path.
_WORKING_DIRECTORY_NAMES = frozenset({"pwd", "oldpwd"})


def _name_words(name: str) -> list[str]:
    # Split snake_case, kebab-case, dotted paths and camelCase alike ("hubToken" -> hub, token).
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


@functools.lru_cache(maxsize=4096)  # env var names and metric keys repeat on every log call
def is_secret_name(name: str) -> bool:
    """True if a config key or environment variable name looks like it holds a credential."""
    normalized = "_".join(_name_words(name))
    if _PUBLIC_TOKEN_NAMES.match(normalized) or normalized in _WORKING_DIRECTORY_NAMES:
        return False
    return any(word in _SECRET_WORDS for word in _name_words(name))


def secret_env_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables, longest first (so overlapping ones fully go)."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if v and len(v) >= _MIN_ENV_SECRET_LEN and is_secret_name(k)}
    return sorted(values, key=len, reverse=True)


def _scrub_text(text: str, env_secrets: Sequence[str]) -> str:
    for value in env_secrets:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def _redact(obj: Any, env_secrets: Sequence[str], under_secret_key: bool) -> Any:
    if isinstance(obj, str):
        return REDACTED if under_secret_key else _scrub_text(obj, env_secrets)
    if isinstance(obj, bytes):
        return REDACTED if under_secret_key else obj
    if isinstance(obj, os.PathLike):
        return _redact(os.fspath(obj), env_secrets, under_secret_key)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            secret = under_secret_key or (isinstance(key, str) and is_secret_name(key))
            new_key = _scrub_text(key, env_secrets) if isinstance(key, str) else key
            out[new_key] = _redact(value, env_secrets, secret)
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = [_redact(v, env_secrets, under_secret_key) for v in obj]
        return items if isinstance(obj, (list, set, frozenset)) else tuple(items)
    # Numbers, bools and None are never credentials, so "max_tokens": 512 or
    # "num_key_value_heads": 8 survive even though their names contain a secret-looking word.
    return obj


def redact(obj: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Return a copy of ``obj`` that is safe to log.

    * Under a key whose name looks secret (see :func:`is_secret_name`), every string (also inside
      nested lists/dicts) becomes ``"***"``; numbers, bools and None are kept because credentials
      are strings and counts such as ``max_tokens`` are useful.
    * Anywhere else, every occurrence of the value of a secret-looking environment variable
      (``AWS_SECRET_ACCESS_KEY``, ``WANDB_API_KEY``, ``HF_TOKEN``...; at least 8 characters) inside a
      string is replaced by ``"***"``.

    Mappings become dicts, dataclasses become dicts, sets become lists; the input is not modified.
    """
    return _redact(obj, secret_env_values(environ), under_secret_key=False)


def redact_argv(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """Command-line words with the values of secret-looking options (``--x_token V``, ``--x_key=V``) hidden."""
    env_secrets = secret_env_values(environ)
    out: list[str] = []
    hide_next = False
    for word in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        if word.startswith("--"):
            name, eq, _ = word[2:].partition("=")
            if is_secret_name(name):
                if eq:
                    out.append(f"--{name}={REDACTED}")
                else:
                    out.append(word)
                    hide_next = True
                continue
        out.append(_scrub_text(word, env_secrets))
    return out


def describe_error(exc: BaseException) -> str:
    """``exc`` as one short, redacted line (its type and the first line of its message)."""
    # wandb's messages run over several lines (hints, URLs); one line is enough for a warning.
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return redact(text if len(text) <= 300 else text[:297] + "...")
