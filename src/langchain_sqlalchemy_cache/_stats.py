"""What ``stats()`` and ``table_stats()`` report, and the in-process counters behind them."""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

# Latency percentiles are over the most recent calls, so they follow the present
# load and the memory stays fixed however long the process runs.
LATENCY_WINDOW = 10_000


@dataclass(frozen=True)
class CacheStats:
    """Counters of this cache object since it was made (this process only).

    Attributes:
        hits: Lookups that found an entry (from memory or from the table), and
            lookups that waited for a concurrent caller's store under
            ``single_flight``, even when the table could not be read.
        misses: Lookups that found none (or an unreadable one).
        writes: Entries stored by ``update``/``aupdate``.
        errors: Database or driver failures of any operation (served as a miss or
            skipped under ``on_error="miss"``; raised as ``CacheError`` otherwise).
        lookup_p50_ms: Median lookup latency in milliseconds over the last 10,000
            lookups, None before the first. Async latencies include the wait for a
            batch and a free connection.
        lookup_p95_ms: 95th percentile lookup latency.
        lookup_p99_ms: 99th percentile lookup latency.
        update_p50_ms: Median update latency in milliseconds over the last 10,000 updates.
        update_p95_ms: 95th percentile update latency.
        update_p99_ms: 99th percentile update latency.
        timeouts: Calls (of any operation) that hit their deadline; also counted in
            ``errors``.
        short_circuited: Calls answered at once, without a statement, while the
            circuit breaker was open (not counted in ``errors`` or ``misses``; in
            ``hits`` only when a single-flight wait brought an answer).
        breaker: The circuit breaker's state now: ``"closed"`` (calls go through),
            ``"open"`` (calls are short-circuited) or ``"half_open"`` (the next call
            is let through as a probe).
        breaker_opened: How many times the breaker opened.
        reads_by_server: Keys looked up per server: ``"primary"`` and each read
            replica's URL (password hidden); a batched lookup counts each distinct key once.
        memory_hits: Hits served by the in-process tier, without a statement (a part
            of ``hits``).
    """

    hits: int
    misses: int
    writes: int
    errors: int
    lookup_p50_ms: float | None
    lookup_p95_ms: float | None
    lookup_p99_ms: float | None
    update_p50_ms: float | None
    update_p95_ms: float | None
    update_p99_ms: float | None
    timeouts: int = 0
    short_circuited: int = 0
    breaker: str = "closed"
    breaker_opened: int = 0
    reads_by_server: Mapping[str, int] = field(default_factory=dict, hash=False)
    memory_hits: int = 0

    @property
    def hit_rate(self) -> float | None:
        """Hits over successful lookups, or None before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else None


@dataclass(frozen=True)
class ModelEntries:
    """How many entries one model (one llm_string) has.

    Attributes:
        llm_key: SHA-256 hex of the llm_string.
        llm_string: The llm_string itself, or None when the cache does not store it
            (``store_prompts=False``).
        entries: Its number of entries.
    """

    llm_key: str | None
    llm_string: str | None
    entries: int


@dataclass(frozen=True)
class TableStats:
    """What the cache table holds for one namespace, read from the database.

    Attributes:
        entries: Number of entries, expired ones included until purged.
        payload_bytes: Total size of the stored generations, in bytes.
        table_bytes: Size of the whole table with its indexes on disk (all
            namespaces), where the backend can tell; else None.
        oldest: When the oldest entry was written (UTC), None if there are none.
        newest: When the newest entry was written (UTC), None if there are none.
        models: Entries per model, most entries first.
    """

    entries: int
    payload_bytes: int
    table_bytes: int | None
    oldest: datetime | None
    newest: datetime | None
    models: tuple[ModelEntries, ...]


def utc(timestamp: float | None) -> datetime | None:
    """A UNIX time as an aware UTC datetime."""
    return None if timestamp is None else datetime.fromtimestamp(timestamp, timezone.utc)


def _percentile(ordered: Sequence[float], fraction: float) -> float | None:
    # Nearest rank: an actual observed latency, never an interpolated one.
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1] * 1000.0


class Counters:
    """Thread-safe counters of hits, misses and writes, and recent latencies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._memory_hits = 0
        self._writes = 0
        self._lookup_seconds: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._update_seconds: deque[float] = deque(maxlen=LATENCY_WINDOW)

    def lookup(self, *, hit: bool, seconds: float, memory: bool = False) -> None:
        """Count one finished lookup (``memory``: a hit served by the in-process tier)."""
        with self._lock:
            if hit:
                self._hits += 1
                self._memory_hits += memory
            else:
                self._misses += 1
            self._lookup_seconds.append(seconds)

    def write(self, seconds: float) -> None:
        """Count one stored entry."""
        with self._lock:
            self._writes += 1
            self._update_seconds.append(seconds)

    def snapshot(self, errors: int, **failures: Any) -> CacheStats:
        """The counters now, with the failure fields kept by the policy and the breaker."""
        with self._lock:
            lookups = sorted(self._lookup_seconds)
            updates = sorted(self._update_seconds)
            hits, misses, writes = self._hits, self._misses, self._writes
            memory_hits = self._memory_hits
        return CacheStats(
            hits=hits,
            misses=misses,
            writes=writes,
            errors=errors,
            lookup_p50_ms=_percentile(lookups, 0.50),
            lookup_p95_ms=_percentile(lookups, 0.95),
            lookup_p99_ms=_percentile(lookups, 0.99),
            update_p50_ms=_percentile(updates, 0.50),
            update_p95_ms=_percentile(updates, 0.95),
            update_p99_ms=_percentile(updates, 0.99),
            **failures,
            memory_hits=memory_hits,
        )
