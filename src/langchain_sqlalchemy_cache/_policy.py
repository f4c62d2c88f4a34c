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

    def mapped(self, operation: str) -> _Mapped:
        """A ``with`` block that turns any failure inside it into ``OperationFailed``.

        As httpcore's ``map_exceptions``: the failure is counted, reported to the
        breaker and re-raised, chained ``from`` the original; the caller's ``except
        OperationFailed`` then hands it to ``absorb``. Nothing is swallowed inside the
        block, so every method reads straight through to its own miss or no-op.
        """
        return _Mapped(self, operation)

    def absorb(self, failure: OperationFailed) -> None:
        """Raise ``failure`` under ``on_error="raise"``; else log it (rate-limited).

        Raises:
            OperationFailed: The policy raises (it is a ``CacheError``).
        """
        if self.raises:  # the caller hears of it: no log line as well
            raise failure
        cause = failure.__cause__
        self._log.warning(
            failure.operation,
            "cache %s failed, served as a miss or skipped: %s: %s",
            failure.operation,
            type(cause).__name__,
            self.redact(str(cause).splitlines()[0] if str(cause) else ""),
        )

    def _count(self, exc: Exception) -> None:
        with self._lock:
            self.errors += 1
            if isinstance(exc, TimeoutError):
                self.timeouts += 1


class OperationFailed(CacheError):
    """A cache operation failed; ``__cause__`` holds the driver's (or deadline's) error."""

    def __init__(self, message: str, operation: str) -> None:
        super().__init__(message)
        self.operation = operation


class _Mapped:
    def __init__(self, policy: ErrorPolicy, operation: str) -> None:
        self._policy = policy
        self._operation = operation
        self._epoch = policy.breaker.epoch  # the call was let through just now

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        policy = self._policy
        if exc is None:
            policy.breaker.succeeded()
            return
        if not isinstance(exc, Exception) or isinstance(exc, CacheError):
            policy.breaker.abandoned(self._epoch)
            return  # cancellation/interrupt, or already the caller's error: as it is
        policy.breaker.failed(self._epoch)
        policy._count(exc)
        message = policy.redact(f"cache {self._operation} failed: {type(exc).__name__}: {exc}")
        raise OperationFailed(message, self._operation) from exc
