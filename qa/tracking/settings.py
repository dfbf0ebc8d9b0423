"""The tracking section of the run config (``report_to`` and the ``wandb_*`` keys)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrackingSettings:
    output_dir: str  # metrics.jsonl and the offline W&B directory go here
    report_to: str
    project: str
    entity: str | None
    run_name: str
    group: str
    tags: list[str] = field(default_factory=list)
