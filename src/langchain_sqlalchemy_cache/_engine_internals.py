"""Every use of SQLAlchemy's private API, each with the public API that is missing.

- What ``create_engine`` was given, read back from an engine. Deriving the twin of a
  caller's engine needs the ``connect_args``, ``creator`` and pool settings the caller
  configured. SQLAlchemy has no public API that returns them: ``connect_args`` survive
  only inside the closure of the ``connect`` function that ``create_engine`` hands to
  the pool, and the creator and pool settings only in private attributes of the pool
  (``Pool.recreate()`` reads the same ones).
- Whether a connection held since its checkout may still be used (the pool's checks).
- Running a compiled statement on SQLAlchemy's asyncpg adapter without the execution
  context (the lean hot path's driver path).
- An engine's root, and taking idle connections out of a pool without closing them.

Each use is checked, so a SQLAlchemy release that moves these internals makes pairing
refuse with a request for an explicit engine pair, and turns the driver path off,
instead of guessing. Other libraries' private API (aiosqlite's worker thread) is used
in ``_loops.py``, commented where it is.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Executable
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool, Pool, QueuePool


class UnreadableEngineError(LookupError):
    """The engine's configuration is not where this SQLAlchemy release was expected to keep it."""


@dataclass
class EngineSettings:
    """What the caller configured on an engine, beyond its URL.

    Attributes:
        connect_args: The ``connect_args`` given to ``create_engine`` (the keyword
            arguments that the URL itself did not produce).
        creator: A ``creator`` (sync) the caller gave instead of the URL, or None.
        async_creator: An ``async_creator`` given to ``create_async_engine``, or None.
        do_connect: The engine has ``do_connect`` event hooks, which rewrite the
            connection arguments at each connect.
        pool_class: The pool's class.
        pool_options: ``create_engine`` keyword arguments that rebuild the pool's
            settings (``pool_size``, ``max_overflow``, ``pool_timeout``, ``pool_recycle``,
            ``pool_pre_ping``, ``pool_use_lifo``).
    """

    connect_args: dict[str, Any] = field(default_factory=dict)
    creator: Callable[[], Any] | None = None
    async_creator: Callable[[], Any] | None = None
    do_connect: bool = False
    pool_class: type[Pool] = QueuePool
    pool_options: dict[str, Any] = field(default_factory=dict)


def _closure(function: Any) -> dict[str, Any]:
    code = getattr(function, "__code__", None)
    cells = getattr(function, "__closure__", None) or ()
    if code is None or len(cells) != len(code.co_freevars):
        return {}
    return {name: cell.cell_contents for name, cell in zip(code.co_freevars, cells, strict=True)}


def _is_sqlalchemy_function(function: Any, qualname: str) -> bool:
    module = getattr(function, "__module__", "") or ""
    return module.startswith("sqlalchemy.") and getattr(function, "__qualname__", "") == qualname


def _zero_argument(creator: Any) -> Callable[[], Any]:
    try:
        parameters = inspect.signature(creator).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: called as is
        return creator  # type: ignore[no-any-return]
    required = [
        p
        for p in parameters
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if required:
        # The creator(connection_record) form: it depends on the sync pool's records.
        msg = "creator takes a connection record"
        raise UnreadableEngineError(msg)
    return creator  # type: ignore[no-any-return]


def _pool_options(pool: Pool) -> dict[str, Any]:
    options: dict[str, Any] = {}
    try:
        options["pool_recycle"] = pool._recycle
        options["pool_pre_ping"] = pool._pre_ping
        if isinstance(pool, QueuePool):  # AsyncAdaptedQueuePool is one too
            options["pool_size"] = pool.size()
            options["pool_timeout"] = pool.timeout()
            options["max_overflow"] = pool._max_overflow
            options["pool_use_lifo"] = pool._pool.use_lifo
    except AttributeError as exc:
        msg = f"the pool keeps its settings elsewhere ({exc})"
        raise UnreadableEngineError(msg) from exc
    return options


def read_settings(engine: Engine) -> EngineSettings:
    """Read what ``engine`` was created with (for an AsyncEngine, pass its ``sync_engine``).

    Raises:
        UnreadableEngineError: The settings cannot be read reliably.
    """
    pool = engine.pool
    creator = getattr(pool, "_creator", None)
    if creator is None:
        msg = "the pool keeps its creator elsewhere"
        raise UnreadableEngineError(msg)
    settings = EngineSettings(
        pool_class=type(pool),
        pool_options=_pool_options(pool),
        do_connect=bool(getattr(engine.dialect.dispatch, "do_connect", ())),
    )
    if _is_sqlalchemy_function(creator, "create_async_engine.<locals>.creator"):
        settings.async_creator = _closure(creator).get("async_creator")
        if settings.async_creator is None:
            msg = "create_async_engine's creator keeps its async_creator elsewhere"
            raise UnreadableEngineError(msg)
        return settings
    if not _is_sqlalchemy_function(creator, "create_engine.<locals>.connect"):
        settings.creator = _zero_argument(creator)
        return settings
    cells = _closure(creator)
    cparams = cells.get("cparams")
    if not isinstance(cparams, dict):
        msg = "create_engine's connect function keeps its connect_args elsewhere"
        raise UnreadableEngineError(msg)
    # The URL's own arguments are recomputed and left out; what remains was given.
    _, from_url = engine.dialect.create_connect_args(engine.url)
    settings.connect_args = {
        key: value
        for key, value in cparams.items()
        if key not in from_url or from_url[key] != value
    }
    return settings


# Pool classes with a twin on the other side; any other class was chosen by the caller
# for a reason the other driver may not share.
_SYNC_POOL_TWIN: dict[type[Pool], type[Pool]] = {
    QueuePool: AsyncAdaptedQueuePool,
    NullPool: NullPool,
}
_ASYNC_POOL_TWIN: dict[type[Pool], type[Pool]] = {
    AsyncAdaptedQueuePool: QueuePool,
    NullPool: NullPool,
}


def pool_twin(pool_class: type[Pool], *, to_async: bool) -> type[Pool] | None:
    """The pool class for the other side, or None if ``pool_class`` has no twin."""
    return (_SYNC_POOL_TWIN if to_async else _ASYNC_POOL_TWIN).get(pool_class)


def held_connection_fresh(connection: Any, pool: Pool) -> bool:
    """Whether an ``AsyncConnection`` held since its checkout from ``pool`` may be used.

    What the pool checks at each checkout (``_ConnectionRecord.get_connection``), which
    a held connection skips: that it is not older than the pool's last invalidation
    (SQLAlchemy invalidates the whole pool when a statement finds its connection dropped,
    or the server read-only: ``_failover.py``) nor than ``pool_recycle``. SQLAlchemy has
    no public API for either: the record's ``starttime``, the pool's ``_invalidate_time``
    and ``_recycle`` are private. Anything unreadable counts as stale: the connection is
    then closed and a fresh one checked out, which costs a checkout, never correctness.
    """
    sync = connection.sync_connection
    if sync is None or sync.closed or sync.invalidated:
        return False
    try:
        fairy = sync._dbapi_connection
        record = fairy._connection_record
        if record is None or fairy._pool is not pool:
            return False
        started = float(record.starttime)
        if pool._invalidate_time > started:
            return False
        recycle = pool._recycle
        return not (recycle > -1 and time.time() - started > recycle)
    except (AttributeError, TypeError, ValueError):
        return False


# Running a statement on the driver itself.


class DriverStatement:
    """A Core statement compiled once, run on asyncpg through SQLAlchemy's adapter.

    The statement stays SQLAlchemy's (compiled by its dialect, parameters bound by its
    compiled form, prepared and cached by its asyncpg adapter, which also honours the
    engine's ``prepared_statement_cache_size`` and ``prepared_statement_name_func``):
    what is skipped is the per-call execution context, result object and greenlet
    switch. Rows come back as driver records, read by position. Any error is left to
    the caller, which runs the statement again the ordinary way (every cache statement
    is idempotent): SQLAlchemy then classifies it (dropped connection, read-only
    server, lock conflict, vanished table) and retries as usual.
    """

    __slots__ = ("_binds", "_compiled", "_dialect", "_sql")

    def __init__(self, compiled: Any, dialect: Any) -> None:
        self._compiled = compiled
        self._dialect = dialect
        self._sql: str = compiled.string
        # Each positional parameter with its type's bind processor, as SQLAlchemy's
        # execution context applies them (DefaultExecutionContext._init_compiled).
        processors = compiled._bind_processors
        self._binds: tuple[tuple[str, Any], ...] = tuple(
            (name, processors.get(name)) for name in compiled.positiontup
        )

    @classmethod
    def build(cls, statement: Executable, engine: AsyncEngine) -> DriverStatement | None:
        """The driver form of ``statement`` on ``engine``, or None where it has none."""
        dialect = engine.dialect
        if dialect.driver != "asyncpg" or not _adapter_readable():
            return None
        compiled: Any = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        if (
            not hasattr(compiled, "_bind_processors")
            or compiled.literal_execute_params
            or compiled.post_compile_params
            or compiled.positiontup is None
        ):
            return None
        return cls(compiled, dialect)

    async def run(self, connection: AsyncConnection, params: Any, *, rows: bool) -> Any:
        """Run on ``connection``; return its rows, or its row count."""
        adapted: Any = connection.sync_connection.connection.dbapi_connection  # type: ignore[union-attr]
        try:  # every parameter given: the cache's own statements
            values = params
            positional = [
                values[name] if process is None else process(values[name])
                for name, process in self._binds
            ]
        except KeyError:  # some from the statement itself (a literal's bind)
            values = self._compiled.construct_params(params, _check=False)
            positional = [
                values[name] if process is None else process(values[name])
                for name, process in self._binds
            ]
        if rows and _lone_autocommit(adapted):
            # What the cursor's ``_prepare_and_execute`` does for a query, less what a
            # connection used by one caller in autocommit mode does not need: its mutex,
            # a transaction to open, a deque of rows and the parse of a status line.
            prepared, _ = await adapted._prepare(
                self._sql, self._dialect._invalidate_schema_cache_asof
            )
            return await prepared.fetch(*positional)
        cursor = adapted.cursor()
        # What the dialect's execution context sets before each statement: prepared
        # statements older than the last DDL this process ran are prepared again.
        cursor._invalidate_schema_cache_asof = self._dialect._invalidate_schema_cache_asof
        await cursor._prepare_and_execute(self._sql, positional)
        if rows:
            return list(cursor._rows)
        return int(cursor.rowcount)  # an attribute up to SQLAlchemy 2.0, a property in 2.1


def _lone_autocommit(adapted: Any) -> bool:
    """Whether the adapted connection runs in autocommit, with no transaction or statement.

    Then nothing but the caller uses it (a held connection is taken by one call at a
    time), and a query needs only its prepared statement.
    """
    return bool(
        adapted.isolation_level == "autocommit"
        and adapted._transaction is None
        and not adapted._execute_mutex.locked()
    )


def _adapter_readable() -> bool:
    """Whether SQLAlchemy's asyncpg adapter has the private parts the driver path uses.

    No public API runs a compiled statement on the adapter without the execution
    context: ``_prepare_and_execute`` (the coroutine its cursor's ``execute`` awaits),
    the rows and row count it leaves in ``_rows`` and ``_rowcount``, and the schema
    cache timestamp the execution context sets. A release that moves them turns the
    driver path off (SQLAlchemy's ordinary path runs every statement), never wrong.
    """
    try:
        from sqlalchemy.dialects.postgresql.asyncpg import (
            AsyncAdapt_asyncpg_connection,
            AsyncAdapt_asyncpg_cursor,
            PGDialect_asyncpg,
        )
    except ImportError:
        return False
    slots = getattr(AsyncAdapt_asyncpg_cursor, "__slots__", ())
    connection_slots = {
        slot
        for cls in AsyncAdapt_asyncpg_connection.__mro__
        for slot in getattr(cls, "__slots__", ())
    }
    return (
        callable(getattr(AsyncAdapt_asyncpg_cursor, "_prepare_and_execute", None))
        and callable(getattr(AsyncAdapt_asyncpg_connection, "_prepare", None))
        and {"_transaction", "_execute_mutex", "isolation_level"} <= connection_slots
        and "_invalidate_schema_cache_asof" in slots
        and hasattr(PGDialect_asyncpg, "_invalidate_schema_cache_asof")
        and hasattr(AsyncAdapt_asyncpg_cursor, "_rows")
    )


def watched(engine: AsyncEngine) -> bool:
    """Whether a listener on ``engine`` watches statements (before/after execute).

    Such a listener (tracing, statement counting) must see every statement, so none
    runs on the driver path while one is attached.
    """
    dispatch: Any = engine.sync_engine.dispatch
    return bool(  # spelled out: this runs on every lone statement
        dispatch.before_execute
        or dispatch.after_execute
        or dispatch.before_cursor_execute
        or dispatch.after_cursor_execute
    )


# Engines and pools.


def root_engine(engine: Engine) -> Engine:
    """The engine whose pool ``engine`` uses: itself, or the parent it proxies.

    An ``execution_options()`` copy proxies its parent (private ``_proxied``): no public
    accessor returns that parent.
    """
    root: Engine = getattr(engine, "_proxied", engine)
    return root


def take_idle(pool: Pool) -> Iterator[Any]:
    """Take the idle connection records out of ``pool``, one at a time.

    Private ``_pool`` (the queue of a ``QueuePool``): no public API takes idle
    connections out without closing them, and ``dispose()`` closes them, which for an
    async driver needs their own, possibly closed, event loop. Nothing for other pools.
    """
    idle = getattr(pool, "_pool", None)
    while idle is not None:
        try:
            yield idle.get_nowait()
        except Exception:  # Empty, or a pool without a queue
            return
