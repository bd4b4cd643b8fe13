"""Errors that end a command with one clear line instead of a traceback."""


class ApplianceError(Exception):
    """A problem the user can fix; the message says what to change."""

    exit_code = 1


class ConfigError(ApplianceError):
    """workshop.yml or the asset manifest is invalid."""

    exit_code = 2


class UsageError(ApplianceError):
    """A command-line argument is wrong (an unknown asset name, a negative count)."""

    exit_code = 2
