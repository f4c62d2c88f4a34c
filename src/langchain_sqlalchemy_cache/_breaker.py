"""A circuit breaker: a database that keeps failing is left alone for a while.

Without it, every call against a dead or frozen database waits its full deadline.
After ``threshold`` consecutive failures (errors or timeouts) the breaker opens: calls
are answered at once (a miss, a no-op, or ``CacheError``) without a statement. After
``cooldown`` seconds it lets one call through as a probe (half-open); the probe's
success closes it, its failure opens it for another cool-down.

A failure counts only if its call was let through since the breaker last opened or
closed (its ``epoch``): a call sent to the old, dead server before the breaker closed
again must not open it once more, nor end the probe of a half-open breaker; nor does
such a call's cancellation free the probe's turn.
"""

from __future__ import annotations

import threading
import time
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Consecutive-failure breaker, shared by the sync and async sides and every loop.

    The closed state's checks read plain attributes without the lock: a stale read
    lets at most one more call through, which costs nothing but that call.
    """

    def __init__(self, threshold: int | None, cooldown: float) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self._lock = threading.Lock()
        self._state: BreakerState = "closed"
        self._failures = 0  # consecutive
        self._opened_at = 0.0
        self._probing = False
        self.opened = 0  # times it opened
        self.epoch = 0  # bumped each time it opens or closes
        self.rejected = 0  # calls answered without a statement

    @property
    def state(self) -> BreakerState:
        """``"closed"``, ``"open"`` or ``"half_open"`` (a probe may go or is going through)."""
        with self._lock:
            if self._state == "open" and time.monotonic() - self._opened_at >= self.cooldown:
                return "half_open"
            return self._state

    def retry_in(self) -> float:
        """Seconds until the breaker lets a probe through (0 if it would now)."""
        with self._lock:
            if self._state != "open":
                return 0.0
            return max(0.0, self.cooldown - (time.monotonic() - self._opened_at))

    def allow(self) -> bool:
        """Whether a call may send statements now; a False is counted as rejected.

        A True in the half-open state makes the caller the probe: it must report
        through ``succeeded``, ``failed`` or ``abandoned``.
        """
        if self._state == "closed":
            return True
        with self._lock:
            state: BreakerState = self._state  # another thread may have closed it
            if state == "closed":
                return True
            if state == "open":
                if time.monotonic() - self._opened_at < self.cooldown:
                    self.rejected += 1
                    return False
                self._state = "half_open"
            if not self._probing:
                self._probing = True
                return True
            self.rejected += 1
            return False

    def succeeded(self) -> None:
        """A call that was allowed went through."""
        if self._state == "closed" and not self._failures:
            return
        with self._lock:
            if self._state != "closed":
                self.epoch += 1
            self._failures = 0
            self._probing = False
            self._state = "closed"

    def failed(self, epoch: int) -> None:
        """A call that was allowed (when ``epoch`` was the breaker's) failed or timed out."""
        if self.threshold is None:
            return
        with self._lock:
            if epoch != self.epoch:  # let through before the breaker last changed: stale
                return
            self._failures += 1
            self._probing = False
            if self._state == "half_open" or (
                self._state == "closed" and self._failures >= self.threshold
            ):
                self._state = "open"
                self._opened_at = time.monotonic()
                self.opened += 1
                self.epoch += 1

    def abandoned(self, epoch: int) -> None:
        """A call allowed at ``epoch`` ended without a verdict (cancelled): free the probe."""
        if self._probing:
            with self._lock:
                if epoch == self.epoch:  # an older call was never the probe
                    self._probing = False
