"""The run's configuration: ``data.toml`` -> frozen dataclasses, every problem with its line.

``settings`` declares the keys (types, defaults, rules), ``rules`` the kinds of rule,
``load`` reads a file with tomlkit and ``lines`` finds each key's line.
"""

from console.config.load import ConfigError, ConfigIssue, format_issues, load_config, parse_config
from console.config.settings import (
    CheckpointConfig,
    Config,
    CoordinatorConfig,
    LocalConfig,
    SecurityConfig,
    ServerConfig,
)

__all__ = [
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "CoordinatorConfig",
    "LocalConfig",
    "SecurityConfig",
    "ServerConfig",
    "format_issues",
    "load_config",
    "parse_config",
]
