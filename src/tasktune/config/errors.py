"""The error every config section raises (a UserError), and the shared membership check."""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (config, data, paths, checkpoints, models): the CLI prints its message in one
    line and exits non-zero, without a traceback (`tasktune --debug` shows it)."""


class ConfigError(UserError, ValueError):
    """A configuration value that cannot be used, with a message that says how to fix it."""


def one_of(section: str, name: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{section}.{name}={value!r}: expected one of {', '.join(map(str, allowed))}")
