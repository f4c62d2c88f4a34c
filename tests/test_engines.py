"""Engine pairing, validation and ownership."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from langchain_core.outputs import Generation
from sqlalchemy import create_engine, event
from sqlalchemy.ext.asyncio import create_async_engine

from langchain_sqlalchemy_cache import ConfigurationError, SQLAlchemyCache, SQLiteCache

from .conftest import CacheFactory, drop_table, unique_table
from .helpers import held_idle, queue_pool

LLM = "llm"


def drivers(cache: SQLAlchemyCache) -> tuple[str, str]:
    return cache.async_engine.url.drivername, cache.sync_engine.url.drivername


@pytest.mark.parametrize(
    ("scheme", "expected"),
    [
        ("postgresql", ("postgresql+asyncpg", "postgresql+psycopg")),
        ("postgres", ("postgresql+asyncpg", "postgresql+psycopg")),
        ("postgresql+asyncpg", ("postgresql+asyncpg", "postgresql+psycopg")),
        ("postgresql+psycopg", ("postgresql+asyncpg", "postgresql+psycopg")),
        ("postgresql+psycopg_async", ("postgresql+psycopg_async", "postgresql+psycopg")),
    ],
)
def test_postgres_urls_get_both_drivers(scheme: str, expected: tuple[str, str]) -> None:
    cache = SQLAlchemyCache(f"{scheme}://user@localhost/db")
    assert drivers(cache) == expected
    cache.close()


@pytest.mark.parametrize("scheme", ["sqlite", "sqlite+aiosqlite", "sqlite+pysqlite"])
def test_sqlite_urls_get_both_drivers(scheme: str, tmp_path: Path) -> None:
    cache = SQLAlchemyCache(f"{scheme}:///{tmp_path / 'c.db'}")
    assert drivers(cache) == ("sqlite+aiosqlite", "sqlite+pysqlite")
    cache.close()


def test_async_engine_gets_a_derived_sync_engine(postgres_url: str) -> None:
    async def main() -> None:
        engine = create_async_engine(postgres_url.replace("postgresql://", "postgresql+asyncpg://"))
        table = unique_table()
        cache = SQLAlchemyCache(engine, table_name=table)
        assert cache.sync_engine.url.drivername == "postgresql+psycopg"
        await cache.aupdate("p", LLM, [Generation(text="x")])
        assert cache.lookup("p", LLM) == [Generation(text="x")]
        drop_table(cache, table)
        await cache.aclose()
        # The caller's engine is left alone: still usable after the cache is closed.
        async with engine.connect() as connection:
            await connection.exec_driver_sql("SELECT 1")
        await engine.dispose()

    asyncio.run(main())


def test_sync_engine_is_a_drop_in(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with SQLAlchemyCache(engine) as cache:
        assert cache.async_engine.url.drivername == "sqlite+aiosqlite"
        cache.update("p", LLM, [Generation(text="x")])

        async def read() -> Any:
            return await cache.alookup("p", LLM)

        assert asyncio.run(read()) == [Generation(text="x")]
    with engine.connect() as connection:  # not disposed by the cache
        connection.exec_driver_sql("SELECT 1")


def test_explicit_pair_is_used_as_given(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    async_engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    sync_engine = create_engine(f"sqlite:///{path}")
    cache = SQLAlchemyCache(async_engine, sync_engine=sync_engine)
    assert cache.sync_engine.pool is sync_engine.pool
    assert cache.async_engine.sync_engine.pool is async_engine.sync_engine.pool


def test_explicit_pair_on_different_databases_is_refused(tmp_path: Path) -> None:
    # Refused at first use, where each side names the file it really opened.
    async_engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    sync_engine = create_engine(f"sqlite:///{tmp_path / 'b.db'}")
    cache = SQLAlchemyCache(async_engine, sync_engine=sync_engine)
    with pytest.raises(ConfigurationError, match="different tables"):
        cache.lookup("p", LLM)

    async def first_async_use() -> None:
        with pytest.raises(ConfigurationError, match="different tables"):
            await cache.alookup("p", LLM)
        await async_engine.dispose()

    asyncio.run(first_async_use())


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///:memory:",
        "sqlite+aiosqlite:///:memory:",
        "sqlite:///file:x?mode=memory&uri=true",
    ],
)
def test_in_memory_sqlite_is_refused_with_an_explanation(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"in-memory SQLite .* use a file"):
        SQLAlchemyCache(url)


def test_in_memory_sqlite_engine_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="in-memory"):
        SQLAlchemyCache(create_engine("sqlite://"))
    with pytest.raises(ConfigurationError, match="in-memory"):
        SQLiteCache(database_path=":memory:")


@pytest.mark.parametrize(
    ("engine", "message"),
    [
        ("mssql+pyodbc://u@h/db", "not supported"),
        ("oracle://u@h/db", "not supported"),
        ("postgresql+weirddriver://u@h/db", "cannot pair a driver"),
        ("not a url", "cannot parse"),
        (42, "must be a database URL"),
        (None, "must be a database URL"),
    ],
)
def test_unusable_engines_say_what_to_pass(engine: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SQLAlchemyCache(engine)


def test_sync_engine_must_be_an_engine(tmp_path: Path) -> None:
    async_engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    with pytest.raises(ConfigurationError, match="sync_engine must be"):
        SQLAlchemyCache(async_engine, sync_engine=async_engine)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="pass the AsyncEngine first"):
        SQLAlchemyCache(
            create_engine(f"sqlite:///{tmp_path / 'a.db'}"),
            sync_engine=create_engine(f"sqlite:///{tmp_path / 'a.db'}"),
        )


@pytest.mark.parametrize("table_name", ["", "   ", None])
def test_bad_table_name(table_name: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="table_name"):
        SQLAlchemyCache(f"sqlite:///{tmp_path / 'c.db'}", table_name=table_name)


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="in-memory"):
        SQLAlchemyCache("sqlite://")


def test_close_disposes_only_owned_engines(tmp_path: Path) -> None:
    cache = SQLAlchemyCache(f"sqlite:///{tmp_path / 'c.db'}")
    cache.update("p", LLM, [Generation(text="x")])
    assert queue_pool(cache.sync_engine).checkedin() == 1
    cache.close()
    assert queue_pool(cache.sync_engine).checkedin() == 0


async def test_async_context_manager_closes_async_connections(postgres_url: str) -> None:
    table = unique_table()
    async with SQLAlchemyCache(postgres_url, table_name=table) as cache:
        await cache.aupdate("p", LLM, [Generation(text="x")])
        # Idle in the pool, or held idle for the next statements (checked out).
        assert queue_pool(cache.async_engine).checkedin() + held_idle(cache) >= 1
        drop_table(cache, table)
    assert queue_pool(cache.async_engine).checkedin() == 0


def test_sqlite_engines_use_wal_and_a_busy_timeout(tmp_path: Path) -> None:
    cache = SQLiteCache(database_path=tmp_path / "c.db")
    with cache.sync_engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000

    async def async_side() -> tuple[Any, Any]:
        async with cache.async_engine.connect() as connection:
            mode = (await connection.exec_driver_sql("PRAGMA journal_mode")).scalar()
            timeout = (await connection.exec_driver_sql("PRAGMA busy_timeout")).scalar()
        await cache.aclose()
        return mode, timeout

    assert asyncio.run(async_side()) == ("wal", 30000)


def test_sqlite_cache_is_a_drop_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cache = SQLiteCache()  # like langchain_community's, defaults to .langchain.db
    cache.update("p", LLM, [Generation(text="x")])
    assert (tmp_path / ".langchain.db").exists()
    assert SQLiteCache(database_path=".langchain.db").lookup("p", LLM) == [Generation(text="x")]


def _normalise(statement: str) -> str:
    # asyncpg numbers its parameters ($1) and psycopg names them (%(key_1)s), and each
    # adds its own casts; the statement around the parameters must be the same.
    statement = re.sub(r"(\$\d+|%\(\w+\)s|%s|\?)(::[A-Z]+(\(\d+\))?(\[\])?)?", "?", statement)
    return " ".join(statement.split())


def test_both_sides_send_identical_sql(make_cache: CacheFactory) -> None:
    cache = make_cache(local_max_bytes=0)  # every call reaches the database
    cache.lookup("warm", LLM)  # creates the table before we listen
    sent: dict[str, list[str]] = {"sync": [], "async": []}
    event.listen(
        cache.sync_engine, "before_cursor_execute", lambda *a: sent["sync"].append(_normalise(a[2]))
    )
    event.listen(
        cache.async_engine.sync_engine,
        "before_cursor_execute",
        lambda *a: sent["async"].append(_normalise(a[2])),
    )
    cache.update("p", LLM, [Generation(text="x")])
    cache.lookup("p", LLM)
    cache.clear()

    async def async_calls() -> None:
        await cache.aupdate("p", LLM, [Generation(text="x")])
        await cache.alookup("p", LLM)
        await cache.aclear()
        await cache.aclose()

    asyncio.run(async_calls())
    assert len(sent["sync"]) == 3
    assert [s.split()[0] for s in sent["sync"]] == ["INSERT", "SELECT", "DELETE"]
    assert sent["async"] == sent["sync"]


async def test_sync_calls_work_inside_a_running_event_loop(acache: SQLAlchemyCache) -> None:
    acache.update("p", LLM, [Generation(text="sync in loop")])
    assert acache.lookup("p", LLM) == [Generation(text="sync in loop")]
    assert await acache.alookup("p", LLM) == [Generation(text="sync in loop")]
    acache.clear()
    assert await acache.alookup("p", LLM) is None
