from tasktune.config.load import help_text, load_config, save_config
from tasktune.config.schema import Config, ConfigError, EvalConfig, TaskConfig

__all__ = ["Config", "ConfigError", "EvalConfig", "TaskConfig", "help_text", "load_config", "save_config"]
