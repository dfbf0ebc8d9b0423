"""One compact console line per logged step."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

_KEY_RENAMES = {"learning_rate": "lr"}
_RATE_KEY = re.compile(r"^(?P<unit>.+?)_per_s(?:ec|econd)?$")
_MAX_TEXT_LEN = 40


def _short_key(key: str) -> str:
    # Training metrics are the common case; dropping their prefix keeps the line short while
    # "eval/f1" stays distinguishable from a training metric.
    short = key.removeprefix("train/").removeprefix("perf/")
    return _KEY_RENAMES.get(short, short)


def _format_float(key: str, value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if key == "lr" or key.endswith(("/lr", "_lr")):
        return f"{value:.2e}"
    if "loss" in key:
        return f"{value:.4f}"
    if "grad_norm" in key:
        return f"{value:.3f}"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:.1f}"
    if magnitude >= 1e-3 or value == 0:
        return f"{value:.4g}"
    return f"{value:.2e}"


def _format_item(key: str, value: Any) -> str | None:
    short = _short_key(key)
    rate = _RATE_KEY.match(short)
    if rate and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{float(value):.1f} {rate.group('unit')}/s"
    if isinstance(value, bool):
        return f"{short} {str(value).lower()}"
    if isinstance(value, int):
        return f"{short} {value}"
    if isinstance(value, float):
        return f"{short} {_format_float(short, value)}"
    if isinstance(value, str):
        text = value if len(value) <= _MAX_TEXT_LEN else value[: _MAX_TEXT_LEN - 3] + "..."
        return f"{short} {text}"
    return None  # tables, histograms, None: not console material


def format_console_line(metrics: Mapping[str, Any], step: int) -> str:
    """One compact human-readable line, e.g. ``step 120 | loss 1.2345 | lr 3.00e-05 | 45.2 samples/s``.

    Keys keep their order; ``train/`` is dropped, ``learning_rate`` becomes ``lr``; losses get 4
    decimals, learning rates 2-digit scientific notation, grad norms 3 decimals, ``*_per_sec`` /
    ``*_per_second`` / ``*_per_s`` rates 1 decimal with a unit; non-scalar values are skipped.
    """
    parts = [f"step {step}"]
    for key, value in metrics.items():
        if key in ("step", "time"):
            continue
        item = _format_item(key, value)
        if item is not None:
            parts.append(item)
    return " | ".join(parts)
