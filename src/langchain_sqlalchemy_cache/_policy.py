"""What a failed cache operation does: a miss (or no-op) with a log line, or CacheError.

A cache sits in front of every LLM call; with the default policy a broken database
makes the cache invisible instead of breaking the call. Cancellation, KeyboardInterrupt
and SystemExit are not errors and always propagate.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import TracebackType
from typing import Literal

from ._breaker import CircuitBreaker
from ._errors import CacheError, ConfigurationError
from ._ratelimit import LOG_INTERVAL_S, RateLimitedLog
from ._secrets import mask_url

OnError = Literal["miss", "raise"]


class ErrorPolicy:
    """Counts failures, logs them at most once per interval per operation, maybe raises.

    Every outcome is also reported to the circuit breaker, which may turn calls away
    before they send anything (``admit``).
    """

    def __init__(
        self,
        on_error: object,
        *,
        breaker: CircuitBreaker | None = None,
        log_interval: float = LOG_INTERVAL_S,
    ) -> None:
        if on_error not in ("miss", "raise"):
            msg = (
                f"on_error must be 'miss' (a failed lookup is a miss, a failed update or "
                f"clear does nothing) or 'raise' (raise CacheError), got {on_error!r}"
            )
            raise ConfigurationError(msg)
        self.raises = on_error == "raise"
        # Driver errors may echo a DSN: messages pass through the cache's redactor.
        self.redact: Callable[[str], str] = mask_url
        self.breaker = breaker if breaker is not None else CircuitBreaker(None, 0.0)
        self.errors = 0
        self.timeouts = 0
        self._lock = threading.Lock()
        self._log = RateLimitedLog(log_interval)

    def admit(self, operation: str) -> bool:
        """Whether ``operation`` may send statements; False: serve it as a miss or no-op.

        Raises:
            CacheError: The breaker is open and the policy raises.
        """
        if self.breaker.allow():
            return True
        if self.raises:
            msg = (
                f"cache {operation} skipped: the circuit breaker is open after repeated "
                f"failures; the next try goes through in {self.breaker.retry_in():.1f}s"
            )
            raise CacheError(msg)
        return False

    def guard(self, operation: str) -> _Guard:
        """A ``with`` block whose errors follow the policy (works around ``await`` too)."""
        return _Guard(self, operation)

    def failed(self, operation: str, exc: Exception) -> None:
        """Record one failure of ``operation``; raise CacheError if the policy says so."""
        with self._lock:
            self.errors += 1
            if isinstance(exc, TimeoutError):
                self.timeouts += 1
        if self.raises:  # the caller hears of it: no log line as well
            msg = self.redact(f"cache {operation} failed: {type(exc).__name__}: {exc}")
            raise CacheError(msg) from exc
        self._log.warning(
            operation,
            "cache %s failed, served as a miss or skipped: %s: %s",
            operation,
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
        breaker = self._policy.breaker
        if exc is None:
            breaker.succeeded()
            return False
        if not isinstance(exc, Exception) or isinstance(exc, CacheError):
            breaker.abandoned()
            return False  # cancellation/interrupt, or already the caller's error
        breaker.failed()
        self._policy.failed(self._operation, exc)
        return True  # swallowed: the caller falls through to its miss / no-op
