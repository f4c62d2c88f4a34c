"""What is benchmarked: this cache (async and sync), langchain_community's, and raw drivers.

Every subject owns its own table (dropped before and after) and its own engines or pool,
opened in ``setup`` and disposed of in ``teardown``. Async subjects are driven by asyncio
tasks, thread subjects by threads.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import re
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.outputs import Generation
from sqlalchemy import Column, Engine, Integer, String, create_engine, event, make_url, text
from sqlalchemy.orm import DeclarativeBase

from langchain_sqlalchemy_cache import SQLAlchemyCache

# Private helpers, used so the floors hash keys and decode payloads exactly like the cache.
from langchain_sqlalchemy_cache._codec import (
    decode_generations,
    encode_generations,
    encode_text,
)
from langchain_sqlalchemy_cache._keys import cache_key

from .workload import Workload

TABLE_PREFIX = "bench_"
POPULATE_CONCURRENCY = 10
PAYLOAD_FORMAT = 1  # the `format` column value the cache writes today

# Variants of this cache's async path: name -> extra constructor kwargs. A variant whose
# kwargs the installed SQLAlchemyCache does not accept is skipped (see `supported_kwargs`).
# The in-process tier is off in these: they measure the database path (benchmarks.hot
# measures the tier).
OURS_ASYNC_VARIANTS: dict[str, dict[str, Any]] = {
    "ours-async": {"local_max_bytes": 0},
    "ours-nocoalesce": {"coalesce": False, "local_max_bytes": 0},
}


def supported_kwargs(kwargs: dict[str, Any]) -> list[str]:
    """Names in ``kwargs`` that ``SQLAlchemyCache.__init__`` does not accept."""
    parameters = inspect.signature(SQLAlchemyCache.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return []
    return [name for name in kwargs if name not in parameters]


@dataclass(frozen=True)
class Backend:
    """Where subjects store their tables."""

    name: str  # "postgresql", "sqlite" or "mysql" (MySQL/MariaDB)
    pg_url: str = ""
    sqlite_dir: Path | None = None
    mysql_url: str = ""

    def sqlite_file(self, subject: str) -> Path:
        """One database file per subject, so no file-level setting leaks between them."""
        assert self.sqlite_dir is not None
        return self.sqlite_dir / f"{subject}.db"

    def ours_url(self, subject: str) -> str:
        """URL handed to this cache (bare: asyncpg + psycopg, aiosqlite + sqlite3,
        asyncmy + pymysql)."""
        if self.name == "postgresql":
            return make_url(self.pg_url).set(drivername="postgresql").render_as_string(False)
        if self.name == "mysql":
            return make_url(self.mysql_url).set(drivername="mysql").render_as_string(False)
        return f"sqlite:///{self.sqlite_file(subject)}"

    def sync_url(self, subject: str) -> str:
        """URL of a sync engine (psycopg, sqlite3), as langchain_community is given."""
        if self.name == "postgresql":
            url = make_url(self.pg_url).set(drivername="postgresql+psycopg")
            return url.render_as_string(False)
        if self.name == "mysql":
            url = make_url(self.mysql_url).set(drivername="mysql+pymysql")
            return url.render_as_string(False)
        return f"sqlite:///{self.sqlite_file(subject)}"

    def asyncpg_dsn(self) -> str:
        """libpq-style DSN for asyncpg."""
        return make_url(self.pg_url).set(drivername="postgresql").render_as_string(False)


def drop_table(engine: Engine, table: str) -> None:
    """DROP TABLE IF EXISTS, in autocommit."""
    quoted = engine.dialect.identifier_preparer.quote(table)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f"DROP TABLE IF EXISTS {quoted}"))


class Subject(ABC):
    """One implementation under test on one backend."""

    mode: str  # "async" (driven by tasks) or "threads"

    def __init__(self, name: str, backend: Backend) -> None:
        self.name = name
        self.backend = backend
        self.notes: list[str] = []
        self.connects = 0  # DBAPI connections opened by this subject's SQLAlchemy engines

    def count_connects(self, *engines: Engine) -> None:
        """Count every new DBAPI connection the engines open (pool overflow churn shows here)."""

        def on_connect(_dbapi_connection: Any, _record: Any) -> None:
            self.connects += 1

        for engine in engines:
            event.listen(engine, "connect", on_connect)

    @property
    def table(self) -> str:
        """This subject's own table."""
        return TABLE_PREFIX + self.name.replace("-", "_")

    @abstractmethod
    async def setup(self, workload: Workload) -> list[int]:
        """Drop and recreate the table, store every entry; return the indexes stored."""

    @abstractmethod
    async def teardown(self) -> None:
        """Drop the table and dispose of every engine or pool."""

    def describe(self) -> dict[str, Any]:
        """What the subject is, for the JSON report."""
        return {"name": self.name, "mode": self.mode, "table": self.table, "notes": self.notes}


class AsyncSubject(Subject):
    """A subject driven with ``await alookup(...)`` / ``await aupdate(...)`` from tasks."""

    mode = "async"

    @abstractmethod
    async def alookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        """Look an entry up."""

    @abstractmethod
    async def aupdate(self, prompt: str, llm_string: str, value: list[Generation]) -> None:
        """Store an entry."""


class ThreadSubject(Subject):
    """A subject driven with blocking ``lookup(...)`` / ``update(...)`` from threads."""

    mode = "threads"

    @abstractmethod
    def lookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        """Look an entry up."""

    @abstractmethod
    def update(self, prompt: str, llm_string: str, value: list[Generation]) -> None:
        """Store an entry."""


async def populate_ours(cache: SQLAlchemyCache, workload: Workload) -> list[int]:
    """Store every entry of ``workload`` through ``cache.aupdate``; return their indexes."""
    gate = asyncio.Semaphore(POPULATE_CONCURRENCY)

    async def put(index: int) -> None:
        async with gate:
            await cache.aupdate(
                workload.prompts[index], workload.llm_string, workload.values[index]
            )

    await asyncio.gather(*(put(i) for i in range(workload.size)))
    return list(range(workload.size))


class _OursBase(Subject):
    def __init__(
        self, name: str, backend: Backend, kwargs: dict[str, Any], driver: str | None = None
    ) -> None:
        super().__init__(name, backend)
        self.kwargs = kwargs
        self.driver = driver  # an async driver other than the bare URL's default
        self.cache: SQLAlchemyCache | None = None

    async def setup(self, workload: Workload) -> list[int]:
        url = self.backend.ours_url(self.name)
        if self.driver is not None:
            parsed = make_url(url)
            url = parsed.set(drivername=f"{parsed.get_backend_name()}+{self.driver}")
            url = url.render_as_string(False)
        self.cache = SQLAlchemyCache(url, table_name=self.table, **self.kwargs)
        self.count_connects(self.cache.async_engine.sync_engine, self.cache.sync_engine)
        drop_table(self.cache.sync_engine, self.table)
        return await populate_ours(self.cache, workload)

    async def teardown(self) -> None:
        if self.cache is not None:
            drop_table(self.cache.sync_engine, self.table)
            await self.cache.aclose()
            self.cache = None

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info["kwargs"] = self.kwargs
        if self.cache is not None:
            for side, engine in (
                ("async", self.cache.async_engine.sync_engine),
                ("sync", self.cache.sync_engine),
            ):
                pool: Any = engine.pool
                info[f"{side}_pool"] = {
                    "class": type(pool).__name__,
                    "size": pool.size() if hasattr(pool, "size") else None,
                    "max_overflow": getattr(pool, "_max_overflow", None),
                    "driver": engine.dialect.driver,
                }
        return info


class OursAsync(_OursBase, AsyncSubject):
    """This cache's native async path (asyncpg / aiosqlite)."""

    async def alookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        assert self.cache is not None
        return await self.cache.alookup(prompt, llm_string)  # type: ignore[return-value]

    async def aupdate(self, prompt: str, llm_string: str, value: list[Generation]) -> None:
        assert self.cache is not None
        await self.cache.aupdate(prompt, llm_string, value)


class OursSync(_OursBase, ThreadSubject):
    """This cache's sync path (psycopg / sqlite3), called from many threads."""

    def lookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        assert self.cache is not None
        return self.cache.lookup(prompt, llm_string)  # type: ignore[return-value]

    def update(self, prompt: str, llm_string: str, value: list[Generation]) -> None:
        assert self.cache is not None
        self.cache.update(prompt, llm_string, value)


def community_schema(table: str) -> Any:
    """langchain_community's FullLLMCache columns under a table name of our choosing.

    A base of its own, so that ``create_all`` creates this one table and nothing else.
    """

    class Base(DeclarativeBase):
        pass

    return type(
        "BenchFullLLMCache",
        (Base,),
        {
            "__tablename__": table,
            "prompt": Column(String, primary_key=True),
            "llm": Column(String, primary_key=True),
            "idx": Column(Integer, primary_key=True),
            "response": Column(String),
        },
    )


class Community(AsyncSubject):
    """langchain_community.cache.SQLAlchemyCache: its async methods, i.e. the executor."""

    def __init__(self, backend: Backend) -> None:
        super().__init__("community", backend)
        self.engine: Engine | None = None
        self.cache: Any = None

    async def setup(self, workload: Workload) -> list[int]:
        from langchain_community.cache import SQLAlchemyCache as CommunityCache

        self.engine = create_engine(self.backend.sync_url(self.name))
        self.count_connects(self.engine)
        drop_table(self.engine, self.table)
        self.cache = CommunityCache(self.engine, community_schema(self.table))
        return await asyncio.to_thread(self._store_all, workload)

    def _store_all(self, workload: Workload) -> list[int]:
        stored: list[int] = []
        failures: dict[str, int] = {}
        for index in range(workload.size):
            try:
                self.cache.update(
                    workload.prompts[index], workload.llm_string, workload.values[index]
                )
            except Exception as exc:
                # One line per kind of failure: numbers (sizes, ids) vary between entries.
                first_line = re.sub(r"\d+", "N", str(exc).splitlines()[0])
                reason = f"{type(exc).__name__}: {first_line}"[:200]
                failures[reason] = failures.get(reason, 0) + 1
            else:
                stored.append(index)
        for reason, count in failures.items():
            self.notes.append(f"could not store {count} of {workload.size} entries: {reason}")
        return stored

    async def teardown(self) -> None:
        if self.engine is not None:
            drop_table(self.engine, self.table)
            self.engine.dispose()
            self.engine = None

    async def alookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        return await self.cache.alookup(prompt, llm_string)  # type: ignore[no-any-return]

    async def aupdate(self, prompt: str, llm_string: str, value: list[Generation]) -> None:
        await self.cache.aupdate(prompt, llm_string, value)


async def _populate_with_ours(
    backend: Backend, subject: str, table: str, workload: Workload
) -> None:
    """Create and fill a floor's table with this cache, so rows are byte-identical."""
    cache = SQLAlchemyCache(backend.ours_url(subject), table_name=table)
    try:
        drop_table(cache.sync_engine, table)
        await populate_ours(cache, workload)
    finally:
        await cache.aclose()


def _upsert_sql(table: str, placeholders: tuple[str, ...]) -> str:
    columns = ("key", "prompt", "llm_string", "payload", "updated_at", "format")
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
    return (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(placeholders)}) "
        f"ON CONFLICT (key) DO UPDATE SET {updates}"
    )


def _row(prompt: str, llm_string: str, value: list[Generation]) -> tuple[Any, ...]:
    return (
        cache_key(prompt, llm_string),
        encode_text(prompt),
        encode_text(llm_string),
        encode_generations(value),
        time.time(),
        PAYLOAD_FORMAT,
    )


class Sqlite3Floor(ThreadSubject):
    """sqlite3 from threads, sharing ``pool_size`` connections, one SELECT per lookup + decode.

    The connections get the pragmas this cache sets (WAL, synchronous=NORMAL, busy timeout).
    """

    def __init__(self, backend: Backend, pool_size: int) -> None:
        super().__init__("sqlite3-floor", backend)
        self.pool_size = pool_size
        self.pool: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self.connections: list[sqlite3.Connection] = []
        self.notes.append(
            f"{pool_size} sqlite3 connections shared by the worker threads; autocommit, "
            "WAL, synchronous=NORMAL, busy_timeout=30000"
        )

    async def setup(self, workload: Workload) -> list[int]:
        await _populate_with_ours(self.backend, self.name, self.table, workload)
        for _ in range(self.pool_size):
            connection = sqlite3.connect(
                self.backend.sqlite_file(self.name),
                isolation_level=None,
                check_same_thread=False,
                timeout=30,
            )
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA busy_timeout=30000")
            self.connections.append(connection)
            self.pool.put(connection)
        self._select = f"SELECT payload FROM {self.table} WHERE key = ?"
        self._upsert = _upsert_sql(self.table, ("?",) * 6)
        return list(range(workload.size))

    async def teardown(self) -> None:
        if self.connections:
            self.connections[0].execute(f"DROP TABLE IF EXISTS {self.table}")
        for connection in self.connections:
            connection.close()
        self.connections.clear()

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        connection = self.pool.get()
        try:
            yield connection
        finally:
            self.pool.put(connection)

    def lookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        key = cache_key(prompt, llm_string)
        with self._connection() as connection:
            row = connection.execute(self._select, (key,)).fetchone()
        return None if row is None else decode_generations(row[0])

    def update(self, prompt: str, llm_string: str, value: list[Generation]) -> None:
        row = _row(prompt, llm_string, value)
        with self._connection() as connection:
            connection.execute(self._upsert, row)


def build_subjects(
    backend: Backend,
    variants: dict[str, dict[str, Any]],
    common_kwargs: dict[str, Any],
    floor_pool_size: int,
    only: set[str] | None,
) -> tuple[list[Subject], list[str]]:
    """The subjects for one backend, community first (it decides which keys are usable).

    Returns the subjects and notes on variants skipped.
    """
    skipped: list[str] = []
    subjects: list[Subject] = [Community(backend)]
    for name, extra in variants.items():
        kwargs = {**common_kwargs, **extra}
        unknown = supported_kwargs(kwargs)
        if unknown:
            skipped.append(f"{name}: SQLAlchemyCache does not accept {', '.join(unknown)}")
            continue
        subjects.append(OursAsync(name, backend, kwargs))
    if backend.name == "mysql":
        # The bare URL's driver is asyncmy; this run is what that choice rests on.
        subjects.append(OursAsync("ours-aiomysql", backend, dict(common_kwargs), "aiomysql"))
    subjects.append(OursSync("ours-sync", backend, {"local_max_bytes": 0, **common_kwargs}))
    if backend.name == "postgresql":
        from .peers import AsyncpgFloor  # it builds on this module

        subjects.append(AsyncpgFloor(backend, floor_pool_size))
    elif backend.name == "sqlite":
        subjects.append(Sqlite3Floor(backend, floor_pool_size))
    else:
        skipped.append("raw-driver floor: none on MySQL/MariaDB")
    if only is not None:
        subjects = [s for s in subjects if s.name in only]
    return subjects, skipped
