"""The run configuration: a typed dataclass (``schema``), loading YAML + overrides (``load``), value checks (``checks``)."""

from qa.config.load import load_config, save_config
from qa.config.schema import TrainConfig
from qa.errors import ConfigError

__all__ = ["ConfigError", "TrainConfig", "load_config", "save_config"]
