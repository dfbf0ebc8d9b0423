"""The tracking section (``report_to`` and the ``wandb_*`` keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from qa.keys import key, list_key


@dataclass(frozen=True)
class TrackingSettings:
    TITLE: ClassVar[str] = "tracking"
    report_to: Literal["wandb", "none"] = key("wandb", "Experiment tracker (--with_tracking is --report_to wandb)")
    wandb_project: str = key("squad-qa", "W&B project")
    wandb_entity: str | None = key(None, "W&B entity (team or user)")
    wandb_tags: list[str] = list_key("W&B tags: --wandb_tags a b")
    wandb_group: str | None = key(None, "W&B group; null: the run name")
