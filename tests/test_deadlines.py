"""Deadlines against databases that stop answering: real drivers, real sockets, real servers.

A server that accepts and never answers, and a proxy that freezes with the pool warm,
for every async driver (asyncpg, psycopg_async, asyncmy, aiomysql) and the sync driver
paired with it (psycopg, PyMySQL). Every test is bounded by pytest-timeout: a call
that waited past its deadline for the driver's own limits would hang it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from sqlalchemy import make_url

from langchain_sqlalchemy_cache import CacheError, SQLAlchemyCache

from .conftest import drop_table, unique_table
from .freezeproxy import FreezeProxy, SilentServer
from .helpers import value

LLM = "deadline-test-llm"

# (driver URL prefix, the server fixture it needs)
DRIVERS = [
    ("postgresql+asyncpg", "postgres_url"),
    ("postgresql+psycopg_async", "postgres_url"),
    ("mysql+asyncmy", "mysql_url"),
    ("mysql+aiomysql", "mysql_url"),
]
IDS = [driver for driver, _ in DRIVERS]


def driver_url(driver: str, port: int) -> str:
    user, database = ("postgres", "test") if driver.startswith("postgresql") else ("root", "test")
    return f"{driver}://{user}@127.0.0.1:{port}/{database}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("driver", IDS)
async def test_a_server_that_never_answers_costs_one_deadline_per_call(driver: str) -> None:
    with SilentServer() as server:
        cache = SQLAlchemyCache(
            driver_url(driver, server.port), timeout=0.3, breaker_threshold=None
        )
        assert await cache.alookup("p", LLM) is None
        await cache.aupdate("p", LLM, value("x"))
        results = await asyncio.gather(*(cache.alookup(f"p{i}", LLM) for i in range(50)))
        assert results == [None] * 50
        # The sync side: the connect (or, on PyMySQL, the greeting) never completes.
        assert cache.lookup("p", LLM) is None
        cache.update("p", LLM, value("x"))
        stats = cache.stats()
        assert stats.timeouts == stats.errors == 1 + 1 + 50 + 2
        assert (stats.hits, stats.misses, stats.writes) == (0, 0, 0)
        await cache.aclose()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("driver", IDS)
async def test_under_raise_a_deadline_is_a_cache_error_from_a_timeout(driver: str) -> None:
    with SilentServer() as server:
        cache = SQLAlchemyCache(
            driver_url(driver, server.port),
            local_max_bytes=0,  # the database path, not the tier
            timeout=0.3,
            on_error="raise",
            breaker_threshold=None,
        )
        with pytest.raises(CacheError, match="lookup failed: TimeoutError") as async_error:
            await cache.alookup("p", LLM)
        assert isinstance(async_error.value.__cause__, TimeoutError)
        with pytest.raises(CacheError, match="update failed: TimeoutError") as sync_error:
            cache.update("p", LLM, value("x"))
        assert isinstance(sync_error.value.__cause__, TimeoutError)
        with pytest.raises(CacheError, match="clear failed: TimeoutError"):
            await cache.aclear(timeout=0.3)
        with pytest.raises(CacheError, match="table_stats failed: TimeoutError"):
            cache.table_stats(timeout=0.3)
        await cache.aclose()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("driver", "server"), DRIVERS, ids=IDS)
async def test_a_server_frozen_with_the_pool_warm(
    driver: str, server: str, request: pytest.FixtureRequest
) -> None:
    upstream = make_url(str(request.getfixturevalue(server))).port
    assert upstream is not None
    table = unique_table()
    with FreezeProxy(upstream) as proxy:
        cache = SQLAlchemyCache(
            driver_url(driver, proxy.port),
            local_max_bytes=0,  # the database path, not the tier
            table_name=table,
            # Generous: after the thaw a call reconnects within it on a loaded machine.
            timeout=2.0,
            breaker_threshold=None,
            max_concurrency=1,
        )
        try:
            await cache.aupdate("a", LLM, value("a"))
            assert await cache.alookup("a", LLM) == value("a")
            cache.update("s", LLM, value("s"))
            assert cache.lookup("s", LLM) == value("s")
            opened = proxy.opened

            proxy.freeze()
            assert await cache.alookup("a", LLM) is None
            # Many callers sharing batches: each gives up at its own deadline.
            assert (
                await asyncio.gather(*(cache.alookup("a", LLM) for _ in range(100))) == [None] * 100
            )
            await cache.aupdate("b", LLM, value("b"))
            assert cache.lookup("s", LLM) is None  # the watchdog cut the socket
            cache.update("t", LLM, value("t"))
            assert cache.stats().timeouts == 1 + 100 + 1 + 1 + 1

            proxy.thaw()
            # The connections cut off mid-statement were closed, never pooled: the next
            # calls run on fresh ones and read their own rows (a reused connection would
            # first deliver the reply to the statement that timed out).
            assert await cache.alookup("a", LLM) == value("a")
            assert cache.lookup("s", LLM) == value("s")
            assert await cache.alookup("b", LLM) is None
            assert cache.lookup("t", LLM) is None
            assert proxy.opened > opened
            assert proxy.closed_by_client >= 2
            assert cache.stats().timeouts == 104
        finally:
            proxy.thaw()
            drop_table(cache, table)
            await cache.aclose()


@pytest.mark.timeout(60)
async def test_sqlite_calls_end_at_their_deadline_while_the_file_is_locked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cache.db"
    cache = SQLAlchemyCache(
        f"sqlite:///{path}", timeout=1.0, breaker_threshold=None, local_max_bytes=0
    )
    cache.update("p", LLM, value("before"))
    assert await cache.alookup("p", LLM) == value("before")
    holder = sqlite3.connect(path, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # every other writer waits for it (WAL: not readers)
    try:
        cache.update("p", LLM, value("during"))  # would wait 30 s for the busy timeout
        await cache.aupdate("p", LLM, value("during"))
        assert cache.stats().timeouts == 2
        assert cache.lookup("p", LLM) == value("before")
    finally:
        holder.rollback()
        holder.close()
    # The lock is gone: the next calls go through (after the aiosqlite worker, still
    # waiting on the lock when the caller left, has let go of its connection).
    assert cache.lookup("p", LLM) == value("before")
    cache.update("p", LLM, value("after"))
    assert await cache.alookup("p", LLM) == value("after")
    await cache.aclose()


@pytest.mark.timeout(60)
def test_sync_deadlines_hold_across_threads(postgres_url: str) -> None:
    table = unique_table()
    with FreezeProxy(5432) as proxy:
        url = driver_url("postgresql+psycopg", proxy.port)
        cache = SQLAlchemyCache(
            url, table_name=table, timeout=2.0, breaker_threshold=None, local_max_bytes=0
        )
        try:
            cache.update("p", LLM, value("p"))
            proxy.freeze()
            results: list[object] = []
            lock = threading.Lock()

            def caller() -> None:
                found = cache.lookup("p", LLM)
                with lock:
                    results.append(found)

            threads = [threading.Thread(target=caller) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert results == [None] * 8
            assert cache.stats().timeouts == 8
            proxy.thaw()
            assert cache.lookup("p", LLM) == value("p")
        finally:
            proxy.thaw()
            drop_table(cache, table)
            cache.close()


@pytest.mark.timeout(60)
def test_migrate_ends_at_its_deadline_on_a_server_that_never_answers() -> None:
    from langchain_sqlalchemy_cache._migrate import migrate

    with SilentServer() as server, pytest.raises(TimeoutError):
        migrate(driver_url("mysql+asyncmy", server.port), timeout=0.3)
