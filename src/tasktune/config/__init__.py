from tasktune.config.load import help_text, load_config, save_config
from tasktune.config.schema import Config, ConfigError

__all__ = ["Config", "ConfigError", "help_text", "load_config", "save_config"]
