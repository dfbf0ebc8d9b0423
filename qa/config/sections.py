"""The run config: one frozen section per component, each declared in its own folder's ``settings.py``.

A key is declared once, as a field of its section (``qa/keys.py``); the parser (``qa/config/load.py``) builds the
command line, ``--help`` (one group per section, in this order) and YAML loading from these classes. Adding a key:
one field in its section, plus its test. Key names are unique across sections (users write them flat, as in
``run_qa_no_trainer.py``); code reads ``cfg.<section>.<key>``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from qa.checkpoint.settings import CheckpointSettings, StorageSettings
from qa.config.run import RunSettings
from qa.data.settings import BatchSettings, DataOrder, DataSettings
from qa.distributed.settings import DistributedSettings
from qa.errors import ConfigError
from qa.eval.settings import DecodeSettings, EvalSettings
from qa.lifecycle.settings import PreemptionSettings
from qa.model.settings import ModelSettings, OptimizerSettings
from qa.schedule.settings import ScheduleSettings
from qa.tracking.settings import TrackingSettings


@dataclass(frozen=True)
class Config:
    run: RunSettings
    model: ModelSettings
    data: DataSettings
    batch: BatchSettings
    optimizer: OptimizerSettings
    schedule: ScheduleSettings
    eval: EvalSettings
    distributed: DistributedSettings
    checkpoint: CheckpointSettings
    storage: StorageSettings
    preemption: PreemptionSettings
    tracking: TrackingSettings

    def to_dict(self) -> dict[str, Any]:
        """Every key, flat, as users write them (run_config.yaml, the tracker's config)."""
        return {k: v for section in SECTIONS for k, v in dataclasses.asdict(getattr(self, section)).items()}

    def check(self) -> None:
        """Each section's own value checks (checks across sections: qa.preflight.config_checks)."""
        for section in SECTIONS:
            check = getattr(getattr(self, section), "check", None)
            if check is not None:
                check()

    # Values made of several sections, defined once here.
    @property
    def data_order(self) -> DataOrder:
        return DataOrder.of(self.data, self.batch, self.run.seed)

    @property
    def decode(self) -> DecodeSettings:
        return self.eval.decode(self.data.version_2_with_negative)

    @property
    def resolved_wandb_group(self) -> str:
        return self.tracking.wandb_group or self.run.resolved_run_name


# section attribute -> its class, in --help order
SECTIONS: dict[str, type] = {name: hint for name, hint in typing.get_type_hints(Config).items()}
# key -> the section that declares it
KEY_SECTION: dict[str, str] = {f.name: name for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


def make_config(**keys: Any) -> Config:
    """A config from flat ``key=value`` pairs over the defaults (Python callers: benchmarks, tests). Values are
    taken as given (no text conversion); each section's checks run. ConfigError for an unknown key."""
    unknown = sorted(set(keys) - set(KEY_SECTION))
    if unknown:
        raise ConfigError(f"unknown key(s): {', '.join(unknown)}")
    split: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for k, v in keys.items():
        split[KEY_SECTION[k]][k] = v
    cfg = Config(**{name: SECTIONS[name](**values) for name, values in split.items()})
    cfg.check()
    return cfg


def replace_keys(cfg: Config, **keys: Any) -> Config:
    """``cfg`` with some keys changed (flat names), checked like :func:`make_config`."""
    return make_config(**{**cfg.to_dict(), **keys})
