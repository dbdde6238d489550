"""Errors the model zoo raises for problems a user can fix: one-line messages naming the
option and what to do.

Plain Python (no Jittor, no numpy), so ``utils.errors`` builds on these without loading
the models; ``from utils.errors import ConfigError`` is the same class.
"""

__all__ = ["UserError", "ConfigError", "KeywordError"]


class UserError(Exception):
    """A problem the user can fix; ``str(exc)`` is the complete one-line message."""


class ConfigError(UserError, ValueError):
    """Unknown config, unknown or malformed config key / option value."""


class KeywordError(ConfigError, TypeError):
    """A keyword (config key) a constructor does not take, or a required one left out:
    also a ``TypeError``, which Python and mmseg raise for a misspelled keyword."""
