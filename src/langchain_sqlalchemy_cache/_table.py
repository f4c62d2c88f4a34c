"""Creating the cache table before first use, exactly once per cache object."""

from __future__ import annotations

import asyncio
import threading

from sqlalchemy import Connection, Table, inspect
from sqlalchemy.exc import DBAPIError

from ._errors import ConfigurationError
from ._loops import PerLoop


def create_table(connection: Connection, table: Table) -> None:
    """CREATE TABLE IF NOT EXISTS, tolerating a concurrent creator; check the columns.

    PostgreSQL can fail two concurrent ``CREATE TABLE IF NOT EXISTS`` of the same
    name with a unique violation in its catalog; the loser only needs the table to exist.
    """
    try:
        table.create(connection, checkfirst=True)
    except DBAPIError:
        if not inspect(connection).has_table(table.name, schema=table.schema):
            raise
    found = {column["name"] for column in inspect(connection).get_columns(table.name, table.schema)}
    missing = [column.name for column in table.columns if column.name not in found]
    if missing:
        msg = (
            f"the table {table.name!r} exists but lacks the columns {missing}: it was made "
            "by another program or an older layout; pass another table_name, or drop it"
        )
        raise ConfigurationError(msg)


class TableReadiness:
    """Whether the table is known to exist, and the locks that make creating it happen once.

    Threads share one lock; coroutines wait on a lock of their own event loop, since an
    asyncio lock must not be shared between loops.
    """

    def __init__(self, *, create: bool) -> None:
        self.ready = not create
        self.thread_lock = threading.Lock()
        self.loop_locks: PerLoop[asyncio.Lock] = PerLoop(asyncio.Lock)
