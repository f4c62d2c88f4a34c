"""SQLAlchemyCache: the LangChain ``BaseCache`` on top of the two executors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from time import perf_counter
from types import TracebackType
from typing import Any, Generic, TypeVar

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from sqlalchemy import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from . import _statements as sql
from ._async_io import AsyncExecutor
from ._batching import Coalescer, Failed
from ._breaker import CircuitBreaker
from ._codec import (
    decode_generations,
    encode_generations,
    freeze,
    thaw,
    validate_generations,
)
from ._community import check_cache_schema
from ._deadline import (
    DEFAULT_MAINTENANCE_TIMEOUT,
    DEFAULT_TIMEOUT,
    AsyncDeadline,
    SyncDeadline,
    optional_seconds,
    positive_seconds,
    watch_async_engine,
    watch_sync_engine,
)
from ._deadline_queue import DeadlineQueue
from ._engines import EnginePair, resolve_engines
from ._errors import CacheError, ConfigurationError
from ._eviction import TrimSchedule
from ._health import PROBE_KEY, Health, describe
from ._identity import PairCheck
from ._keys import cache_key, llm_key
from ._local_tier import DEFAULT_MAX_BYTES, DEFAULT_MAX_STALENESS, LocalTier, Mark
from ._loops import LoopEngines, PerLoop, drop_pool, require_asyncio
from ._maintenance import CacheTable
from ._options import CacheOptions
from ._policy import ErrorPolicy, OnError, OperationFailed
from ._ratelimit import RateLimitedLog, logger
from ._replicas import ReadRouter, Replicas
from ._schema import DEFAULT_TABLE_NAME
from ._secrets import Redactor, raw_url_secrets, safe_url, url_secrets
from ._single_flight import Flights, Outcome
from ._stats import CacheStats, Counters, TableStats
from ._steps import Steps, run_async, run_sync
from ._sync_io import SyncExecutor

Timeout = float | timedelta | None
T = TypeVar("T")


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str):
        msg = f"{name} must be a str, got {type(value).__name__}"
        raise TypeError(msg)
    return value


def _clear_filters(kwargs: dict[str, Any]) -> tuple[str | None, float | None]:
    """``clear()``'s filters: the llm_key of ``llm_string``, and ``older_than`` in seconds."""
    unknown = set(kwargs) - {"older_than", "llm_string"}
    if unknown:
        msg = f"clear() got unexpected keyword arguments: {', '.join(sorted(unknown))}"
        raise TypeError(msg)
    model = None
    if "llm_string" in kwargs:
        model = llm_key(_check_text("llm_string", kwargs["llm_string"]))
    older_than = None
    if "older_than" in kwargs:
        try:
            older_than = positive_seconds("older_than", kwargs["older_than"])
        except ConfigurationError as exc:
            raise TypeError(str(exc)) from None
    return model, older_than


@dataclass(frozen=True)
class _Maintenance(Generic[T]):
    """A maintenance call the policy admitted: its steps, deadline and policy."""

    steps: Steps[T]
    seconds: float | None
    policy: ErrorPolicy


def _reported(stats: TableStats | None) -> TableStats:
    if stats is None:
        raise AssertionError("unreachable: the strict policy raises")
    return stats


def _waited(outcome: Outcome | None) -> RETURN_VAL_TYPE | None:
    """A single-flight wait's answer: the filler's payload, or a miss (this one fills)."""
    return decode_generations(outcome) if isinstance(outcome, bytes) else None


# Rows per multi-row upsert: each row is 6 parameters, and rows can be megabytes.
_MAX_UPSERT_ROWS = 100
# Bytes per upsert statement: well under MySQL's smallest usual max_allowed_packet (4 MiB
# before 8.0, 16 MiB on MariaDB), so only an entry too big on its own can fail.
_MAX_UPSERT_BYTES = 2 * 1024 * 1024


def _default_concurrency(engines: EnginePair) -> int:
    """How many statements to keep in flight: the pool's persistent connections.

    Overflow connections are opened and closed around each use, which costs more
    than waiting a moment for a pooled one; batching makes up for the wait. SQLite
    runs one statement at a time best: each one costs several hops to aiosqlite's
    thread, so fewer, larger batches win (measured: 1 slot serves ~1.5x the hits of 5
    at 100 concurrent callers).
    """
    if engines.dialect_name == "sqlite":
        return 1
    size = getattr(engines.async_engine.pool, "size", None)
    if callable(size):
        return max(1, int(size()))
    return 5  # NullPool and friends: no fixed bound; stay modest with the server


class SQLAlchemyCache(BaseCache):
    """LLM response cache in a SQL table, with native-async and sync methods.

    ``alookup``/``aupdate``/``aclear`` run on an ``AsyncEngine`` (asyncpg, aiosqlite):
    no thread hop per call. ``lookup``/``update``/``clear`` run the same statements on
    a paired sync ``Engine`` (psycopg, sqlite3), so they also work from inside a
    running event loop.

    Entries are keyed by a SHA-256 of (llm_string, prompt), so prompts of any length
    work on every backend, and an update replaces the whole entry in one upsert.

    Example:
        .. code-block:: python

            from langchain_core.globals import set_llm_cache
            from langchain_sqlalchemy_cache import SQLAlchemyCache

            set_llm_cache(SQLAlchemyCache("postgresql://user@localhost/app"))
    """

    def __init__(
        self,
        engine: str | URL | AsyncEngine | Engine,
        cache_schema: type[Any] | None = None,
        *,
        sync_engine: Engine | None = None,
        table_name: str = DEFAULT_TABLE_NAME,
        schema: str | None = None,
        create_table: bool = True,
        coalesce: bool = True,
        max_batch_size: int = 500,
        max_concurrency: int | None = None,
        on_error: OnError = "miss",
        ttl: float | timedelta | None = None,
        store_prompts: bool = True,
        namespace: str = "",
        max_entries: int | None = None,
        replicas: Replicas = (),
        max_replica_lag: float | timedelta | None = None,
        timeout: float | timedelta | None = DEFAULT_TIMEOUT,
        breaker_threshold: int | None = 5,
        breaker_cooldown: float | timedelta = 2.0,
        local_max_bytes: int = DEFAULT_MAX_BYTES,
        local_max_staleness: float | timedelta = DEFAULT_MAX_STALENESS,
        single_flight: bool | float | timedelta = False,
    ) -> None:
        """Open a cache on a database.

        Args:
            engine: A database URL (async or sync driver, or a bare ``postgresql://``
                or ``sqlite:///`` URL), an ``AsyncEngine``, or a sync ``Engine``. The
                engine of the other kind is derived from it (asyncpg <-> psycopg,
                aiosqlite <-> sqlite3) unless ``sync_engine`` is given, carrying the
                engine's ``connect_args``, ``creator`` (SQLite), execution options and
                pool settings; what cannot be carried raises ``ConfigurationError``.
            cache_schema: Accepted for ``langchain_community`` compatibility: its
                ``FullLLMCache`` and ``FullMd5LLMCache`` are ignored (this cache's own
                layout is used); any other class raises ``ConfigurationError``.
            sync_engine: The sync ``Engine`` paired with an ``AsyncEngine`` passed as
                ``engine``; it must reach the same table, which is checked at first use.
            table_name: Name of the cache table: at most 63 bytes of UTF-8 on
                PostgreSQL, 64 characters on MySQL/MariaDB; never NUL or a lone
                surrogate.
            schema: Database schema of the table (PostgreSQL), or None for the default;
                the same limits apply.
            create_table: Create the table (if missing) before first use. Pass False
                when the table is managed by your own migrations.
            coalesce: Serve async calls that are waiting at the same moment on one event
                loop with one statement: lookups with one ``SELECT .. WHERE key IN``,
                updates with one multi-row upsert. Nothing waits for company: a batch is
                whatever is queued when a connection is free. False sends one statement
                per call.
            ttl: Seconds (or a ``timedelta``) an entry stays valid after it was written;
                an older entry is a miss. ``purge_expired()`` deletes them. None (the
                default): entries never expire.
            namespace: Entries of different namespaces never see each other, even in
                one table; ``clear()`` and ``purge_expired()`` touch only this one. At
                most 255 characters, without NUL or lone surrogates.
            max_entries: Keep the table's entries (of this namespace) near this many
                by deleting the oldest ones. Amortised: each cache object trims on its
                first write and after every ``max(1, min(max_entries // 10, 1000))`` of
                its writes, so the
                table may exceed the bound by that many entries per writing process.
                ``enforce_max_entries()`` trims at once. None (the default): no bound.
            store_prompts: Keep the prompt and llm_string text in the table, for
                inspection. False stores only their hash (the key), for prompts that
                hold personal data; lookups work the same.
            on_error: ``"miss"`` (default): a database or driver error makes a lookup a
                miss and an update or clear a no-op, logged (at most once per 10 s per
                operation) and counted, so a broken cache never breaks the LLM call.
                ``"raise"``: raise ``CacheError`` chained to the cause. Cancellation
                always propagates.
            max_batch_size: Most keys per batched lookup (updates: at most 100 rows).
            max_concurrency: Most async statements in flight at once per event loop;
                defaults to the async engine's pool size (its persistent connections),
                and 1 on SQLite, so any number of concurrent callers never times out
                waiting for a connection, and no overflow connection is opened and
                closed per call.
            replicas: Read replicas (URLs or engines of the standbys of ``engine``'s
                database): lookups go to them, spread across them, and to the primary
                when none can answer; writes, ``clear()``, purges and trims stay on the
                primary. A key this object wrote lately is read from the primary, so a
                lookup after its own write sees it. See docs/failover.md.
            max_replica_lag: Skip a standby whose replay lag is past this many seconds
                (or ``timedelta``), measured at most once a second per standby
                (PostgreSQL only). None (the default): a standby serves whatever it has
                replayed.
            timeout: The deadline of each ``lookup``/``update`` call (sync or async)
                in seconds or a ``timedelta``: waiting for a connection slot,
                connecting and the statement all count. When it passes the call is a
                miss or no-op (``on_error="miss"``, counted in ``stats().timeouts``) or
                raises ``CacheError`` from a ``TimeoutError``; a connection cut off
                mid-statement is discarded. None: no deadline. Maintenance calls take
                their own ``timeout=`` argument. See docs/reliability.md for what
                bounds engines you pass in.
            breaker_threshold: After this many consecutive failed or timed-out calls,
                stop sending statements for ``breaker_cooldown``: calls are answered
                at once (a miss, a no-op, or ``CacheError`` under ``"raise"``); then one
                call goes through as a probe, and its success resumes normal work.
                None: no circuit breaker.
            breaker_cooldown: Seconds (or a ``timedelta``) the breaker stays open
                (default 2): short enough that a failover is followed within seconds.
            local_max_bytes: Bytes of recently read or written entries kept in this
                process (payloads, or once read a snapshot of their objects; least
                recently used out first), served without a statement. 32 MiB by
                default; 0 turns the in-process tier off.
            local_max_staleness: Seconds (or a ``timedelta``) an entry is served from
                memory after it was read or written (default 1.0): what another
                process (or the command line) writes, clears, purges or trims is seen
                within that time. This object's own writes, clears, purges and trims
                apply to memory at once.
            single_flight: While one caller in this process has missed a key and not
                yet stored it, further lookups of that key wait for that store instead
                of missing (so concurrent identical prompts call the model once).
                ``True`` waits up to 60 s, a number or ``timedelta`` that long; when
                the filler ends without storing (its model failed) or runs out of
                time, one waiter is released to fill and the others keep waiting.
                A lookup the database does not answer (an error or an open breaker)
                takes part the same way. ``False`` (the default): every miss returns
                at once.

        Raises:
            ConfigurationError: A setting is out of its range (checked before any
                engine is made), the engines or URL cannot be used or paired, the
                backend cannot hold the table name, schema or namespace, or
                ``cache_schema`` is not one of community's defaults; the message says
                what to pass instead. At first use: the two engines reach different
                tables, or an async method runs outside asyncio.
        """
        options = CacheOptions(
            table_name=table_name,
            schema=schema,
            namespace=namespace,
            create_table=create_table,
            store_prompts=store_prompts,
            on_error=on_error,
            ttl=ttl,
            max_entries=max_entries,
            timeout=timeout,
            coalesce=coalesce,
            max_batch_size=max_batch_size,
            max_concurrency=max_concurrency,
            max_replica_lag=max_replica_lag,
            breaker_threshold=breaker_threshold,
            breaker_cooldown=breaker_cooldown,
            local_max_bytes=local_max_bytes,
            local_max_staleness=local_max_staleness,
            single_flight=single_flight,
        )
        check_cache_schema(cache_schema, options.table_name)
        self._timeout = options.timeout
        self._ttl = options.ttl
        self._namespace = options.namespace
        self._store_prompts = options.store_prompts
        self._breaker = CircuitBreaker(options.breaker_threshold, options.breaker_cooldown)
        self._policy = ErrorPolicy(options.on_error, breaker=self._breaker)
        self._closed = False
        self._skipped_log = RateLimitedLog()
        self._engines: EnginePair = resolve_engines(engine, sync_engine, self._timeout)
        watch_sync_engine(self._engines.sync_engine)
        watch_async_engine(self._engines.async_engine.sync_engine)
        self._store = CacheTable.build(self._engines.dialect_name, options)
        self._table = self._store.table
        self._sql = self._store.statements
        readiness = self._store.readiness
        self._trims = None if options.max_entries is None else TrimSchedule(options.max_entries)
        self._counters = Counters()
        max_bytes = options.local_max_bytes
        self._tier = (
            LocalTier(max_bytes, options.local_max_staleness, self._ttl) if max_bytes else None
        )
        limit = options.single_flight
        self._flights = None if limit is None else Flights(limit)
        # table_stats() is an inspection: its failures are always reported.
        self._strict = ErrorPolicy("raise", breaker=self._breaker)
        self._policy.redact = self._strict.redact = Redactor(
            [
                *(raw_url_secrets(engine) if isinstance(engine, str) else ()),
                *url_secrets(self._engines.async_engine.url),
                *url_secrets(self.sync_engine.url),
            ]
        )
        pair = PairCheck(
            self._table,
            self._engines.sync_engine,
            self._engines.async_engine,
            readiness.loop_owner,
        )
        self._loop_engines = LoopEngines(
            self._engines.async_engine, owned=self._engines.async_engine in self._engines.owned
        )
        self._async = AsyncExecutor(self._loop_engines, self._table, readiness, pair)
        self._sync = SyncExecutor(self._engines.sync_engine, self._table, readiness, pair)
        self._reads = ReadRouter(
            replicas,
            max_lag=options.max_replica_lag,
            primary_async=self._async,
            primary_sync=self._sync,
            statements=self._sql,
            table=self._table,
        )
        batch = options.max_batch_size if options.coalesce else 1
        slots = (
            _default_concurrency(self._engines)
            if options.max_concurrency is None
            else options.max_concurrency
        )
        self._slots: PerLoop[asyncio.Semaphore] = PerLoop(lambda: asyncio.Semaphore(slots))
        # A lone call runs its statement in its own task where a cancellation ends it at
        # once (the asyncpg driver path): no task hop.
        deadlines = DeadlineQueue(self._timeout)  # shared: one FIFO and timer per loop
        self._lookups: Coalescer[str, tuple[bytes, float] | None] = Coalescer(
            self._fetch_payloads,
            max_batch=batch,
            slots=self._slots,
            inline=lambda: self._async.lean(self._sql.lookup),
            deadlines=deadlines,
        )
        self._updates: Coalescer[sql.Row, None] = Coalescer(
            self._write_rows,
            max_batch=min(batch, _MAX_UPSERT_ROWS),
            slots=self._slots,
            inline=lambda: self._async.lean(self._sql.upsert),
            deadlines=deadlines,
        )

    @property
    def async_engine(self) -> AsyncEngine:
        """The engine the async methods run on (other event loops get a clone of it)."""
        return self._engines.async_engine

    @property
    def sync_engine(self) -> Engine:
        """The engine the sync methods run on."""
        return self._engines.sync_engine

    @property
    def engine(self) -> Engine:
        """The sync engine, as ``langchain_community``'s ``cache.engine``."""
        return self._engines.sync_engine

    # What both sides share: keys, rows, and the batch functions of the coalescers.

    def _key(self, prompt: str, llm_string: str) -> str:
        return cache_key(
            _check_text("prompt", prompt), _check_text("llm_string", llm_string), self._namespace
        )

    def _row(self, prompt: str, llm_string: str, return_val: object) -> sql.Row | None:
        """The entry to store, or None (with a warning) if the value cannot be stored.

        A wrong argument type raises; content that JSON cannot hold only skips caching,
        since LangChain stores every model answer and the call itself must not fail.
        """
        _check_text("prompt", prompt)
        _check_text("llm_string", llm_string)
        generations = validate_generations(return_val)
        try:
            payload = encode_generations(generations)
        except Exception as exc:  # unstorable content, nesting too deep for the encoder
            self._skipped_log.warning(
                "encode", "not caching this answer: %s: %.200s", type(exc).__name__, exc
            )
            return None
        return sql.entry_row(
            prompt,
            llm_string,
            payload,
            time.time(),
            namespace=self._namespace,
            store_prompts=self._store_prompts,
        )

    async def _fetch_payloads(self, keys: Sequence[str]) -> list[tuple[bytes, float] | None]:
        # Within the batch's deadline (the coalescer's), from its start.
        rows: Sequence[Any] = await self._reads.afetch(keys, time.time())
        found = {row[0]: (row[1], row[2]) for row in rows}  # key, payload, updated_at
        return [found.get(key) for key in keys]

    # The in-process tier and single flight, around the statements of both sides.

    def _from_memory(self, key: str, start: float) -> RETURN_VAL_TYPE | None:
        tier = self._tier
        if tier is None:
            return None
        held = tier.get(key)
        if held is None:
            return None
        if held.snapshot:
            result: RETURN_VAL_TYPE | None = thaw(held.payload)
        else:
            result = decode_generations(held.payload, self._skipped_log)
            snapshot = None if result is None else freeze(result)
            if snapshot is not None:  # taken before the caller can change the objects
                tier.trust(key, held, snapshot)
        if result is not None:
            self._counters.lookup(hit=True, seconds=perf_counter() - start, memory=True)
        return result

    def _fetched(
        self, key: str, found: tuple[bytes, float] | None, since: Mark | None
    ) -> RETURN_VAL_TYPE | None:
        if found is None:
            return None
        result = decode_generations(found[0], self._skipped_log)
        if result is not None and self._tier is not None and since is not None:
            self._tier.put(key, found[0], found[1], since=since)
        return result

    def _mark(self) -> Mark | None:
        return None if self._tier is None else self._tier.mark()

    def _stored(self, row: sql.Row, since: Mark | None) -> None:
        if self._tier is not None and since is not None:
            self._tier.put(row["key"], row["payload"], row["updated_at"], since=since, read=False)

    def _forget(self) -> None:
        # Everything, not just what the statement matched: the tier's idea of when an
        # entry was written may differ from the row's (another writer, clock skew).
        if self._tier is not None:
            self._tier.forget()

    def _answered(self, result: RETURN_VAL_TYPE | None, start: float) -> RETURN_VAL_TYPE | None:
        """A lookup the table (or a single-flight wait) answered: counted, returned."""
        self._counters.lookup(hit=result is not None, seconds=perf_counter() - start)
        return result

    def _unanswered(
        self, key: str, outcome: Outcome | None, start: float
    ) -> RETURN_VAL_TYPE | None:
        """A lookup the database did not answer (failed, or the breaker is open).

        Single flight needs no database, so its callers still wait for one filler instead
        of all calling the model. The call is counted already (an error, or a breaker
        short-circuit); only a payload brought by the filler is counted, as a hit.
        """
        result = _waited(outcome)
        if result is not None:
            self._counters.lookup(hit=True, seconds=perf_counter() - start)
        return result

    def _end_flight(self, row: sql.Row) -> None:
        if self._flights is not None:
            self._flights.stored(row["key"], row["payload"])

    async def _write_rows(self, rows: Sequence[sql.Row]) -> list[Failed | None]:
        results: list[Failed | None] = [None] * len(rows)
        for chunk in sql.size_chunks(rows, _MAX_UPSERT_BYTES):
            try:
                params = self._sql.upsert_params([rows[index] for index in chunk])
                await self._async.execute(self._sql.upsert, params, lean=True)
            except Exception as exc:  # this statement's writers fail, the others go on
                for index in chunk:
                    results[index] = Failed(exc)
        return results

    # Sync facade.

    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Return the cached generations for (prompt, llm_string), or None on a miss.

        A hit is always a ``list``, as LangChain requires.
        """
        self._check_open()
        key = self._key(prompt, llm_string)
        start = perf_counter()
        result = self._from_memory(key, start)
        if result is not None:
            return result
        if self._policy.admit("lookup"):
            try:
                with self._policy.mapped("lookup"):
                    return self._answered(self._lookup_stored(key), start)
            except OperationFailed as failure:
                self._policy.absorb(failure)
        if self._flights is None:
            return None
        return self._unanswered(key, self._flights.wait_key(key, lead=True), start)

    def _lookup_stored(self, key: str) -> RETURN_VAL_TYPE | None:
        flights = self._flights
        if flights is not None:
            waited = flights.wait_key(key, lead=False)
            if waited is not None:
                return _waited(waited)
        since = self._mark()
        with SyncDeadline(self._timeout):
            rows = self._reads.fetch([key], time.time())
        result = self._fetched(key, (rows[0].payload, rows[0].updated_at) if rows else None, since)
        if result is None and flights is not None:
            return _waited(flights.wait_key(key, lead=True))
        return result

    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Store ``return_val``, replacing any entry for (prompt, llm_string) entirely.

        Raises:
            TypeError: ``return_val`` is not a sequence of ``Generation`` objects.
        """
        self._check_open()
        row = self._row(prompt, llm_string, return_val)
        if row is None:
            return
        if not self._policy.admit("update"):
            self._end_flight(row)  # waiters get the answer, stored or not
            return
        self._reads.wrote(row["key"])
        start = perf_counter()
        since = self._mark()
        try:
            with self._policy.mapped("update"):
                with SyncDeadline(self._timeout):
                    self._sync.execute(self._sql.upsert, self._sql.upsert_params([row]))
                self._counters.write(perf_counter() - start)
                self._stored(row, since)
                if self._trims is not None and self._trims.wrote():
                    # Part of this update call: bounded by the same per-call timeout.
                    self.enforce_max_entries(timeout=self._timeout)
        except OperationFailed as failure:
            self._policy.absorb(failure)
        finally:
            self._end_flight(row)

    def clear(self, *, timeout: Timeout = DEFAULT_MAINTENANCE_TIMEOUT, **kwargs: Any) -> None:
        """Delete this cache's entries (its namespace only), or a subset of them.

        Args:
            timeout: Deadline of the whole call in seconds or a ``timedelta`` (None:
                none), handled as ``on_error`` says.
            **kwargs: ``older_than``: seconds or a ``timedelta``; only entries written
                longer ago than that. ``llm_string``: only that model's entries. Both
                may be combined.

        Raises:
            TypeError: An unknown keyword argument or a bad ``older_than`` was given.
        """
        self._maintain("clear", timeout, lambda: self._clearing(*_clear_filters(kwargs)))

    def purge_expired(self, *, timeout: Timeout = DEFAULT_MAINTENANCE_TIMEOUT) -> int:
        """Delete the entries older than ``ttl``, at most 1000 rows per statement.

        Args:
            timeout: Deadline of the whole call in seconds or a ``timedelta`` (None:
                none), handled as ``on_error`` says.

        Returns:
            How many entries were deleted.

        Raises:
            ConfigurationError: The cache has no ``ttl``.
        """
        return self._maintain("purge", timeout, self._purge) or 0

    def enforce_max_entries(self, *, timeout: Timeout = DEFAULT_MAINTENANCE_TIMEOUT) -> int:
        """Delete the oldest entries beyond ``max_entries`` now, in batches.

        Args:
            timeout: Deadline of the whole call in seconds or a ``timedelta`` (None:
                none), handled as ``on_error`` says.

        Returns:
            How many entries were deleted.

        Raises:
            ConfigurationError: The cache has no ``max_entries``.
        """
        return self._maintain("evict", timeout, self._trim) or 0

    def stats(self) -> CacheStats:
        """Hits, misses, writes, errors and latency percentiles of this cache object.

        Counted in this process since the cache was made; no database access.
        """
        return self._counters.snapshot(
            self._policy.errors + self._strict.errors,
            timeouts=self._policy.timeouts + self._strict.timeouts,
            short_circuited=self._breaker.rejected,
            breaker=self._breaker.state,
            breaker_opened=self._breaker.opened,
            reads_by_server=self._reads.reads(),
        )

    def table_stats(self, *, timeout: Timeout = DEFAULT_MAINTENANCE_TIMEOUT) -> TableStats:
        """Read what the table holds for this namespace (``atable_stats()`` is the async twin).

        Args:
            timeout: Deadline of the whole call in seconds or a ``timedelta`` (None:
                none).

        Raises:
            CacheError: The database could not be read in time, or the circuit breaker
                is open (whatever ``on_error`` says: this is an inspection, not a cache
                call).
        """
        stats = self._maintain("table_stats", timeout, self._store.table_stats, self._strict)
        return _reported(stats)

    # Maintenance: each operation's steps are made (and its arguments checked) once, for
    # both sides; _maintain and _amaintain run them under the deadline and the policy.

    def _clearing(self, model: str | None, older_than: float | None) -> Steps[int]:
        self._reads.wrote_everything()
        try:
            return (yield from self._store.clear(model, older_than))
        finally:
            self._forget()

    def _purge(self) -> Steps[int]:
        if self._ttl is None:
            msg = "purge_expired() needs a cache made with ttl=...; use clear(older_than=...)"
            raise ConfigurationError(msg)
        return self._store.purge(self._ttl, self._forget)

    def _trim(self) -> Steps[int]:
        if self._trims is None:
            msg = "enforce_max_entries() needs a cache made with max_entries=..."
            raise ConfigurationError(msg)
        return self._store.trim(self._trims.max_entries, self._forget)

    def _maintain(
        self,
        operation: str,
        timeout: Timeout,
        make_steps: Callable[[], Steps[T]],
        policy: ErrorPolicy | None = None,
    ) -> T | None:
        """Run an operation's steps on the sync side; None when the policy skipped it."""
        self._check_open()
        run = self._admitted(operation, timeout, make_steps, policy or self._policy)
        if run is None:
            return None
        try:
            with run.policy.mapped(operation), SyncDeadline(run.seconds):
                return run_sync(run.steps, self._sync)
        except OperationFailed as failure:
            run.policy.absorb(failure)
            return None

    async def _amaintain(
        self,
        operation: str,
        timeout: Timeout,
        make_steps: Callable[[], Steps[T]],
        policy: ErrorPolicy | None = None,
    ) -> T | None:
        """``_maintain`` on the async side, each statement holding a connection slot."""
        self._check_open()
        require_asyncio()
        run = self._admitted(operation, timeout, make_steps, policy or self._policy)
        if run is None:
            return None
        try:
            with run.policy.mapped(operation):
                async with AsyncDeadline(run.seconds):
                    return await run_async(run.steps, self._async, self._slots.get)
        except OperationFailed as failure:
            run.policy.absorb(failure)
            return None

    @staticmethod
    def _admitted(
        operation: str, timeout: Timeout, make_steps: Callable[[], Steps[T]], policy: ErrorPolicy
    ) -> _Maintenance[T] | None:
        """The checked arguments and steps of a call, or None if the policy turns it away."""
        seconds = optional_seconds("timeout", timeout)
        steps = make_steps()
        return _Maintenance(steps, seconds, policy) if policy.admit(operation) else None

    # Async core.

    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        """Async ``lookup``, on the AsyncEngine.

        Raises:
            ConfigurationError: No asyncio event loop runs (e.g. under trio).
        """
        self._check_open()
        require_asyncio()
        key = self._key(prompt, llm_string)
        start = perf_counter()
        result = self._from_memory(key, start)
        if result is not None:
            return result
        if self._policy.admit("lookup"):
            try:
                with self._policy.mapped("lookup"):
                    return self._answered(await self._alookup_stored(key), start)
            except OperationFailed as failure:
                self._policy.absorb(failure)
        if self._flights is None:
            return None
        return self._unanswered(key, await self._flights.await_key(key, lead=True), start)

    async def _alookup_stored(self, key: str) -> RETURN_VAL_TYPE | None:
        flights = self._flights
        if flights is not None:
            waited = await flights.await_key(key, lead=False)
            if waited is not None:
                return _waited(waited)
        since = self._mark()
        found = await self._lookups.submit(key)  # within the per-call timeout
        result = self._fetched(key, found, since)
        if result is None and flights is not None:
            return _waited(await flights.await_key(key, lead=True))
        return result

    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        """Async ``update``, on the AsyncEngine.

        Raises:
            TypeError: ``return_val`` is not a sequence of ``Generation`` objects.
            ConfigurationError: No asyncio event loop runs (e.g. under trio).
        """
        self._check_open()
        require_asyncio()
        row = self._row(prompt, llm_string, return_val)
        if row is None:
            return
        if not self._policy.admit("update"):
            self._end_flight(row)  # waiters get the answer, stored or not
            return
        self._reads.wrote(row["key"])
        start = perf_counter()
        since = self._mark()
        try:
            with self._policy.mapped("update"):
                await self._updates.submit(row)  # within the per-call timeout
                self._counters.write(perf_counter() - start)
                self._stored(row, since)
                if self._trims is not None and self._trims.wrote():
                    await self.aenforce_max_entries(timeout=self._timeout)
        except OperationFailed as failure:
            self._policy.absorb(failure)
        finally:
            self._end_flight(row)

    async def aclear(
        self, *, timeout: Timeout = DEFAULT_MAINTENANCE_TIMEOUT, **kwargs: Any
    ) -> None:
        """Async ``clear``, on the AsyncEngine; takes the same arguments.

        Raises:
            TypeError: An unknown keyword argument or a bad ``older_than`` was given.
            ConfigurationError: No asyncio event loop runs (e.g. under trio).
        """
        await self._amaintain("clear", timeout, lambda: self._clearing(*_clear_filters(kwargs)))

    async def apurge_expired(self, *, timeout: Timeout = DEFAULT_MAINTENANCE_TIMEOUT) -> int:
        """Async ``purge_expired``, on the AsyncEngine; takes the same ``timeout``.

        Returns:
            How many entries were deleted.

        Raises:
            ConfigurationError: The cache has no ``ttl``, or no asyncio loop runs.
        """
        return await self._amaintain("purge", timeout, self._purge) or 0

    async def aenforce_max_entries(self, *, timeout: Timeout = DEFAULT_MAINTENANCE_TIMEOUT) -> int:
        """Async ``enforce_max_entries``, on the AsyncEngine; takes the same ``timeout``.

        Returns:
            How many entries were deleted.

        Raises:
            ConfigurationError: The cache has no ``max_entries``, or no asyncio loop runs.
        """
        return await self._amaintain("evict", timeout, self._trim) or 0

    async def atable_stats(self, *, timeout: Timeout = DEFAULT_MAINTENANCE_TIMEOUT) -> TableStats:
        """Async ``table_stats``: what the table holds for this namespace.

        Raises:
            CacheError: The database could not be read in time, or the breaker is open
                (``ConfigurationError`` when no asyncio loop runs).
        """
        stats = await self._amaintain("table_stats", timeout, self._store.table_stats, self._strict)
        return _reported(stats)

    async def astats(self, *, timeout: Timeout = DEFAULT_MAINTENANCE_TIMEOUT) -> TableStats:
        """Deprecated name of ``atable_stats`` (kept for one release).

        Raises:
            CacheError: As ``atable_stats``.
        """
        return await self.atable_stats(timeout=timeout)

    # Health: one probe lookup, whatever the breaker says, never raising for the database.

    def _health_timeout(self, timeout: Timeout) -> float:
        seconds = optional_seconds("timeout", timeout)
        if seconds is None:
            seconds = self._timeout if self._timeout is not None else DEFAULT_TIMEOUT
        return seconds

    def _health(self, start: float, exc: Exception | None) -> Health:
        if exc is not None:
            error = describe(exc, self._policy.redact)
            return Health(ok=False, latency=None, error=error, breaker=self._breaker.state)
        latency = perf_counter() - start
        return Health(ok=True, latency=latency, error=None, breaker=self._breaker.state)

    def _probe_params(self) -> dict[str, Any]:
        return self._sql.lookup_params([PROBE_KEY], time.time())

    def health(self, *, timeout: Timeout = None) -> Health:
        """Check that the table answers a lookup, on the sync engine, within a deadline.

        Args:
            timeout: The probe's deadline in seconds or a ``timedelta``; None: the
                cache's ``timeout`` (2 s if the cache has none).

        Returns:
            ``Health``: ``ok``, the probe's ``latency`` in seconds, the ``error`` if
            any, and the breaker's state. A database fault is reported, never raised.
        """
        self._check_open()
        seconds = self._health_timeout(timeout)
        start = perf_counter()
        try:
            with SyncDeadline(seconds):
                self._sync.fetch(self._sql.lookup, self._probe_params())
        except Exception as exc:
            return self._health(start, exc)
        return self._health(start, None)

    async def ahealth(self, *, timeout: Timeout = None) -> Health:
        """Async ``health``, on the AsyncEngine (the wait for a connection slot counts)."""
        self._check_open()
        seconds = self._health_timeout(timeout)
        start = perf_counter()
        try:
            async with AsyncDeadline(seconds), self._slots.get():
                await self._async.fetch(self._sql.lookup, self._probe_params())
        except Exception as exc:
            return self._health(start, exc)
        return self._health(start, None)

    def _check_open(self) -> None:
        if self._closed:
            msg = (
                "this cache is closed (close() or aclose() was called): make a new "
                "SQLAlchemyCache, or close it only when the application is done with it"
            )
            raise CacheError(msg)

    # Lifecycle: only engines the cache created are disposed of.

    def close(self) -> None:
        """Dispose of the engines this cache created (engines passed in are left alone).

        Async connections cannot be closed politely without their event loop, so their
        pools are dropped; prefer ``aclose()`` in async code. Any call made after it
        raises ``CacheError``; closing again does nothing.
        """
        self._closed = True
        self._async.close()
        for engine, loop in self._async_engines_to_dispose():
            drop_pool(engine, loop)
        for owned in self._engines.owned:
            if isinstance(owned, Engine):
                owned.dispose()
        self._reads.close()

    async def aclose(self) -> None:
        """Dispose of the engines this cache created, closing async connections politely.

        Connections of the running event loop are closed; those of other loops are dropped.
        Any call made after it raises ``CacheError``; closing again does nothing.
        Outside asyncio (trio) this is ``close()``: nothing was opened by this loop.
        """
        self._closed = True
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            self.close()
            return
        await self._async.aclose()  # held connections back to the pool, then disposed of
        for engine, loop in self._async_engines_to_dispose():
            if loop is running:
                await engine.dispose()
            else:
                drop_pool(engine, loop)
        for owned in self._engines.owned:
            if isinstance(owned, Engine):
                owned.dispose()
        await self._reads.aclose()

    def _async_engines_to_dispose(
        self,
    ) -> list[tuple[AsyncEngine, asyncio.AbstractEventLoop | None]]:
        # The per-loop clones are always ours; the first engine only if we created it.
        base_owned = self._engines.async_engine in self._engines.owned
        return [
            (engine, loop)
            for engine, loop in self._loop_engines.engines()
            if engine is not self._loop_engines.base or base_owned
        ]

    def __enter__(self) -> SQLAlchemyCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> SQLAlchemyCache:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.aclose()
        except Exception as close_error:
            if exc is None:
                raise
            # The error that left the block is the one to see.
            logger.warning(
                "closing the cache after %s failed too: %s: %s",
                type(exc).__name__,
                type(close_error).__name__,
                close_error,
            )

    def __repr__(self) -> str:
        url = safe_url(self._engines.sync_engine.url)
        return f"{type(self).__name__}({url!r}, table_name={self._table.name!r})"
