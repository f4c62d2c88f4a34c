"""Checking, at first use, that the async and the sync side reach one and the same table.

Two engines can name one database and still reach two tables: a ``search_path`` in one
side's ``connect_args``, a ``creator``, a ``schema_translate_map``, two files behind one
relative path. Then ``ainvoke`` and ``invoke`` would each keep a cache of their own.
So each side asks its own connection where the table is (PostgreSQL: the server, the
database and the schema-qualified table; MySQL: the server and the schema; SQLite: the
file, by device and inode), and a mismatch is a ``ConfigurationError`` naming both.

Whichever side is used first resolves the other one too, before any statement runs:
the async side resolves the sync one in a worker thread, the sync side the async one on
a private copy of the async engine, in a thread with an event loop of its own (the
sync call may itself run inside a loop). Should a loop be resolving its side at that
moment, the sync side leaves it to that loop, which compares before it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ._community import notice_community_tables
from ._engines import IN_MEMORY_HELP
from ._errors import ConfigurationError
from ._loops import clone_engine
from ._ratelimit import logger


@dataclass(frozen=True)
class Place:
    """Where one side's connection reaches the cache table."""

    key: tuple[Any, ...]
    description: str


def _postgres(connection: Connection, table: Table, schema: str | None) -> Place:
    preparer = connection.dialect.identifier_preparer
    name = preparer.quote(table.name)
    qualified = f"{preparer.quote_schema(schema)}.{name}" if schema else name
    # The postmaster's start time and the database's OID tell servers and databases
    # apart even when the two sides use different host names for the same server.
    row = connection.execute(
        text(
            "SELECT current_database(), d.oid::bigint, "
            "EXTRACT(EPOCH FROM pg_postmaster_start_time())::text, "
            "host(inet_server_addr()), inet_server_port(), current_schema(), n.nspname, "
            "c.oid::bigint "
            "FROM pg_database d "
            "LEFT JOIN pg_class c ON c.oid = to_regclass(:name) "
            "LEFT JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE d.datname = current_database()"
        ),
        {"name": qualified},
    ).one()
    database, database_oid, started, host, port, current, found_schema, table_oid = row
    # A missing table is where CREATE TABLE would put it: the first schema of the path.
    where = found_schema or schema or current
    server = f"{host}:{port}" if host else "a local socket"
    exists = f" (oid {table_oid})" if table_oid is not None else " (not created yet)"
    return Place(
        key=("postgresql", started, database_oid, where, table.name),
        description=(
            f"table {where}.{table.name}{exists} in database {database!r} on the server at {server}"
        ),
    )


def _mysql(connection: Connection, table: Table, schema: str | None) -> Place:
    host, port, datadir, database = connection.execute(
        text("SELECT @@hostname, @@port, @@datadir, DATABASE()")
    ).one()
    # MySQL names each server by a UUID; MariaDB has none, so its data directory on its
    # host stands for it.
    uuid = connection.execute(text("SHOW VARIABLES LIKE 'server_uuid'")).first()
    server = (uuid[1],) if uuid is not None else (host, int(port), datadir)
    where = schema or database
    return Place(
        key=("mysql", *server, where, table.name),
        description=f"table {where}.{table.name} on the server {host}:{port}",
    )


def _sqlite(connection: Connection, table: Table, schema: str | None) -> Place:
    databases = connection.exec_driver_sql("PRAGMA database_list").all()
    files = {row[1]: row[2] for row in databases}
    path = files.get(schema or "main") or ""
    if not path:
        raise ConfigurationError(f"the connection opens an in-memory database: {IN_MEMORY_HELP}")
    status = os.stat(path)
    return Place(
        key=("sqlite", status.st_dev, status.st_ino, table.name),
        description=f"table {table.name} in the file {path}",
    )


_RESOLVERS = {"postgresql": _postgres, "mysql": _mysql, "mariadb": _mysql, "sqlite": _sqlite}


def resolve_place(connection: Connection, table: Table) -> Place:
    """Where ``connection`` reaches ``table`` (a schema_translate_map applied)."""
    schema = connection.schema_for_object(table)
    return _RESOLVERS[connection.dialect.name](connection, table, schema)


# How long one side waits for the other side's place before serving without it.
_PROBE_TIMEOUT_S = 30.0


def _in_own_loop(base: AsyncEngine, table: Table) -> Place:
    """Resolve the async side's place on a copy of ``base``, in a thread and loop of its own."""
    outcome: list[Place | BaseException] = []

    async def resolve() -> Place:
        engine = clone_engine(base)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(resolve_place, table)
        finally:
            await engine.dispose()

    def run() -> None:
        try:
            outcome.append(asyncio.run(asyncio.wait_for(resolve(), _PROBE_TIMEOUT_S)))
        except BaseException as exc:  # handed over to the calling thread
            outcome.append(exc)

    thread = threading.Thread(target=run, name="langchain-sqlalchemy-cache-pair-check")
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


@contextlib.contextmanager
def _postponed_if_unreachable(side: str) -> Iterator[None]:
    """Let one side serve while the other cannot be reached to compare with.

    Neither side may depend on the other being up: the other side compares at its own
    first use, before it serves. A configuration error still propagates.
    """
    try:
        yield
    except ConfigurationError:
        raise
    except Exception as exc:
        logger.warning(
            "could not check the %s engine's table yet (it is checked at its first use): "
            "%s: %.200s",
            side,
            type(exc).__name__,
            exc,
        )


class PairCheck:
    """Both sides' places, compared once both are known; a split is refused for good."""

    def __init__(
        self,
        table: Table,
        sync_engine: Engine,
        async_engine: AsyncEngine,
        loop_owner: threading.Lock,
    ) -> None:
        """Compare the sides of ``sync_engine`` and ``async_engine`` at first use.

        Args:
            table: The cache table.
            sync_engine: The sync side.
            async_engine: The async side (a private copy of it is used from sync code).
            loop_owner: The lock event loops hold while they first connect: the copy
                shares the async engine's dialect, which the first connection sets up.
        """
        self._table = table
        self._sync_engine = sync_engine
        self._async_engine = async_engine
        self._loop_owner = loop_owner
        self._lock = threading.Lock()
        self._sync: Place | None = None
        self._async: Place | None = None
        self._split: str | None = None

    def _raise_if_split(self) -> None:
        if self._split is not None:
            raise ConfigurationError(self._split)

    def _record(self, side: str, place: Place) -> None:
        with self._lock:
            if side == "sync":
                self._sync = self._sync or place
            else:
                self._async = self._async or place
            sync, async_ = self._sync, self._async
            if sync and async_ and self._split is None and sync.key != async_.key:
                self._split = (
                    "the async and the sync engine reach different tables: async: "
                    f"{async_.description}; sync: {sync.description}. "
                    "Each side would keep a cache of its own; configure both engines "
                    "alike (connect_args, creator, search_path, schema_translate_map, "
                    "database), or pass one engine and let the cache derive the other"
                )
        self._raise_if_split()

    def sync_checked(self) -> bool:
        """Whether the sync side is known; raises if the sides are known to differ.

        Raises:
            ConfigurationError: The two sides reach different tables.
        """
        self._raise_if_split()
        return self._sync is not None

    def async_checked(self) -> bool:
        """Whether the async side is known; raises if the sides are known to differ.

        Raises:
            ConfigurationError: The two sides reach different tables.
        """
        self._raise_if_split()
        return self._async is not None

    def check_sync(self, connection: Connection) -> None:
        """Resolve the sync side on ``connection`` (and say if a community table waits).

        Raises:
            ConfigurationError: The async side is known and reaches another table.
        """
        if self._sync is None:
            place = resolve_place(connection, self._table)
            notice_community_tables(connection, self._table)
            self._record("sync", place)
        if self._async is None and self._loop_owner.acquire(blocking=False):
            try:
                if self._async is None:
                    with _postponed_if_unreachable("async"):
                        self._record("async", _in_own_loop(self._async_engine, self._table))
            finally:
                self._loop_owner.release()
        self._raise_if_split()

    def _resolve_sync(self) -> None:
        with self._sync_engine.connect() as connection:
            self.check_sync(connection)

    async def check_async(self, connection: AsyncConnection) -> None:
        """Resolve the async side on ``connection``, and the sync side if still unknown.

        Raises:
            ConfigurationError: The two sides reach different tables.
        """
        if self._async is None:
            place = await connection.run_sync(resolve_place, self._table)
            if self._sync is None:
                with _postponed_if_unreachable("sync"):
                    # Bounded: a sync driver may have no connect timeout of its own.
                    await asyncio.wait_for(asyncio.to_thread(self._resolve_sync), _PROBE_TIMEOUT_S)
            self._record("async", place)
        self._raise_if_split()
