"""What a failed cache operation does: a miss (or no-op) with a log line, or CacheError.

A cache sits in front of every LLM call; with the default policy a broken database
makes the cache invisible instead of breaking the call. Cancellation, KeyboardInterrupt
and SystemExit are not errors and always propagate.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Literal

from ._errors import CacheError, ConfigurationError
from ._secrets import mask_url

logger = logging.getLogger("langchain_sqlalchemy_cache")

OnError = Literal["miss", "raise"]
LOG_INTERVAL_S = 10.0


class ErrorPolicy:
    """Counts failures, logs them at most once per interval per operation, maybe raises."""

    def __init__(self, on_error: object, *, log_interval: float = LOG_INTERVAL_S) -> None:
        if on_error not in ("miss", "raise"):
            msg = (
                f"on_error must be 'miss' (a failed lookup is a miss, a failed update or "
                f"clear does nothing) or 'raise' (raise CacheError), got {on_error!r}"
            )
            raise ConfigurationError(msg)
        self.raises = on_error == "raise"
        # Driver errors may echo a DSN: messages pass through the cache's redactor.
        self.redact: Callable[[str], str] = mask_url
        self.errors = 0
        self._log_interval = log_interval
        self._lock = threading.Lock()
        self._last_logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def guard(self, operation: str) -> _Guard:
        """A ``with`` block whose errors follow the policy (works around ``await`` too)."""
        return _Guard(self, operation)

    def failed(self, operation: str, exc: Exception) -> None:
        """Record one failure of ``operation``; raise CacheError if the policy says so."""
        if self.raises:  # the caller hears of it: no log line as well
            with self._lock:
                self.errors += 1
            msg = self.redact(f"cache {operation} failed: {type(exc).__name__}: {exc}")
            raise CacheError(msg) from exc
        now = time.monotonic()
        with self._lock:
            self.errors += 1
            due = now - self._last_logged.get(operation, -self._log_interval) >= self._log_interval
            if due:
                self._last_logged[operation] = now
                unlogged = self._unlogged.pop(operation, 0)
            else:
                self._unlogged[operation] = self._unlogged.get(operation, 0) + 1
        if due:
            logger.warning(
                "cache %s failed, served as a miss or skipped%s: %s: %s",
                operation,
                f" ({unlogged} more since the last report)" if unlogged else "",
                type(exc).__name__,
                self.redact(str(exc).splitlines()[0] if str(exc) else ""),
            )


class _Guard:
    def __init__(self, policy: ErrorPolicy, operation: str) -> None:
        self._policy = policy
        self._operation = operation

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, CacheError):
            return False  # success, or cancellation/interrupt: let it through
        self._policy.failed(self._operation, exc)
        return True  # swallowed: the caller falls through to its miss / no-op
