"""Lookups on read replicas: which server answers a lookup, and how each standby is doing.

Only lookups leave the primary. Writes, ``clear()``, purges and trims, and table
statistics stay on it, through the cache's own executors.

A standby is skipped while it is down (for ``DOWN_SECONDS`` after a failure) and, when
``max_replica_lag`` is set, while its replay lag is past that bound; the lag is asked
at most once per ``LAG_CHECK_SECONDS`` per standby, never per lookup. A lookup that
no standby can serve goes to the primary, so a standby's failure costs latency, never
a miss.

Replication is asynchronous, so a standby may not have this object's own last write
yet. Keys this object wrote recently (and everything, for a while after its
``clear()``) are read from the primary instead: for ``max_replica_lag`` plus one lag
check interval when the lag is bounded (by then a standby within the bound has the
write), else for ``OWN_WRITES_SECONDS``.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import URL, Engine, Executable, Row, Table, text
from sqlalchemy.ext.asyncio import AsyncEngine

from ._async_io import AsyncExecutor
from ._deadline import watch_async_engine, watch_sync_engine
from ._engines import EnginePair, resolve_engines
from ._errors import ConfigurationError
from ._identity import PairCheck
from ._loops import LoopEngines, drop_pool
from ._secrets import safe_url
from ._statements import Statements
from ._sync_io import SyncExecutor
from ._table import TableReadiness

LAG_CHECK_SECONDS = 1.0
DOWN_SECONDS = 2.0
OWN_WRITES_SECONDS = 5.0
# Keys remembered for reading this object's own writes from the primary; past this
# many, every lookup goes to the primary until the oldest forgotten one would expire.
OWN_WRITES_KEPT = 100_000
PRIMARY = "primary"

# Seconds since the last replayed transaction, but 0 when everything received is
# replayed (an idle primary sends nothing, and its standby is not behind); NULL
# pg_last_xact_replay_timestamp() with WAL waiting means nothing is replayed yet.
_LAG = text(
    "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0 "
    "WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0 "
    "ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 1e9) "
    "END AS lag"
)

Replicas = Sequence[str | URL | AsyncEngine | Engine]
# One statement for a server (None: the primary), answered with its rows (None: failed).
_Plan = Generator[
    tuple["_Standby | None", Executable, dict[str, Any]],
    "Sequence[Row[Any]] | None",
    list[Row[Any]],
]


@dataclass
class _Standby:
    """One read replica: its engines, its executors, and what is known of its health."""

    label: str
    engines: EnginePair
    loop_engines: LoopEngines
    async_io: AsyncExecutor
    sync_io: SyncExecutor
    down_until: float = 0.0
    lag: float | None = None  # None: not measured yet
    checked_at: float = float("-inf")
    checking: threading.Lock = field(default_factory=threading.Lock)


def _standby(replica: object, dialect: str, table: Table) -> _Standby:
    if not isinstance(replica, (str, URL, AsyncEngine, Engine)):
        msg = (
            "each replica must be a database URL, an AsyncEngine or an Engine, got "
            f"{type(replica).__name__}"
        )
        raise ConfigurationError(msg)
    engines = resolve_engines(replica, None)
    if engines.dialect_name != dialect:
        msg = (
            f"a replica must be on the primary's database kind ({dialect}), got "
            f"{engines.dialect_name}: pass the standbys' URLs"
        )
        raise ConfigurationError(msg)
    # The primary's deadlines bound a standby's statements too.
    watch_sync_engine(engines.sync_engine)
    watch_async_engine(engines.async_engine.sync_engine)
    # The primary creates the table; a standby gets it by replication, never creates it.
    readiness = TableReadiness(create=False)
    readiness.ready = True
    loop_engines = LoopEngines(engines.async_engine, owned=engines.async_engine in engines.owned)
    pair = PairCheck(table, engines.sync_engine, engines.async_engine, readiness.loop_owner)
    return _Standby(
        label=safe_url(engines.sync_engine.url),
        engines=engines,
        loop_engines=loop_engines,
        async_io=AsyncExecutor(loop_engines, table, readiness, pair),
        sync_io=SyncExecutor(engines.sync_engine, table, readiness, pair),
    )


def _check_replicas(replicas: object, max_lag: float | None, dialect: str) -> Replicas:
    if isinstance(replicas, (str, URL)) or not isinstance(replicas, (list, tuple)):
        msg = (
            "replicas must be a list of URLs or engines of the standbys, e.g. "
            f"replicas=['postgresql://app@standby1/app'], got {replicas!r}"
        )
        raise ConfigurationError(msg)
    if replicas and dialect == "sqlite":
        msg = "SQLite has no read replicas: pass replicas only with PostgreSQL or MySQL"
        raise ConfigurationError(msg)
    if max_lag is not None and dialect != "postgresql":
        msg = f"max_replica_lag is measured on PostgreSQL standbys only: leave it None on {dialect}"
        raise ConfigurationError(msg)
    return replicas


class ReadRouter:
    """Sends lookups to standbys, spread across them; falls back to the primary."""

    def __init__(
        self,
        replicas: object,
        *,
        max_lag: float | None,
        primary_async: AsyncExecutor,
        primary_sync: SyncExecutor,
        statements: Statements,
        table: Table,
    ) -> None:
        dialect = statements.dialect_name
        self._standbys = [
            _standby(replica, dialect, table)
            for replica in _check_replicas(replicas, max_lag, dialect)
        ]
        self._max_lag = max_lag
        self._own_writes_seconds = (
            OWN_WRITES_SECONDS if max_lag is None else max_lag + LAG_CHECK_SECONDS
        )
        self._primary_async = primary_async
        self._primary_sync = primary_sync
        self._sql = statements
        self._lock = threading.Lock()
        self._turn = itertools.count()
        self._own_writes: OrderedDict[str, float] = OrderedDict()
        self._primary_until = 0.0
        self._reads: dict[str, int] = {PRIMARY: 0}
        self._reads.update((standby.label, 0) for standby in self._standbys)

    # What this object wrote, so that it reads it back from the primary.

    def wrote(self, key: str) -> None:
        """Remember that this object is writing ``key``."""
        if not self._standbys:
            return
        now = time.monotonic()
        with self._lock:
            self._own_writes[key] = now + self._own_writes_seconds
            self._own_writes.move_to_end(key)
            while self._own_writes:
                oldest, until = next(iter(self._own_writes.items()))
                if until > now and len(self._own_writes) <= OWN_WRITES_KEPT:
                    break
                del self._own_writes[oldest]
                self._primary_until = max(self._primary_until, until)

    def wrote_everything(self) -> None:
        """This object changed entries it cannot name (``clear()``): read the primary."""
        with self._lock:
            self._primary_until = time.monotonic() + self._own_writes_seconds

    def _split(self, keys: Sequence[str]) -> tuple[list[str], list[str]]:
        """(keys for the primary, keys for a standby)."""
        if not self._standbys:
            return list(keys), []
        now = time.monotonic()
        with self._lock:
            if now < self._primary_until:
                return list(keys), []
            own = self._own_writes
            mine = [key for key in keys if own.get(key, 0.0) > now]
        if not mine:
            return [], list(keys)
        return mine, [key for key in keys if own.get(key, 0.0) <= now]

    # Which standby.

    def _candidates(self) -> list[_Standby]:
        """The standbys not known to be down, starting with the next one's turn."""
        now = time.monotonic()
        count = len(self._standbys)
        start = next(self._turn) % count
        ordered = self._standbys[start:] + self._standbys[:start]
        return [standby for standby in ordered if standby.down_until <= now]

    def _lag_due(self, standby: _Standby) -> bool:
        """Whether this caller should measure the lag now (taking the turn to do so)."""
        if self._max_lag is None:
            return False
        if time.monotonic() - standby.checked_at < LAG_CHECK_SECONDS:
            return False
        return standby.checking.acquire(blocking=False)

    def _lag_measured(self, standby: _Standby, rows: Sequence[Row[Any]] | None) -> None:
        try:
            if rows is None:
                standby.down_until = time.monotonic() + DOWN_SECONDS
            else:
                standby.lag = float(rows[0][0])
            standby.checked_at = time.monotonic()
        finally:
            standby.checking.release()

    def _usable(self, standby: _Standby) -> bool:
        if self._max_lag is None:
            return True
        return standby.lag is not None and standby.lag <= self._max_lag

    def _served(self, label: str, keys: int) -> None:
        with self._lock:
            self._reads[label] += keys

    def _failed(self, standby: _Standby) -> None:
        standby.down_until = time.monotonic() + DOWN_SECONDS

    # The lookups themselves: one plan, run by an async and a sync driver.

    def _plan(self, keys: Sequence[str], now: float) -> _Plan:
        """Yield the statements to run, each with its server (None: the primary).

        A standby's statement is answered with its rows, or None if it failed; the
        primary's failure is raised by the driver. Returns the lookup's rows.
        """
        primary_keys, standby_keys = self._split(keys)
        rows: list[Row[Any]] = []
        if standby_keys:
            for standby in self._candidates():
                if self._lag_due(standby):
                    try:
                        measured = yield standby, _LAG, {}
                    except GeneratorExit:  # cancelled mid-check: someone else measures
                        standby.checking.release()
                        raise
                    self._lag_measured(standby, measured)
                if not self._usable(standby) or standby.down_until > time.monotonic():
                    continue
                statement, params = self._sql.lookup_for(standby_keys, now)
                answer = yield standby, statement, params
                if answer is None:
                    self._failed(standby)
                    continue
                rows.extend(answer)
                self._served(standby.label, len(set(standby_keys)))
                standby_keys = []
                break
        primary_keys += standby_keys
        if primary_keys:
            statement, params = self._sql.lookup_for(primary_keys, now)
            answer = yield None, statement, params
            rows.extend(answer or ())
            self._served(PRIMARY, len(set(primary_keys)))
        return rows

    async def afetch(self, keys: Sequence[str], now: float) -> list[Row[Any]]:
        """Rows of the lookup of ``keys``, from a standby where one can answer.

        Rows are (key, payload, updated_at), read by position (``fetch_lean``).
        """
        if not self._standbys:  # most deployments: the primary's statement, no plan to drive
            lookup, lookup_params = self._sql.lookup_for(keys, now)
            rows = await self._primary_async.fetch_lean(lookup, lookup_params)
            self._served(PRIMARY, len(set(keys)))
            return list(rows)
        plan = self._plan(keys, now)
        answer: Sequence[Row[Any]] | None = None
        try:
            while True:
                server, statement, params = plan.send(answer)
                if server is None:
                    answer = await self._primary_async.fetch_lean(statement, params)
                    continue
                try:
                    answer = await server.async_io.fetch_lean(statement, params)
                except Exception:  # a standby down or broken: the plan moves on
                    answer = None
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            plan.close()

    def fetch(self, keys: Sequence[str], now: float) -> list[Row[Any]]:
        """``afetch`` for the sync facade, on the sync engines."""
        if not self._standbys:
            lookup, lookup_params = self._sql.lookup_for(keys, now)
            rows = self._primary_sync.fetch(lookup, lookup_params)
            self._served(PRIMARY, len(set(keys)))
            return list(rows)
        plan = self._plan(keys, now)
        answer: Sequence[Row[Any]] | None = None
        try:
            while True:
                server, statement, params = plan.send(answer)
                if server is None:
                    answer = self._primary_sync.fetch(statement, params)
                    continue
                try:
                    answer = server.sync_io.fetch(statement, params)
                except Exception:
                    answer = None
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            plan.close()

    def reads(self) -> dict[str, int]:
        """Keys looked up per server: ``"primary"`` and each standby's URL (no password)."""
        with self._lock:
            return dict(self._reads)

    # Lifecycle: the standbys' engines are all the cache's own unless passed in.

    def close(self) -> None:
        """Drop the standbys' async pools and dispose of their sync engines."""
        for standby in self._standbys:
            standby.async_io.close()
            for engine, loop in self._owned_async(standby):
                drop_pool(engine, loop)
            self._dispose_sync(standby)

    async def aclose(self) -> None:
        """Close the standbys' connections of the running loop politely, drop the others."""
        running = asyncio.get_running_loop()
        for standby in self._standbys:
            await standby.async_io.aclose()
            for engine, loop in self._owned_async(standby):
                if loop is running:
                    await engine.dispose()
                else:
                    drop_pool(engine, loop)
            self._dispose_sync(standby)

    @staticmethod
    def _owned_async(standby: _Standby) -> list[tuple[AsyncEngine, Any]]:
        base_owned = standby.engines.async_engine in standby.engines.owned
        return [
            (engine, loop)
            for engine, loop in standby.loop_engines.engines()
            if engine is not standby.loop_engines.base or base_owned
        ]

    @staticmethod
    def _dispose_sync(standby: _Standby) -> None:
        for owned in standby.engines.owned:
            if isinstance(owned, Engine):
                owned.dispose()
