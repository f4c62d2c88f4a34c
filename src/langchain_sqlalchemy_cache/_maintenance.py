"""The cache table as one object, with its maintenance operations written once.

``CacheTable`` holds what every user of the table shares: the Core ``Table``, the
statements built for it (``_statements``), whether it is ready (``TableReadiness``),
and the operations of several statements (clear, purge, trim, statistics) as
generators (``_steps``). The cache, the command line and ``migrate`` all use it; none
of it does I/O, so the sync and the async side run the very same operations.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import MetaData, Table

from ._codec import decode_text
from ._identifiers import check_identifier
from ._options import CacheOptions
from ._schema import cache_table
from ._statements import PURGE_BATCH_ROWS, Statements, build_statements
from ._stats import ModelEntries, TableStats, utc
from ._steps import Steps, execute, fetch
from ._table import TableReadiness


class CacheTable:
    """One cache table on one dialect: its statements, readiness and maintenance steps.

    Each operation returns ``Steps``: run it with ``run_sync`` or ``run_async``. The
    deadline, error policy and breaker are the caller's, around the runner.
    """

    def __init__(self, table: Table, statements: Statements, readiness: TableReadiness) -> None:
        self.table = table
        self.statements = statements
        self.readiness = readiness

    @classmethod
    def build(cls, dialect_name: str, options: CacheOptions) -> CacheTable:
        """The table of ``options`` (name, schema, namespace, ttl, create_table).

        The options checked what holds on every backend; here the names are checked
        against what ``dialect_name`` can hold.

        Raises:
            ConfigurationError: The dialect cannot hold a name, or is not supported.
        """
        check_identifier("table_name", options.table_name, dialect_name)
        if options.schema is not None:
            check_identifier("schema", options.schema, dialect_name)
        table = cache_table(MetaData(), options.table_name, options.schema)
        return cls(
            table,
            build_statements(table, dialect_name, options.ttl, options.namespace),
            TableReadiness(create=options.create_table),
        )

    def now(self) -> Steps[float]:
        """Now by the database server's clock (``server_clock``), in UNIX seconds."""
        clock = self.statements.clock
        if clock is None:
            return time.time()
        return float((yield from fetch(clock, {}))[0][0])

    def count(self, llm_key: str | None, cutoff: float | None) -> Steps[int]:
        """How many entries ``delete`` with the same filters would delete."""
        return int((yield from fetch(*self.statements.count(llm_key, cutoff)))[0][0])

    def delete(self, llm_key: str | None, cutoff: float | None) -> Steps[int]:
        """Delete the namespace's entries (of one model, written before ``cutoff``)."""
        return (yield from execute(*self.statements.clear(llm_key, cutoff)))

    def clear(self, llm_key: str | None, older_than: float | None) -> Steps[int]:
        """``delete`` with a cutoff ``older_than`` seconds before the server's now."""
        cutoff = None if older_than is None else (yield from self.now()) - older_than
        return (yield from self.delete(llm_key, cutoff))

    def purge(self, ttl: float, deleted: Callable[[], object]) -> Steps[int]:
        """Delete the entries older than ``ttl`` seconds, in pages; how many.

        ``deleted`` is called once at the end (also of a run cut short) if any were.
        """
        cutoff = (yield from self.now()) - ttl
        return (yield from self.delete_older(cutoff, deleted))

    def trim(self, keep: int, deleted: Callable[[], object]) -> Steps[int]:
        """Delete all but the ``keep`` newest entries, in pages; how many (as ``purge``)."""
        statements = self.statements
        rows = yield from fetch(statements.nth_newest, statements.nth_newest_params(keep))
        return (yield from self.delete_older(rows[0].updated_at, deleted)) if rows else 0

    def delete_older(self, cutoff: float, deleted: Callable[[], object]) -> Steps[int]:
        """Delete the entries written before ``cutoff``, a page per statement (as ``purge``)."""
        # One cutoff for the whole run: rows aging meanwhile wait for the next one.
        params = self.statements.purge_params(cutoff)
        total = 0
        try:
            while True:
                count = yield from execute(self.statements.purge_batch, params)
                total += count
                if count < PURGE_BATCH_ROWS:
                    return total
        finally:
            if total:
                deleted()

    def table_stats(self) -> Steps[TableStats]:
        """What the table holds for the namespace."""
        statements = self.statements
        params = statements.namespace_params()
        summary = (yield from fetch(statements.summary, params))[0]
        models = yield from fetch(statements.per_model, params)
        size = None
        if statements.table_size is not None:
            size = yield from fetch(statements.table_size, statements.table_size_params)
        return _table_stats(summary, models, size)


def _table_stats(
    summary: Sequence[Any], models: Sequence[Sequence[Any]], size: Sequence[Sequence[Any]] | None
) -> TableStats:
    table_bytes = size[0][0] if size else None
    return TableStats(
        entries=int(summary[0]),
        payload_bytes=int(summary[1]),
        table_bytes=None if table_bytes is None else int(table_bytes),
        oldest=utc(summary[2]),
        newest=utc(summary[3]),
        models=tuple(
            ModelEntries(llm_key=model, llm_string=decode_text(text), entries=int(count))
            for model, text, count in models
        ),
    )
