"""The dry-run plan (placeholder until the launch issue's planner lands)."""

from __future__ import annotations

from qa.config import TrainConfig


def describe_plan(cfg: TrainConfig) -> str:
    return "\n".join(f"{k}: {v}" for k, v in cfg.to_dict().items())
