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
import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

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
    """

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._items: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> T:
        """The ``T`` of the running event loop."""
        loop = asyncio.get_running_loop()
        item = self._items.get(loop)
        if item is None:
            with self._lock:
                item = self._items.get(loop)
                if item is None:
                    item = self._items[loop] = self._factory()
        return item


def clone_engine(base: AsyncEngine) -> AsyncEngine:
    """The same engine (dialect, URL, options, event listeners) on a pool of its own."""
    sync = base.sync_engine
    # An engine made by execution_options() proxies its parent's pool; clone the parent.
    root: Engine = getattr(sync, "_proxied", sync)
    twin = copy.copy(root)
    twin.pool = root.pool.recreate()  # same settings and pool events, no connections
    if root is not sync:
        twin = twin.execution_options(**sync.get_execution_options())
    return AsyncEngine(twin)


def drop_pool(engine: AsyncEngine, loop: asyncio.AbstractEventLoop | None) -> None:
    """Drop the pool of ``engine``, whose connections belong to ``loop``, without I/O.

    When ``loop`` is gone (or is this thread's running loop), idle connections are
    terminated first, as SQLAlchemy does for a connection the garbage collector finds:
    for aiosqlite that closes the file and ends its thread now, rather than whenever the
    collector gets there (warning about an unclosed connection, and reporting its thread
    failing on the closed loop). Drivers whose sockets need their closed loop fail
    quietly and are left to the collector. Connections of a loop still running in
    another thread are never touched from this one.
    """
    try:
        running = asyncio.get_running_loop()  # aiosqlite reports the stop to it
    except RuntimeError:
        running = None  # outside any loop: left to the garbage collector
    ours = loop is None or loop is running or loop.is_closed()
    idle = getattr(engine.sync_engine.pool, "_pool", None) if running and ours else None
    while idle is not None:
        try:
            record = idle.get_nowait()
        except Exception:  # Empty, or a pool without a queue
            break
        with contextlib.suppress(Exception):
            record.dbapi_connection.terminate()
    engine.sync_engine.dispose(close=False)


class LoopEngines:
    """Hands out the AsyncEngine of the running event loop.

    The engine the cache was given serves the first loop that uses it, and the next one
    once that loop is closed (its stale pool is dropped first), so the common cases of a
    single loop or of successive ``asyncio.run`` calls use the caller's engine itself.
    Loops that run beside it get clones, dropped with their loop.
    """

    def __init__(self, base: AsyncEngine) -> None:
        self.base = base
        self._lock = threading.Lock()
        self._base_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None
        self._clones: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncEngine] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> AsyncEngine:
        """The engine for the running event loop."""
        loop = asyncio.get_running_loop()
        if self._base_loop is not None and self._base_loop() is loop:
            return self.base
        with self._lock:
            owner = self._base_loop() if self._base_loop is not None else None
            for gone in [other for other in self._clones if other.is_closed()]:
                drop_pool(self._clones.pop(gone), gone)
            if owner is None or owner.is_closed():
                if owner is not None:
                    drop_pool(self.base, owner)  # its connections died with their loop
                self._base_loop = weakref.ref(loop)
                return self.base
            if owner is loop:
                return self.base
            clone = self._clones.get(loop)
            if clone is None:
                clone = self._clones[loop] = clone_engine(self.base)
            return clone

    def engines(self) -> list[tuple[AsyncEngine, asyncio.AbstractEventLoop | None]]:
        """Every engine handed out so far, with the loop it serves (None if gone)."""
        with self._lock:
            owner = self._base_loop() if self._base_loop is not None else None
            return [(self.base, owner), *((e, loop) for loop, e in self._clones.items())]
