"""Making sure of the cache table before first use, exactly once per cache object."""

from __future__ import annotations

import asyncio
import threading

from sqlalchemy import Connection, Table, inspect
from sqlalchemy.exc import DBAPIError

from ._errors import ConfigurationError
from ._loops import PerLoop


class MissingTableError(LookupError):
    """The table is not there and the cache may not create it.

    Not a ``CacheError``: like a database error, it makes a call a miss (or a
    ``CacheError`` under ``on_error="raise"``), since migrations may create the table
    after the application started; the next call looks again.
    """


def prepare_table(connection: Connection, table: Table, *, create: bool) -> None:
    """Create the table if asked to and missing, then check that its columns are ours.

    Creating tolerates a concurrent creator: PostgreSQL can fail two concurrent
    ``CREATE TABLE IF NOT EXISTS`` of the same name with a unique violation in its
    catalog; the loser only needs the table to exist.

    Raises:
        MissingTableError: ``create`` is False and the table does not exist.
        ConfigurationError: The table exists with other columns.
    """
    schema = connection.schema_for_object(table)  # a schema_translate_map applied
    if create:
        try:
            table.create(connection, checkfirst=True)
        except DBAPIError:
            if not inspect(connection).has_table(table.name, schema=schema):
                raise
    elif not inspect(connection).has_table(table.name, schema=schema):
        where = connection.engine.url.render_as_string(hide_password=True)
        msg = (
            f"the table {table.name!r} does not exist in {where}: create it with your "
            "migrations (see cache_table()) or pass create_table=True"
        )
        raise MissingTableError(msg)
    found = {column["name"] for column in inspect(connection).get_columns(table.name, schema)}
    missing = [column.name for column in table.columns if column.name not in found]
    if missing:
        msg = (
            f"the table {table.name!r} exists but lacks the columns {missing}: it was made "
            "by another program or an older layout; pass another table_name, or drop it"
        )
        raise ConfigurationError(msg)


class TableReadiness:
    """Whether the table is known to be usable, and the locks that check it once.

    With ``create``, checking includes creating it when missing.

    Threads share one lock; coroutines wait on a lock of their own event loop, since an
    asyncio lock must not be shared between loops, and the loops take turns through
    ``loop_owner`` without blocking (the sync side keeps its own lock, so a sync call
    made inside a running loop cannot wait on a coroutine of that very loop).
    """

    def __init__(self, *, create: bool) -> None:
        self.create = create
        self.ready = False
        self.thread_lock = threading.Lock()
        self.loop_locks: PerLoop[asyncio.Lock] = PerLoop(asyncio.Lock)
        self.loop_owner = threading.Lock()
