"""Warnings that whoever breaks the database (or writes the table) cannot turn into a flood."""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger("langchain_sqlalchemy_cache")

LOG_INTERVAL_S = 10.0


class RateLimitedLog:
    """Logs a warning per topic at most once per interval; says how many were held back."""

    def __init__(self, interval: float = LOG_INTERVAL_S) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, topic: str, message: str, *args: object) -> None:
        """Log ``message % args`` unless ``topic`` was logged less than an interval ago.

        The next line logged for the topic ends with the number of lines held back.
        """
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(topic, -self._interval) < self._interval:
                self._held[topic] = self._held.get(topic, 0) + 1
                return
            self._last[topic] = now
            held = self._held.pop(topic, 0)
        suffix = f" ({held} more since the last report)" if held else ""
        logger.warning(message + "%s", *args, suffix)
