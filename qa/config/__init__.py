"""The run configuration: a typed dataclass (``schema``), loading YAML + overrides (``load``), value checks
(``checks``), and its split into the sections the components take (``sections``)."""

from qa.config.load import load_config, save_config
from qa.config.schema import TrainConfig
from qa.config.sections import Sections, split_config
from qa.errors import ConfigError

__all__ = ["ConfigError", "Sections", "TrainConfig", "load_config", "save_config", "split_config"]
