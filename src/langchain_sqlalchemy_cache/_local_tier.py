"""The in-process tier: recently read or written entries, held as bytes.

A hit from memory is a dictionary probe, a hash and a decode: no statement, no await.
Entries are bytes, so every hit builds objects of its own and no caller can change what
the next one gets: first the payload the table holds; once a hit has decoded it, the
cache's snapshot of the validated objects (``trust``), which reads back faster.

How stale an entry can be is bounded by its age, not by notifications: an entry is
served for at most ``max_staleness`` seconds after it was read from the table or
written to it, then read again. That one rule covers everything another process (or
the command line) can do to the table: a write to the same key, ``clear``,
``purge_expired`` and trims are all seen within the bound, on every backend, with no
extra table, no extra statement and nothing for migrations to create. What this cache
object does itself (its own writes, clears, purges and trims) applies to the tier at
once.

Entries read from the table while this object clears or writes the same key cannot
bring back what the clear removed or the write replaced: each read notes the tier's
sequence number before it starts, and an entry changed (or a tier flushed) since then
wins over what the read returns.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

# Bytes charged per entry on top of its key and payload: the dict slot, the entry object
# and its floats. An estimate, so the bound holds for many tiny entries too.
ENTRY_OVERHEAD = 200
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_STALENESS = 1.0

Clock = Callable[[], float]


class Mark(NamedTuple):
    """Taken before a read or write starts: the tier's sequence number and the time."""

    seq: int
    at: float


@dataclasses.dataclass(frozen=True)
class Held:
    """An entry of the tier: what ``get`` returns."""

    payload: bytes
    loaded_at: float  # monotonic clock: when it was read or written
    expires_at: float  # wall clock: when its ttl ends (inf without a ttl)
    seq: int  # the tier's sequence number when it was stored
    size: int
    snapshot: bool = False  # payload is the cache's snapshot of decoded objects (``trust``)


class LocalTier:
    """A byte-bounded, least-recently-used map of cache keys to payloads, thread-safe.

    Args:
        max_bytes: Most bytes held (keys, payloads and a per-entry estimate); an entry
            larger than that on its own is not kept.
        max_staleness: Seconds an entry is served after it was read or written.
        ttl: The cache's ttl in seconds, or None.
        clock: Monotonic seconds (for staleness); tests pass a clock they control.
        wall_clock: UNIX seconds (for the ttl, which rows count in wall time).
    """

    def __init__(
        self,
        max_bytes: int,
        max_staleness: float,
        ttl: float | None,
        *,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_staleness = max_staleness
        self.ttl = ttl
        self.clock = clock
        self.wall_clock = wall_clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, Held] = OrderedDict()
        self._bytes = 0
        self._seq = 0
        self._flushed_at = 0  # the sequence number of the last flush

    @property
    def held_bytes(self) -> int:
        """Bytes held now, as charged against ``max_bytes``."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def mark(self) -> Mark:
        """What to pass to ``put`` for a read or write that starts now."""
        with self._lock:
            self._seq += 1
            return Mark(self._seq, self.clock())

    def get(self, key: str) -> Held | None:
        """The entry of ``key`` if held and still fresh enough to serve, else None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if (
                self.clock() - entry.loaded_at >= self.max_staleness
                or self.wall_clock() >= entry.expires_at
            ):
                self._remove(key, entry)
                return None
            self._entries.move_to_end(key)
            return entry

    def trust(self, key: str, held: Held, snapshot: bytes) -> None:
        """Serve ``snapshot`` instead of ``held``'s payload, if ``key`` still holds ``held``.

        The cache decodes a payload once and then keeps a snapshot of the objects,
        which reads back faster; the entry keeps its age, ttl and place in the order.
        An entry replaced, dropped or flushed meanwhile is left as it is.
        """
        with self._lock:
            if self._entries.get(key) is not held:
                return
            size = held.size - len(held.payload) + len(snapshot)
            self._entries[key] = dataclasses.replace(
                held, payload=snapshot, size=size, snapshot=True
            )
            self._bytes += size - held.size
            self._evict()

    def put(
        self, key: str, payload: bytes, updated_at: float, *, since: Mark, read: bool = True
    ) -> None:
        """Hold ``payload`` for ``key``, whose row was written at ``updated_at`` (UNIX time).

        Args:
            key: The cache key.
            payload: The stored payload bytes.
            updated_at: When the row was written, for the ttl.
            since: The ``mark()`` taken before the read or write started: nothing is
                kept if the tier was flushed since (a clear may have deleted the row).
            read: The payload was read, not written: it is not kept if this key was
                stored since ``since`` either (that store is newer), and its age counts
                from when the read started, since the row it saw may have changed
                while the read was under way.
        """
        size = len(key) + len(payload) + ENTRY_OVERHEAD
        if size > self.max_bytes:
            self.discard(key)  # an older, smaller version must not outlive this one
            return
        expires_at = math.inf if self.ttl is None else updated_at + self.ttl
        with self._lock:
            if since.seq <= self._flushed_at:
                return
            held = self._entries.get(key)
            if read and held is not None and held.seq > since.seq:
                return
            self._seq += 1
            loaded_at = since.at if read else self.clock()
            entry = Held(payload, loaded_at, expires_at, self._seq, size)
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.size
            self._entries[key] = entry
            self._bytes += size
            self._evict()

    def discard(self, key: str) -> None:
        """Forget ``key``; reads already in flight cannot bring it back.

        Refusing every read in flight (as a flush does) costs them only their ``put``,
        and keeps no tombstone per key.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._remove(key, entry)
            self._seq += 1
            self._flushed_at = self._seq

    def forget(self) -> None:
        """Forget every entry (after a clear, purge or trim by this object).

        Reads in flight, which may have seen rows that statement deleted, are refused
        as well.
        """
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self._seq += 1
            self._flushed_at = self._seq

    def _evict(self) -> None:
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size

    def _remove(self, key: str, entry: Held) -> None:
        del self._entries[key]
        self._bytes -= entry.size
