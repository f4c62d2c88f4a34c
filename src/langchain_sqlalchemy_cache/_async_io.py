"""The async core's only I/O: running prepared statements on the AsyncEngine."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Executable, Row, Table
from sqlalchemy.exc import DBAPIError

from ._deadline import discard
from ._identity import PairCheck
from ._loops import LoopEngines
from ._retry import retry_delay
from ._statements import Params, batch_transaction
from ._table import TableReadiness, prepare_table


class AsyncExecutor:
    """Runs statements on pooled ``AsyncConnection``s: real async I/O, no threads."""

    def __init__(
        self, engines: LoopEngines, table: Table, readiness: TableReadiness, pair: PairCheck
    ) -> None:
        self._engines = engines
        self._table = table
        self._readiness = readiness
        self._pair = pair

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

    async def _run(
        self, statement: Executable, params: Params | None, *, rows: bool
    ) -> tuple[Sequence[Row[Any]], int]:
        await self._ensure_table()
        engine = self._engines.get()
        batch = batch_transaction(engine.dialect.name, params)
        for attempt in itertools.count(1):
            try:
                async with engine.connect() as connection:
                    try:
                        if batch is not None:
                            await connection.execution_options(**batch)
                        result = await connection.execute(statement, params)
                        if batch is not None:
                            await connection.commit()
                    except asyncio.CancelledError:
                        # Cut off mid-statement (a deadline): its reply may still come.
                        await discard(connection)
                        raise
                    if rows:
                        return result.all(), -1
                    return (), int(getattr(result, "rowcount", -1))
            except DBAPIError as exc:
                if self._readiness.lost(exc, attempt):  # the table was dropped meanwhile
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

    async def execute(self, statement: Executable, params: Params | None = None) -> int:
        """Run a statement that returns no rows; return how many rows it changed."""
        return (await self._run(statement, params, rows=False))[1]
