"""The library's own exceptions, and the check of the options that count something."""

from __future__ import annotations


class CacheError(Exception):
    """A cache operation failed; the database or driver error is chained as ``__cause__``."""


class ConfigurationError(CacheError, ValueError):
    """The cache was constructed with arguments it cannot work with.

    The message says what to pass instead.
    """


def positive_int(name: str, value: object) -> int:
    """``value`` if it is an int of at least 1 (not a bool).

    Raises:
        ConfigurationError: It is not; the message names the option ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"{name} must be a positive int, got {value!r}"
        raise ConfigurationError(msg)
    return value
