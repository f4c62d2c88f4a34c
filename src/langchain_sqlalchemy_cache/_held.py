"""Long-lived async connections: checked out once, then reused by call after call.

A pool checkout per statement (an ``AsyncConnection``, SQLAlchemy's checkout and
checkin, two greenlet switches) cost more than the statement's own round trip on a
lone lookup. So each event loop keeps the connections its statements used, at most
one per statement in flight (the coalescer's slots bound those), and the next
statement takes one of them back without a checkout.

A held connection never holds a transaction: the cache's engines autocommit, so it
sits idle between statements exactly as a pooled one does, and PgBouncer in
transaction mode sees one statement per transaction as before. It is checked before
each use as the pool checks a connection at checkout: a connection older than the
pool's last invalidation (a dropped connection or a read-only server seen by any
statement: a failover) or than ``pool_recycle`` is closed and replaced. One that
failed, or whose statement was cancelled or cut off by a deadline, is never held
again. The idle ones are returned to the pool by ``aclose()`` and closed when their
event loop ends.

Only queue pools hold connections: ``NullPool`` (and a static pool) mean the caller
wants no connection kept or shared, and SQLite's connections each run a worker
thread whose shutdown at loop end ``_loops.py`` orchestrates.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import QueuePool

from ._deadline import discard
from ._engine_internals import held_connection_fresh
from ._loops import PerLoop


@dataclass
class _Idle:
    """The idle held connections of one event loop."""

    connections: list[AsyncConnection] = field(default_factory=list)
    ending: bool = False  # the loop is shutting down: nothing is held any more
    end_hook: AsyncGenerator[None, None] | None = None


def _new_idle() -> _Idle:
    idle = _Idle()
    idle.end_hook = _until_loop_end(idle)
    return idle


def _end_without_io(idle: _Idle) -> bool:
    # A loop closed without finalizing its async generators (no asyncio.run): its
    # connections cannot be closed politely any more; end them without I/O.
    _terminate_all(idle)
    return True


class HeldConnections:
    """The held connections of one executor, per event loop."""

    def __init__(self) -> None:
        self._by_loop: PerLoop[_Idle] = PerLoop(_new_idle, on_closed=_end_without_io)
        self.closed = False

    @staticmethod
    def holds(engine: AsyncEngine) -> bool:
        """Whether statements on ``engine`` run on held connections."""
        return engine.dialect.name != "sqlite" and isinstance(engine.sync_engine.pool, QueuePool)

    async def take(self, engine: AsyncEngine) -> AsyncConnection:
        """An idle held connection of this loop still fit for use, or a new checkout."""
        idle = self._by_loop.get()
        pool = engine.sync_engine.pool
        while idle.connections:
            connection = idle.connections.pop()
            if held_connection_fresh(connection, pool):
                return connection
            await _close(connection)
        return await engine.connect().start()

    async def give(self, connection: AsyncConnection) -> None:
        """Hold ``connection`` again after its statement succeeded."""
        idle = self._by_loop.get()
        if self.closed or idle.ending:
            await _close(connection)
        else:
            idle.connections.append(connection)

    @staticmethod
    async def failed(connection: AsyncConnection) -> None:
        """Its statement failed: back to the pool (SQLAlchemy invalidated it if dropped)."""
        await _close(connection)

    @staticmethod
    async def cut_off(connection: AsyncConnection) -> None:
        """Its statement was cancelled midway: close it for good."""
        await discard(connection)

    def idle_count(self) -> int:
        """Idle held connections of the running loop."""
        idle = self._by_loop.find(asyncio.get_running_loop())
        return 0 if idle is None else len(idle.connections)

    async def release_idle(self) -> None:
        """Return the running loop's idle connections to the pool (held again later)."""
        idle = self._by_loop.find(asyncio.get_running_loop())
        while idle is not None and idle.connections:
            await _close(idle.connections.pop())

    async def aclose(self) -> None:
        """Return the running loop's idle connections to the pool; hold nothing from now on.

        Connections of other loops still running are left to those loops (returned
        after their statement, closed when the loop ends); those of closed loops are
        ended without I/O.
        """
        self.closed = True
        self._by_loop.drop_closed()
        idle = self._by_loop.find(asyncio.get_running_loop())
        connections = [] if idle is None else idle.connections[:]
        if idle is not None:
            idle.connections.clear()
        for connection in connections:
            await _close(connection)

    def close(self) -> None:
        """``aclose`` without a loop to await on: idle connections are ended without I/O.

        Those of every loop not running now (closed, or driven by hand and stopped) and
        of this thread's running loop; a loop running in another thread owns its
        connections, which it closes when it ends.
        """
        self.closed = True
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        self._by_loop.drop_closed()
        for loop, idle in self._by_loop.items():
            if loop is running or not loop.is_running():
                _terminate_all(idle)


async def _close(connection: AsyncConnection) -> None:
    try:
        await connection.close()
    except asyncio.CancelledError:
        await discard(connection)
        raise
    except Exception:
        await discard(connection)


def _terminate_all(idle: _Idle) -> None:
    idle.ending = True
    while idle.connections:
        connection = idle.connections.pop()
        with contextlib.suppress(Exception):
            connection.sync_connection.invalidate()  # type: ignore[union-attr]


async def _close_at_loop_end(idle: _Idle) -> AsyncGenerator[None, None]:
    """Suspended until its loop shuts down; then closes the loop's idle connections.

    They are detached from the pool first: the engine of the loop may be disposed of
    at the same moment (``_loops.py``), and a connection returned to a pool already
    disposed of would never be closed.
    """
    try:
        yield
    finally:
        idle.ending = True
        while idle.connections:
            connection = idle.connections.pop()
            try:
                sync = connection.sync_connection
                if sync is not None and not sync.invalidated:
                    sync.detach()
                await connection.close()
            except Exception:
                await discard(connection)


def _until_loop_end(idle: _Idle) -> AsyncGenerator[None, None]:
    generator = _close_at_loop_end(idle)
    with contextlib.suppress(StopIteration):
        generator.asend(None).send(None)  # runs to its yield: registered with the loop
    return generator
