"""The async core's only I/O: running prepared statements on the AsyncEngine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Executable, Row, Table
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from ._statements import Params
from ._table import TableReadiness, create_table


class AsyncExecutor:
    """Runs statements through short-lived ``AsyncSession``s: real async I/O, no threads."""

    def __init__(self, engine: AsyncEngine, table: Table, readiness: TableReadiness) -> None:
        self._engine = engine
        self._table = table
        self._readiness = readiness
        self._sessions = async_sessionmaker(engine)

    async def _ensure_table(self) -> None:
        if self._readiness.ready:
            return
        async with self._readiness.loop_lock():
            if not self._readiness.ready:
                async with self._engine.connect() as connection:
                    await connection.run_sync(create_table, self._table)
                self._readiness.ready = True

    async def fetch(self, statement: Executable, params: Params) -> Sequence[Row[Any]]:
        """Run a SELECT and return all its rows."""
        await self._ensure_table()
        async with self._sessions() as session:
            return (await session.execute(statement, params)).all()

    async def execute(self, statement: Executable, params: Params | None = None) -> None:
        """Run a statement that returns no rows."""
        await self._ensure_table()
        async with self._sessions() as session:
            await session.execute(statement, params)
