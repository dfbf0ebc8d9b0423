"""The run configuration: sections declared by the components (``sections`` lists them), loaded from YAML and
``--key value`` overrides by ``load``; the run section itself is ``run``."""

from qa.config.load import load_config, save_config
from qa.config.sections import Config, make_config, replace_keys
from qa.errors import ConfigError

__all__ = ["Config", "ConfigError", "load_config", "make_config", "replace_keys", "save_config"]
