"""Making sure of the cache table before first use, and again once it is found gone."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Index, Table, inspect
from sqlalchemy.exc import DBAPIError

from ._errors import ConfigurationError
from ._loops import PerLoop
from ._ratelimit import logger
from ._retry import mysql_error_code
from ._secrets import safe_url

# ER_NO_SUCH_TABLE
_MYSQL_NO_SUCH_TABLE = 1146


class MissingTableError(LookupError):
    """The table is not there and the cache may not create it.

    Not a ``CacheError``: like a database error, it makes a call a miss (or a
    ``CacheError`` under ``on_error="raise"``), since migrations may create the table
    after the application started; the next call looks again.
    """


def prepare_table(connection: Connection, table: Table, *, create: bool) -> None:
    """Create the table if asked to and missing, check its columns, heal its indexes.

    The table and its indexes are created in one transaction where DDL is
    transactional (PostgreSQL), so a setup cut short leaves nothing behind. Indexes are
    then verified by their columns, whatever their names, and missing ones created: a
    table made by an interrupted setup, by hand or on MySQL (where each DDL statement
    commits on its own) heals on first use. Creating tolerates a concurrent creator.

    Raises:
        MissingTableError: ``create`` is False and the table does not exist.
        ConfigurationError: The table exists with other columns.
    """
    if create:
        _create_table(connection, table, connection.schema_for_object(table))
    missing = missing_columns(connection, table)
    if missing is None:
        msg = (
            f"the table {table.name!r} does not exist in {safe_url(connection.engine.url)}: "
            "create it with your migrations (see cache_table()) or pass create_table=True"
        )
        raise MissingTableError(msg)
    if missing:
        msg = (
            f"the table {table.name!r} exists but lacks the columns {missing}: it was made "
            "by another program or an older layout; pass another table_name, or drop it"
        )
        raise ConfigurationError(msg)
    _heal_indexes(connection, table, create=create)


def missing_columns(connection: Connection, table: Table) -> list[str] | None:
    """The columns of ``table`` that the database's table lacks; None if it has no such table."""
    schema = connection.schema_for_object(table)  # a schema_translate_map applied
    inspector = inspect(connection)
    if not inspector.has_table(table.name, schema=schema):
        return None
    found = {column["name"] for column in inspector.get_columns(table.name, schema)}
    return [column.name for column in table.columns if column.name not in found]


@contextmanager
def _transaction(connection: Connection) -> Iterator[None]:
    """One transaction on a connection of the cache's autocommit engines."""
    if connection.in_transaction():
        connection.commit()  # only SQLAlchemy's bookkeeping: autocommit wrote already
    connection.execution_options(isolation_level=connection.default_isolation_level)
    try:
        with connection.begin():
            yield
    finally:
        connection.execution_options(isolation_level="AUTOCOMMIT")


def _create_table(connection: Connection, table: Table, schema: str | None) -> None:
    if inspect(connection).has_table(table.name, schema=schema):
        return
    try:
        with _transaction(connection):
            table.create(connection, checkfirst=True)
    except DBAPIError:
        # PostgreSQL can fail two concurrent creators of one table with a unique
        # violation in its catalog; the loser only needs the table to exist.
        if not inspect(connection).has_table(table.name, schema=schema):
            raise


def _missing_indexes(connection: Connection, table: Table) -> list[Index]:
    schema = connection.schema_for_object(table)
    found = {
        tuple(index["column_names"])
        for index in inspect(connection).get_indexes(table.name, schema=schema)
    }
    return [index for index in table.indexes if tuple(c.name for c in index.columns) not in found]


def _heal_indexes(connection: Connection, table: Table, *, create: bool) -> None:
    missing = _missing_indexes(connection, table)
    if not create:
        for index in missing:  # the migrations own the table: say what they lack
            logger.warning(
                "the table %r lacks an index on %s: trims, purges and clear() scan the "
                "whole table; add it to your migrations (see cache_table())",
                table.name,
                ", ".join(c.name for c in index.columns),
            )
        return
    for index in missing:
        try:
            index.create(connection, checkfirst=True)
        except DBAPIError:
            if index in _missing_indexes(connection, table):  # not a concurrent healer
                raise


def is_missing_table(exc: DBAPIError) -> bool:
    """Whether a statement failed because the table does not exist (dropped meanwhile)."""
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if state == "42P01":  # PostgreSQL undefined_table
        return True
    if mysql_error_code(orig) == _MYSQL_NO_SUCH_TABLE:
        return True
    return str(orig).startswith("no such table")  # SQLite


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

    def lost(self, exc: DBAPIError, attempt: int) -> bool:
        """Note a failed statement; True when it failed on a vanished table to recreate.

        A table dropped while the application runs is checked again before the next
        statement; with ``create`` the failing call itself recreates it and runs once
        more, so the drop costs no call.
        """
        if not is_missing_table(exc):
            return False
        self.ready = False
        return self.create and attempt == 1
