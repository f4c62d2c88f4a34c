"""The sync facade's only I/O: running prepared statements on the sync Engine."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, Executable, Row, Table
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import sessionmaker

from ._deadline import deadline_passed
from ._identity import PairCheck
from ._retry import retry_delay
from ._statements import Params, batch_transaction
from ._table import TableReadiness, prepare_table


class SyncExecutor:
    """Runs statements through short-lived ``Session``s on the paired sync Engine."""

    def __init__(
        self,
        engine: Engine,
        table: Table,
        readiness: TableReadiness,
        pair: PairCheck | None = None,
    ) -> None:
        """Run statements on ``engine``, making sure of ``table`` first.

        Args:
            engine: The sync engine.
            table: The cache table, prepared before the first statement.
            readiness: Whether the table is ready, shared with the async side.
            pair: The check that both sides reach one table; None when there is no
                async side (the command line).
        """
        self._engine = engine
        self._table = table
        self._readiness = readiness
        self._pair = pair
        self._sessions = sessionmaker(engine)

    def _ready(self) -> bool:
        return (self._pair is None or self._pair.sync_checked()) and self._readiness.ready

    def _ensure_table(self) -> None:
        if self._ready():
            return
        with self._readiness.thread_lock:
            if not self._ready():
                with self._engine.connect() as connection:
                    if self._pair is not None:
                        # Which table this side reaches, before creating any.
                        self._pair.check_sync(connection)
                    if not self._readiness.ready:
                        prepare_table(connection, self._table, create=self._readiness.create)
                self._readiness.ready = True

    def _run(
        self, statement: Executable, params: Params | None, *, rows: bool
    ) -> tuple[Sequence[Row[Any]], int]:
        self._ensure_table()
        batch = batch_transaction(self._engine.dialect.name, params)
        for attempt in itertools.count(1):
            try:
                with self._sessions() as session:
                    if batch is not None:
                        session.connection(execution_options=batch)
                    result = session.execute(statement, params)
                    if batch is not None:
                        session.commit()
                    if rows:
                        return result.all(), -1
                    return (), int(getattr(result, "rowcount", -1))
            except DBAPIError as exc:
                if self._readiness.lost(exc, attempt):  # the table was dropped meanwhile
                    self._ensure_table()
                    continue
                delay = retry_delay(exc, attempt)  # a dropped connection, a deadlock
                if delay is None or deadline_passed():
                    raise
                time.sleep(delay)
        raise AssertionError("unreachable")

    def fetch(self, statement: Executable, params: Params) -> Sequence[Row[Any]]:
        """Run a SELECT and return all its rows."""
        return (self._run(statement, params, rows=True))[0]

    def execute(self, statement: Executable, params: Params | None = None) -> int:
        """Run a statement that returns no rows; return how many rows it changed."""
        return (self._run(statement, params, rows=False))[1]
