"""The async core's only I/O: running prepared statements on the AsyncEngine."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Executable, Row, Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._deadline import discard
from ._engine_internals import DriverStatement, watched
from ._held import HeldConnections
from ._identity import PairCheck
from ._loops import LoopEngines
from ._retry import as_dropped, retry_delay
from ._statements import Params, batch_transaction
from ._table import TableReadiness, prepare_table


class AsyncExecutor:
    """Runs statements on ``AsyncConnection``s held per event loop: async I/O, no threads."""

    def __init__(
        self, engines: LoopEngines, table: Table, readiness: TableReadiness, pair: PairCheck
    ) -> None:
        self._engines = engines
        self._table = table
        self._readiness = readiness
        self._pair = pair
        self._held = HeldConnections()
        self._driver_forms: dict[tuple[int, int], DriverStatement | None] = {}
        self._keep: list[tuple[Executable, object]] = []

    def _ready(self) -> bool:
        return self._pair.async_checked() and self._readiness.ready

    async def _ensure_table(self) -> None:
        if self._ready():
            return
        async with self._readiness.loop_locks.get():
            while not self._ready():
                # One loop at a time, across threads: the first connection also
                # initializes the dialect the per-loop engines share, and SQLAlchemy only
                # serializes that within one pool; a loop that connected meanwhile would
                # run on a half-initialized dialect. Others poll: a thread lock must not
                # block an event loop.
                if not self._readiness.loop_owner.acquire(blocking=False):
                    await asyncio.sleep(0.005)
                    continue
                try:
                    if not self._ready():
                        async with self._engines.get().connect() as connection:
                            # Which table this side reaches, before creating any.
                            await self._pair.check_async(connection)
                            if not self._readiness.ready:
                                try:
                                    await connection.run_sync(
                                        prepare_table, self._table, create=self._readiness.create
                                    )
                                except asyncio.CancelledError:
                                    await discard(connection)
                                    raise
                        self._readiness.ready = True
                finally:
                    self._readiness.loop_owner.release()

    def _driver_form(self, statement: Executable, engine: AsyncEngine) -> DriverStatement | None:
        # Per dialect, which the per-loop engines share with their listeners and their
        # kind of pool; only where connections are held. Keyed by identity, the objects
        # kept alive so that no id is ever reused.
        key = _form_key(statement, engine)
        try:
            form = self._driver_forms[key]
        except KeyError:
            form = self._driver_forms[key] = (
                DriverStatement.build(statement, engine) if self._held.holds(engine) else None
            )
            self._keep.append((statement, engine.dialect))
        return None if form is None or watched(engine) else form

    def lean(self, statement: Executable) -> bool:
        """Whether ``statement`` runs on the driver of a held connection on this loop.

        A cancelled statement there ends at once (the connection is terminated without
        I/O); on SQLAlchemy's ordinary path a cancellation closes the connection
        gracefully first (shielded), which can outlast the caller's deadline.
        """
        return self._driver_form(statement, self._engines.get()) is not None

    async def _connect(self, engine: AsyncEngine, hold: bool) -> AsyncConnection:
        if hold:
            return await self._held.take(engine)
        return await engine.connect().start()

    async def _run(
        self, statement: Executable, params: Params | None, *, rows: bool, lean: bool = False
    ) -> tuple[Sequence[Any], int]:
        await self._ensure_table()
        engine = self._engines.get()
        driver = self._driver_form(statement, engine) if lean else None
        if driver is not None:  # asyncpg, held connections: no batch transaction to open
            try:
                connection = await self._held.take(engine)
            except Exception:  # cannot connect: the ordinary path below says why
                pass
            else:
                try:
                    found = await driver.run(connection, params, rows=rows)
                except asyncio.CancelledError:
                    await self._held.cut_off(connection)
                    raise
                except (AttributeError, TypeError, LookupError):
                    # Not the database: SQLAlchemy's adapter is not what the driver path
                    # reads. Off for this statement, or every call would pay for a new
                    # connection; the ordinary path runs it now and from now on.
                    self._driver_forms[_form_key(statement, engine)] = None
                    await self._held.cut_off(connection)
                except Exception:
                    # Never held again. The ordinary path runs the statement once more
                    # and SQLAlchemy classifies the error: retried, or raised.
                    await self._held.cut_off(connection)
                else:
                    await self._held.give(connection)
                    return (found, -1) if rows else ((), found)
        batch = batch_transaction(engine.dialect.name, params)
        hold = batch is None and self._held.holds(engine)
        for attempt in itertools.count(1):
            try:
                connection = await self._connect(engine, hold)
                try:
                    if batch is not None:
                        await connection.execution_options(**batch)
                    result = await connection.execute(statement, params)
                    if batch is not None:
                        await connection.commit()
                    answer: tuple[Sequence[Any], int] = (
                        (result.all(), -1) if rows else ((), int(getattr(result, "rowcount", -1)))
                    )
                except asyncio.CancelledError:
                    # Cut off mid-statement (a deadline): its reply may still come.
                    await discard(connection)
                    raise
                except BaseException as exc:
                    dropped = as_dropped(exc, connection.invalidated)
                    await self._held.failed(connection)
                    if dropped is not None:
                        raise dropped from exc
                    raise
                if hold:
                    await self._held.give(connection)
                else:
                    await connection.close()
                return answer
            except DBAPIError as exc:
                if self._readiness.lost(exc, attempt):  # the table was dropped meanwhile
                    # Setting the table up takes a connection from the pool: idle held
                    # ones go back to it first, or a full pool would wait on them.
                    await self._held.release_idle()
                    await self._ensure_table()
                    continue
                delay = retry_delay(exc, attempt)  # a dropped connection, a deadlock
                if delay is None:
                    raise
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def fetch(self, statement: Executable, params: Params) -> Sequence[Row[Any]]:
        """Run a SELECT and return all its rows."""
        return (await self._run(statement, params, rows=True))[0]

    async def fetch_lean(self, statement: Executable, params: Params) -> Sequence[Any]:
        """``fetch`` for the hot path: rows are read by position only.

        On asyncpg they are the driver's records, fetched without SQLAlchemy's
        per-statement execution machinery (``DriverStatement``).
        """
        return (await self._run(statement, params, rows=True, lean=True))[0]

    async def execute(
        self, statement: Executable, params: Params | None = None, *, lean: bool = False
    ) -> int:
        """Run a statement that returns no rows; return how many rows it changed.

        ``lean``: a hot-path statement, which may run on the driver (``fetch_lean``).
        """
        return (await self._run(statement, params, rows=False, lean=lean))[1]

    async def aclose(self) -> None:
        """Return the running loop's held connections to the pool; hold no more."""
        await self._held.aclose()

    def close(self) -> None:
        """``aclose`` outside the loop: held connections are ended without I/O."""
        self._held.close()


def _form_key(statement: Executable, engine: AsyncEngine) -> tuple[int, int]:
    return (id(statement), id(engine.dialect))
