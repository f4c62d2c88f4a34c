"""One AsyncEngine per event loop.

An async driver's connections belong to the event loop that opened them: reusing one
from another loop fails with "attached to a different loop" or hangs. A cache object
outlives loops (``asyncio.run`` called repeatedly, pytest's per-test loops) and may be
shared by threads that each run a loop, so each loop gets its own connection pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import threading
import weakref
from collections.abc import AsyncGenerator, Callable
from typing import Any, Generic, TypeVar

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from ._engine_internals import root_engine, take_idle
from ._errors import ConfigurationError

T = TypeVar("T")

NOT_ASYNCIO = (
    "the cache's async methods need an asyncio event loop (its async drivers are asyncio "
    "libraries), and none is running here: under trio, or anyio on its trio backend, "
    "call the sync methods in a worker thread instead, e.g. "
    "await trio.to_thread.run_sync(cache.lookup, prompt, llm_string) or "
    "anyio.to_thread.run_sync(...), or run anyio on its asyncio backend"
)


def require_asyncio() -> asyncio.AbstractEventLoop:
    """The running asyncio loop.

    Raises:
        ConfigurationError: No asyncio loop runs (trio, or no loop at all): without this,
            every call would become a logged miss.
    """
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise ConfigurationError(NOT_ASYNCIO) from None


class PerLoop(Generic[T]):
    """One ``T`` per running event loop, made on first use there and dropped with the loop.

    asyncio primitives belong to the loop they were made on, and a cache object may be
    used from several loops (threads each running one, repeated ``asyncio.run``).

    A value often refers to its loop (a future, a timer, a lock that had waiters, a
    loop-end closer through the loop's finalizer hook), so the weak key alone would never
    let a closed loop go: every ``asyncio.run`` would leave one behind for as long as
    the cache lives. So the values of closed loops are dropped whenever a new loop
    registers (and on ``drop_closed``); ``on_closed`` is told of each first and says
    whether it may go (default: yes).
    """

    def __init__(
        self, factory: Callable[[], T], *, on_closed: Callable[[T], bool] | None = None
    ) -> None:
        self._factory = factory
        self._on_closed = on_closed
        self._lock = threading.Lock()
        self._items: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )
        # The last loop asked for and its T: most callers ask from one loop, and a
        # WeakKeyDictionary lookup makes a weak reference each time.
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop], T] | None = None

    def get(self) -> T:
        """The ``T`` of the running event loop, made (on that loop) if it has none yet."""
        loop = asyncio.get_running_loop()
        last = self._last
        if last is not None and last[0]() is loop:
            return last[1]
        item = self._items.get(loop)
        if item is None:
            with self._lock:
                item = self._items.get(loop)
                if item is None:
                    self._drop_closed()
                    item = self._items[loop] = self._factory()
        self._last = (weakref.ref(loop), item)
        return item

    def find(self, loop: asyncio.AbstractEventLoop) -> T | None:
        """The ``T`` of ``loop`` if one was made, without making one."""
        return self._items.get(loop)

    def items(self) -> list[tuple[asyncio.AbstractEventLoop, T]]:
        """Every loop's ``T`` now."""
        with self._lock:
            return list(self._items.items())

    def drop_closed(self) -> None:
        """Forget the values of loops already closed (those ``on_closed`` lets go)."""
        with self._lock:
            self._drop_closed()

    def _drop_closed(self) -> None:
        for gone in [loop for loop in self._items if loop.is_closed()]:
            item = self._items[gone]
            if self._on_closed is None or self._on_closed(item):
                self._items.pop(gone, None)
                last = self._last
                if last is not None and last[1] is item:
                    self._last = None


def clone_engine(base: AsyncEngine) -> AsyncEngine:
    """The same engine (dialect, URL, options, event listeners) on a pool of its own."""
    sync = base.sync_engine
    # An engine made by execution_options() proxies its parent's pool; clone the parent.
    root = root_engine(sync)
    twin = copy.copy(root)
    twin.pool = root.pool.recreate()  # same settings and pool events, no connections
    if root is not sync:
        twin = twin.execution_options(**sync.get_execution_options())
    return AsyncEngine(twin)


def drop_pool(
    engine: AsyncEngine,
    loop: asyncio.AbstractEventLoop | None,
    ends: LoopEnds | None = None,
) -> None:
    """Drop the pool of ``engine``, whose connections belong to ``loop``, without I/O.

    When ``loop`` is gone (or is this thread's running loop), idle connections are
    terminated first, as SQLAlchemy does for a connection the garbage collector finds:
    for aiosqlite that closes the file and ends its thread now, rather than whenever the
    collector gets there (warning about an unclosed connection, and reporting its thread
    failing on the closed loop). The thread reports its stop to the running loop: with
    ``ends``, that loop waits for the thread at its own end. Drivers whose sockets
    need their closed loop fail quietly and are left to the collector. Connections of a
    loop still running in another thread are never touched from this one.
    """
    try:
        running = asyncio.get_running_loop()  # aiosqlite reports the stop to it
    except RuntimeError:
        running = None  # outside any loop: left to the garbage collector
    ours = loop is None or loop is running or loop.is_closed()
    for record in take_idle(engine.sync_engine.pool) if running and ours else ():
        with contextlib.suppress(Exception):
            record.dbapi_connection.terminate()
            if ends is not None:
                ends.adopt(record.driver_connection)
    engine.sync_engine.dispose(close=False)


# How long a loop about to close waits for an aiosqlite worker to finish the statement
# a cancelled call left running.
WORKER_STOP_TIMEOUT_S = 30.0


class _LoopEnd:
    """What one event loop closes as it shuts down: its engine, its aiosqlite connections."""

    __slots__ = ("closer", "connections", "engine")

    def __init__(self) -> None:
        self.engine: AsyncEngine | None = None
        # Each with the pool entry that opened it, if any. Strong references: a
        # terminated connection must outlive its thread's last answer, or it is
        # collected while still open (a ResourceWarning).
        self.connections: list[tuple[_Worker, ConnectionPoolEntry | None]] = []
        # The loop holds its async generators weakly: this one lives here, as long as it.
        self.closer: AsyncGenerator[None, None] | None = None


def _new_loop_end() -> _LoopEnd:
    end = _LoopEnd()
    end.closer = _until_loop_end(end)
    return end


def _loop_end_ran(end: _LoopEnd) -> bool:
    # Once the closer has run, nothing of its loop is needed. One that never ran (a
    # loop closed without finalizing its async generators) is kept: dropped, it would
    # be finalized on a closed loop.
    return getattr(end.closer, "ag_frame", None) is None


class LoopEnds:
    """Per event loop, one closer that runs on that loop as it shuts down.

    It disposes of the engine handed to the loop, then closes the aiosqlite connections
    opened on the loop and waits for their worker threads to end. A call cancelled
    mid-statement, or mid-connect, when its loop ends with calls in flight, leaves the
    connection's worker thread finishing that job and then answering the loop that
    asked. The loop must outlive that answer, so every connection is known from the
    moment it is made, not once it is connected, and a loop that opens one gets its
    closer then, even if it reached the engine without the cache (``cache.async_engine``
    used directly).

    One closer per loop, made once and kept as long as the loop: a second one would
    close the same connections concurrently, and a replaced one would be collected while
    its loop still runs, which asyncio answers by finalizing it at once, closing the
    loop's connections under the statements using them.
    """

    def __init__(self) -> None:
        self._ends: PerLoop[_LoopEnd] = PerLoop(_new_loop_end, on_closed=_loop_end_ran)

    def _here(self) -> _LoopEnd:
        """The running loop's, made (and its closer started) on first use."""
        return self._ends.get()

    def close_at_end(self, engine: AsyncEngine) -> None:
        """Dispose of ``engine``, the running loop's (and only its), as the loop ends."""
        end = self._here()
        assert end.engine in (None, engine), "a loop is handed one engine"
        end.engine = engine

    def route(
        self, _dialect: object, record: ConnectionPoolEntry, _args: object, params: Any
    ) -> None:
        """``do_connect`` listener: have SQLAlchemy open aiosqlite through ``connect``."""
        params.setdefault("async_creator_fn", functools.partial(self.connect, record))

    def connect(self, record: ConnectionPoolEntry, *args: Any, **kwargs: Any) -> Any:
        """Open an aiosqlite connection (awaitable) and remember it under its loop."""
        import aiosqlite  # only reached on aiosqlite engines

        worker = _Worker(aiosqlite.connect(*args, **kwargs), track=True)
        # As SQLAlchemy's aiosqlite dialect does for the connections it opens itself (it
        # skips this for an async_creator_fn): a worker thread never keeps the process
        # alive. Private API: aiosqlite has no public way to reach its thread.
        worker.connection._thread.daemon = True
        self._keep(worker, record)
        return worker.connection

    def adopt(self, connection: Any) -> None:
        """Have the running loop stop ``connection``'s worker thread before it ends."""
        self._keep(_Worker(connection, track=False), None)

    def _keep(self, worker: _Worker, record: ConnectionPoolEntry | None) -> None:
        connections = self._here().connections
        for ended, _ in connections:
            if not _worker_alive(ended.connection):
                ended.close_opened()
        connections[:] = [c for c in connections if _worker_alive(c[0].connection)]
        connections.append((worker, record))


class _Worker:
    """An aiosqlite connection and the sqlite3 connections its worker thread opened.

    A connect cancelled while the worker was opening the file leaves the sqlite3
    connection it opened to no one (aiosqlite drops the answer): they are kept here and
    closed once the worker has ended.
    """

    def __init__(self, connection: Any, *, track: bool) -> None:
        self.connection = connection
        self.opened: list[Any] = []
        # Private API: aiosqlite has no hook on the sqlite3 connection its thread opens.
        connector = getattr(connection, "_connector", None) if track else None
        if connector is None:  # already connected, or an aiosqlite built otherwise
            return

        def connect_and_keep() -> Any:
            opened = connector()
            self.opened.append(opened)
            return opened

        connection._connector = connect_and_keep

    def close_opened(self) -> None:
        """Close what the worker opened, once it has ended (a no-op for a closed one)."""
        while self.opened:
            with contextlib.suppress(Exception):
                self.opened.pop().close()


def _worker_alive(connection: Any) -> bool:
    thread = getattr(connection, "_thread", None)
    return thread is not None and thread.is_alive()


async def _stop_worker(worker: _Worker, record: ConnectionPoolEntry | None) -> None:
    connection = worker.connection
    if record is not None and record.driver_connection is connection:
        # Still in a pool that was not disposed of (the engine reached directly, not
        # through the cache): the pool forgets it, and its next checkout, on whatever
        # loop, opens a fresh connection instead of finding this one closed. Outside
        # SQLAlchemy's greenlet, invalidating stops the worker without waiting for it.
        with contextlib.suppress(Exception):
            record.invalidate()
    # Private API: aiosqlite has no public "is it open" nor a way to wait for its thread.
    if _worker_alive(connection):
        if getattr(connection, "_running", False):  # open, and SQLAlchemy no longer holds it
            with contextlib.suppress(Exception):
                await connection.close()
            if getattr(connection, "_running", False):
                connection.stop()  # connecting never finished: close() did nothing
        # Its thread ends once the job it is running and the stop are done.
        await asyncio.to_thread(connection._thread.join, WORKER_STOP_TIMEOUT_S)
    if not _worker_alive(connection):
        worker.close_opened()


async def _close_at_loop_end(end: _LoopEnd) -> AsyncGenerator[None, None]:
    """Suspended until its event loop shuts down, then closes what ``end`` lists.

    ``asyncio.run`` (and every ``asyncio.Runner``) finalizes the async generators of its
    loop after cancelling the tasks left and before closing the loop: the last moment
    a connection can still be closed on its own loop. Dropped later instead, an
    aiosqlite connection's worker thread would answer a closed loop ("Event loop is
    closed" in the thread) and the connection would be collected unclosed.
    """
    try:
        yield
    finally:
        if end.engine is not None:
            with contextlib.suppress(Exception):
                await end.engine.dispose()
        # In turn, never two closes of one connection at once: aiosqlite's second stop
        # would wait for a thread the first one ended.
        while end.connections:
            await _stop_worker(*end.connections.pop())


def _until_loop_end(end: _LoopEnd) -> AsyncGenerator[None, None]:
    """Start ``_close_at_loop_end`` on the running loop (it registers with it)."""
    generator = _close_at_loop_end(end)
    with contextlib.suppress(StopIteration):
        generator.asend(None).send(None)  # runs to its yield without suspending
    return generator


class LoopEngines:
    """Hands out the AsyncEngine of the running event loop.

    The engine the cache was given serves the first loop that uses it, and the next new
    loop once that one is closed (its stale pool is dropped first), so the common cases
    of a single loop or of successive ``asyncio.run`` calls use the caller's engine
    itself. Loops that run beside it get clones, dropped with their loop.

    A loop keeps the one engine it was first handed until it ends: a loop with a clone
    does not take the caller's engine over when its owner closes (it used to, and the
    closer made for its clone was replaced, collected while the loop still ran, and so
    finalized at once: the loop's aiosqlite connections were closed under running
    statements). The loop's one closer (``LoopEnds``) disposes of that engine as the
    loop ends.
    """

    def __init__(self, base: AsyncEngine, *, owned: bool = True) -> None:
        self.base = base
        # An engine the caller passed in is left alone: no listener, no closing it when
        # a loop ends (its clones are the cache's own).
        self._owned = owned
        self._lock = threading.Lock()
        self._base_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._clones: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncEngine] = (
            weakref.WeakKeyDictionary()
        )
        self._ends = LoopEnds()
        if owned and base.dialect.driver == "aiosqlite":
            # On the dialect, which the per-loop clones share.
            event.listen(base.sync_engine, "do_connect", self._ends.route)

    def get(self) -> AsyncEngine:
        """The engine for the running event loop."""
        loop = asyncio.get_running_loop()
        if self._base_loop is not None and self._base_loop() is loop:
            return self.base
        clone = self._clones.get(loop)
        if clone is not None:
            return clone
        with self._lock:
            owner = self._base_loop() if self._base_loop is not None else None
            if owner is loop:
                return self.base
            for gone in [other for other in self._clones if other.is_closed()]:
                drop_pool(self._clones.pop(gone), gone, self._ends)
            if owner is None or owner.is_closed():
                if owner is not None:
                    # Its connections died with their loop.
                    drop_pool(self.base, owner, self._ends)
                self._base_loop = weakref.ref(loop)
                if self._owned:
                    self._ends.close_at_end(self.base)
                return self.base
            clone = self._clones[loop] = clone_engine(self.base)
            self._ends.close_at_end(clone)
            return clone

    def engines(self) -> list[tuple[AsyncEngine, asyncio.AbstractEventLoop | None]]:
        """Every engine handed out so far, with the loop it serves (None if gone)."""
        with self._lock:
            owner = self._base_loop() if self._base_loop is not None else None
            return [(self.base, owner), *((e, loop) for loop, e in self._clones.items())]
