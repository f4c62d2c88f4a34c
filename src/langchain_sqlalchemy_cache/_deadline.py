"""Deadlines: every cache call ends within its time, whatever the database does.

Async calls run under ``asyncio.timeout``, except the wait of a caller queued for a
batch, which the coalescer bounds with one timer per event loop (``_batching``); a
statement cut off midway leaves its connection mid-protocol, so that connection is
terminated, never pooled again.

A sync call blocks its thread in the driver, where no timeout of Python's reaches it:
a server that acknowledges packets but never answers keeps ``recv`` waiting for ever
(TCP keepalives and ``tcp_user_timeout`` only notice a peer that stops acknowledging).
So a watchdog thread watches every statement of the sync engine and, at the call's
deadline, shuts the connection's socket down (``sqlite3``: interrupts it). The driver's
read then fails at once as a lost connection, which SQLAlchemy invalidates. Waiting for
a pooled connection and connecting are bounded by the pool's and the driver's own
timeouts, which the cache sets on the engines it creates (``sync_engine_options``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import timedelta
from types import TracebackType
from typing import Any

from sqlalchemy import URL, Connection, Engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.ext.asyncio import AsyncConnection

from ._errors import ConfigurationError
from ._retry import lost_protocol

DEFAULT_TIMEOUT = 2.0
# Maintenance statements (clear, purge, trim, table stats) may scan a big table.
DEFAULT_MAINTENANCE_TIMEOUT = 300.0
# Seconds the watchdog stays on call after its last watch ended.
_IDLE_GRACE = 1.0
# libpq (and psycopg) raise a connect_timeout below 2 s to 2 s.
_PSYCOPG_MIN_CONNECT_TIMEOUT = 2


def positive_seconds(name: str, value: object) -> float:
    """A positive duration given as seconds or a ``timedelta``, in seconds.

    Raises:
        ConfigurationError: It is not one.
    """
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        msg = f"{name} must be a positive number of seconds or a timedelta, got {value!r}"
        raise ConfigurationError(msg)
    if not math.isfinite(seconds):
        msg = f"{name} must be finite; pass None for no deadline, got {value!r}"
        raise ConfigurationError(msg)
    return float(seconds)


def optional_seconds(name: str, value: object) -> float | None:
    """``positive_seconds``, or None for None (no deadline)."""
    return None if value is None else positive_seconds(name, value)


def timeout_error(seconds: float) -> TimeoutError:
    """The error of a call that hit its deadline."""
    return TimeoutError(f"no answer from the database within {seconds:g}s")


if sys.version_info >= (3, 11):
    from asyncio import timeout as _timeout

    def _expired(timeout: Any) -> bool:
        return bool(timeout.expired())

else:  # Python 3.10: the same context manager, from the package asyncio's was made from
    from async_timeout import timeout as _timeout

    def _expired(timeout: Any) -> bool:
        return bool(timeout.expired)


# The async side.


class AsyncDeadline:
    """``async with``: ``asyncio.timeout(seconds)`` raising a ``TimeoutError`` that says so."""

    __slots__ = ("_seconds", "_timeout")

    def __init__(self, seconds: float | None) -> None:
        self._seconds = seconds
        self._timeout = _timeout(seconds)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._timeout.__aexit__(exc_type, exc, tb)
        except (TimeoutError, asyncio.TimeoutError):  # one class from Python 3.11 on
            if _expired(self._timeout) and self._seconds is not None:
                raise timeout_error(self._seconds) from None
            raise


async def discard(connection: AsyncConnection) -> None:
    """Close ``connection`` for good: its statement was cut off midway.

    The pool forgets it; the next checkout opens a fresh one. Drivers with a
    ``terminate`` (asyncpg, asyncmy, aiomysql, aiosqlite) are closed by force from
    outside SQLAlchemy's greenlet, with no goodbye a frozen server would never
    acknowledge; psycopg's async close sends its goodbye without waiting for a reply.
    """
    sync = connection.sync_connection
    if sync is None:
        return
    with contextlib.suppress(Exception):
        if connection.dialect.has_terminate:
            sync.invalidate()
        else:
            await connection.invalidate()


def _interrupt_cancelled_sqlite(context: ExceptionContext) -> None:
    # aiosqlite runs a statement in its own thread, which no cancellation reaches, and
    # SQLAlchemy's close of the cancelled connection queues up behind it: a write
    # waiting on a lock would still land after its caller gave up, even after newer
    # writes. sqlite3's interrupt() is safe from any thread. Runs before SQLAlchemy
    # invalidates the connection.
    if not isinstance(context.original_exception, asyncio.CancelledError):
        return
    with contextlib.suppress(Exception):
        driver = context.connection.connection.driver_connection  # type: ignore[union-attr]
        inner = getattr(driver, "_conn", None)  # aiosqlite's sqlite3 connection
        if isinstance(inner, sqlite3.Connection):
            inner.interrupt()


def watch_async_engine(engine: Engine) -> None:
    """Hook ``engine`` (the AsyncEngine's core) so that a failed statement ends cleanly.

    A cancelled statement on SQLite stops at once; an asyncpg connection whose protocol
    state broke is replaced (``lost_protocol``), so the call's one retry can hide it.
    """
    if engine.dialect.name == "sqlite":
        hook: Callable[[ExceptionContext], None] = _interrupt_cancelled_sqlite
    elif engine.dialect.driver == "asyncpg":
        hook = lost_protocol
    else:
        return
    if not event.contains(engine, "handle_error", hook):
        event.listen(engine, "handle_error", hook)


# The sync side.

_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("lsc_deadline", default=None)
_WATCH: ContextVar[_Watch | None] = ContextVar("lsc_watch", default=None)


class SyncDeadline:
    """``with``: the statements of this thread's block end by ``seconds`` from now.

    An error raised after the deadline passed is reported as the ``TimeoutError`` it
    amounts to (chained to the driver's error).
    """

    __slots__ = ("_seconds", "_token")

    def __init__(self, seconds: float | None) -> None:
        self._seconds = seconds

    def __enter__(self) -> None:
        seconds = self._seconds
        self._token = _DEADLINE.set(
            None if seconds is None else (time.monotonic() + seconds, seconds)
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        passed = deadline_passed()
        _DEADLINE.reset(self._token)
        _disarm()  # a statement the driver never reported back on must not stay watched
        if (
            self._seconds is not None
            and passed
            and isinstance(exc, Exception)
            and not isinstance(exc, TimeoutError)
        ):
            raise timeout_error(self._seconds) from exc


def deadline_passed() -> bool:
    """Whether the deadline of this thread's current call has passed (never if none)."""
    current = _DEADLINE.get()
    return current is not None and time.monotonic() >= current[0]


class _Watch:
    __slots__ = ("connection", "deadline", "fired")

    def __init__(self, connection: Any, deadline: float) -> None:
        self.connection = connection
        self.deadline = deadline
        self.fired = False


def abort(dbapi_connection: Any) -> None:
    """Make a thread blocked on ``dbapi_connection`` return at once, with an error."""
    interrupt = getattr(dbapi_connection, "interrupt", None)
    if callable(interrupt):  # sqlite3
        interrupt()
        return
    fd = _socket_fd(dbapi_connection)
    if fd is None:
        return
    # shutdown() acts on the socket, not the descriptor: a duplicate reaches the
    # driver's socket without closing the descriptor it still owns.
    with socket.socket(fileno=os.dup(fd)) as duplicate:
        duplicate.shutdown(socket.SHUT_RDWR)


def _socket_fd(dbapi_connection: Any) -> int | None:
    """The descriptor of the driver's socket: psycopg 3, PyMySQL, psycopg2."""
    for path in (("pgconn", "socket"), ("_sock", "fileno"), ("fileno",)):
        try:
            target = dbapi_connection
            for name in path:
                target = getattr(target, name)
            fd = target() if callable(target) else target
        except Exception:
            continue
        if isinstance(fd, int) and fd >= 0:
            return fd
    return None


class Watchdog:
    """One thread that aborts the connections of sync statements past their deadline.

    Arming and disarming take a lock and touch a dict: the thread sleeps until the
    earliest deadline (or, with nothing to watch, a second more, then for good) and is
    woken only when a new deadline comes sooner.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._watches: set[_Watch] = set()
        self._wake_at = math.inf
        self._recent = False  # armed since the thread last looked
        self._thread: threading.Thread | None = None

    def arm(self, connection: Any, deadline: float) -> _Watch:
        """Watch ``connection`` until ``disarm``; abort it at ``deadline`` (monotonic)."""
        watch = _Watch(connection, deadline)
        with self._cond:
            self._watches.add(watch)
            self._recent = True
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="langchain-sqlalchemy-cache-watchdog", daemon=True
                )
                self._thread.start()
            if deadline < self._wake_at:
                self._cond.notify()
        return watch

    def disarm(self, watch: _Watch) -> bool:
        """Stop watching; return whether the watchdog aborted the connection."""
        with self._cond:
            self._watches.discard(watch)
            return watch.fired

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for watch in [w for w in self._watches if w.deadline <= now]:
                    self._watches.discard(watch)
                    watch.fired = True
                    # Under the lock: the statement's thread cannot disarm and hand the
                    # connection back to the pool while it is being aborted.
                    with contextlib.suppress(Exception):
                        abort(watch.connection)
                if self._watches:
                    self._wake_at = min(w.deadline for w in self._watches)
                elif self._recent:
                    # Nothing to watch, maybe for a moment only: wake once more soon, so
                    # a steady stream of calls (each with a later deadline) arms without
                    # waking this thread for every call.
                    self._wake_at = now + _IDLE_GRACE
                else:
                    self._wake_at = math.inf
                self._recent = False
                self._cond.wait(None if self._wake_at == math.inf else self._wake_at - now)


WATCHDOG = Watchdog()


def _new_watchdog_in_child() -> None:
    global WATCHDOG  # the parent's thread does not exist in a forked child
    WATCHDOG = Watchdog()


os.register_at_fork(after_in_child=_new_watchdog_in_child)


def _before_cursor_execute(connection: Connection, *_: Any) -> None:
    current = _DEADLINE.get()
    if current is None:
        return
    deadline, seconds = current
    if time.monotonic() >= deadline:
        raise timeout_error(seconds)  # nothing sent yet: the connection stays clean
    _disarm()
    _WATCH.set(WATCHDOG.arm(connection.connection.dbapi_connection, deadline))


def _disarm() -> bool:
    watch = _WATCH.get()
    if watch is None:
        return False
    _WATCH.set(None)
    return WATCHDOG.disarm(watch)


def _after_cursor_execute(connection: Connection, *_: Any) -> None:
    if _disarm():
        # Its statement finished as the socket was shut: the connection is unusable.
        connection.invalidate()
        current = _DEADLINE.get()
        raise timeout_error(current[1] if current else 0.0)


def _handle_error(context: ExceptionContext) -> None:
    if _disarm():
        context.is_disconnect = True  # aborted by the watchdog: never pooled again


def watch_sync_engine(engine: Engine) -> None:
    """Bound every statement ``engine`` runs inside a ``SyncDeadline`` block."""
    if not event.contains(engine, "before_cursor_execute", _before_cursor_execute):
        event.listen(engine, "before_cursor_execute", _before_cursor_execute)
        event.listen(engine, "after_cursor_execute", _after_cursor_execute)
        event.listen(engine, "handle_error", _handle_error)


def _pymysql_unbounded_reads(dbapi_connection: Any, _record: Any) -> None:
    # read_timeout bounded the greeting and login; from here on the watchdog bounds
    # each call by its own deadline, so a maintenance statement may run longer than a
    # lookup's limit. PyMySQL reads these attributes before every socket operation.
    for name in ("_read_timeout", "_write_timeout"):
        if hasattr(dbapi_connection, name):
            setattr(dbapi_connection, name, None)


def limit_created_engine(engine: Engine, timeout: float | None) -> None:
    """What ``sync_engine_options`` needs once the engine exists."""
    if timeout is not None and engine.dialect.driver == "pymysql":
        event.listen(engine, "connect", _pymysql_unbounded_reads)


def sync_engine_options(url: URL, timeout: float | None) -> dict[str, Any]:
    """``create_engine`` options that bound waiting for and opening a sync connection.

    Settings the URL already carries win.
    """
    if timeout is None:
        return {}
    backend = url.get_backend_name()
    driver = url.drivername.partition("+")[2]
    connect: dict[str, Any] = {}
    if backend == "postgresql" and driver in ("psycopg", "psycopg2"):
        connect["connect_timeout"] = max(_PSYCOPG_MIN_CONNECT_TIMEOUT, math.ceil(timeout))
    elif backend in ("mysql", "mariadb") and driver == "pymysql":
        # PyMySQL reads the server's greeting with no limit but read_timeout; it is
        # lifted once connected (limit_created_engine).
        connect.update(connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout)
    elif backend in ("mysql", "mariadb") and driver == "mysqldb":
        connect["connect_timeout"] = max(1, math.ceil(timeout))
    options: dict[str, Any] = {}
    connect = {key: value for key, value in connect.items() if key not in url.query}
    if connect:
        options["connect_args"] = connect
    options["pool_timeout"] = timeout
    return options
