"""The library's own exceptions."""

from __future__ import annotations


class CacheError(Exception):
    """A cache operation failed; the database or driver error is chained as ``__cause__``."""


class ConfigurationError(CacheError, ValueError):
    """The cache was constructed with arguments it cannot work with.

    The message says what to pass instead.
    """
