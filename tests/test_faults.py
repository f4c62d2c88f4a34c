"""PostgreSQL behind a proxy the test controls: slow replies, cut connections, a killed
server session, a storm of cancellations. No caller ever gets another caller's answer,
and no fault reaches the caller with on_error="miss"."""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from typing import Any

import psycopg
import pytest
from asyncpg.exceptions import InternalClientError  # type: ignore[import-untyped]
from asyncpg.prepared_stmt import PreparedStatement  # type: ignore[import-untyped]

from langchain_sqlalchemy_cache import SQLAlchemyCache

from .conftest import drop_table, proxied_engines, unique_table
from .helpers import cancellation_storm, eventually, held_idle, queue_pool, value
from .pgproxy import PgProxy

LLM = "llm"


def server_sessions(postgres_url: str, proxy: PgProxy) -> list[int]:
    """Backend pids of the sessions that came through the proxy."""
    with psycopg.connect(postgres_url) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE client_port = ANY(%s)",
            [list(proxy.upstream_ports)],
        ).fetchall()
    return [row[0] for row in rows]


async def test_a_cancelled_lookup_never_crosses_replies(
    proxied_cache: tuple[SQLAlchemyCache, PgProxy],
) -> None:
    cache, proxy = proxied_cache
    await cache.aupdate("A", LLM, value("answer A"))
    await cache.aupdate("B", LLM, value("answer B"))
    proxy.hold_replies()
    lookup_a = asyncio.ensure_future(cache.alookup("A", LLM))
    # A's query has been answered by the server; the answer is held at the proxy.
    await asyncio.to_thread(proxy.wait_until, lambda p: p.held == 1)
    lookup_a.cancel()
    syncs = proxy.messages["S"]
    lookup_b = asyncio.ensure_future(cache.alookup("B", LLM))
    await asyncio.to_thread(proxy.wait_until, lambda p: p.messages["S"] > syncs)  # B sent
    proxy.release_replies()  # A's answer arrives while B waits for its own
    assert await lookup_b == value("answer B")
    assert lookup_a.cancelled()
    assert await cache.alookup("A", LLM) == value("answer A")
    assert await cache.alookup("B", LLM) == value("answer B")
    await cache.async_engine.dispose()


async def test_cancellation_storm_leaks_nothing(
    postgres_url: str, proxied_cache: tuple[SQLAlchemyCache, PgProxy]
) -> None:
    cache, proxy = proxied_cache
    for i in range(50):
        await cache.aupdate(f"p{i}", LLM, value(str(i)))
    proxy.delay = 0.01
    await cancellation_storm(
        lambda i: (
            cache.alookup(f"p{i % 50}", LLM)
            if i % 3
            else cache.aupdate(f"p{i % 50}", LLM, value(str(i % 50)))
        ),
        lambda i: value(str(i % 50)),
        seed=3,
    )
    proxy.delay = 0
    pool = queue_pool(cache.async_engine)
    # Batches already sent when their callers were cancelled finish on their own; their
    # connections are back in the pool or held idle for the next statements.
    await eventually(
        lambda: pool.checkedout() == held_idle(cache), "every connection back or held idle"
    )
    assert held_idle(cache) <= pool.size()
    # Plus the sync engine's idle connection: the first use checks which table it reaches.
    sync_idle = queue_pool(cache.sync_engine).checkedin()
    assert len(server_sessions(postgres_url, proxy)) <= pool.size() + sync_idle
    results = await asyncio.gather(*(cache.alookup(f"p{i % 50}", LLM) for i in range(1000)))
    assert results == [value(str(i % 50)) for i in range(1000)]
    assert cache.stats().errors == 0
    await cache.async_engine.dispose()


async def test_the_server_going_away_is_invisible_then_recovered(
    proxied_cache: tuple[SQLAlchemyCache, PgProxy],
) -> None:
    cache, proxy = proxied_cache
    for i in range(20):
        await cache.aupdate(f"p{i}", LLM, value(str(i)))
    # Every connection cut mid-load (queries answered, answers held back at the proxy),
    # and the server unreachable for a while.
    proxy.hold_replies()
    load = asyncio.gather(*(cache.alookup(f"p{i % 20}", LLM) for i in range(200)))
    await asyncio.to_thread(proxy.wait_until, lambda p: p.held > 0)
    proxy.accepting = False
    proxy.cut_all()
    proxy.release_replies()
    results = await load
    assert all(r is None or r == value(str(i % 20)) for i, r in enumerate(results))
    assert await cache.alookup("p1", LLM) is None  # down: a miss, not an exception
    await cache.aupdate("p1", LLM, value("lost"))  # down: skipped, not an exception
    assert cache.lookup("p1", LLM) is None
    assert cache.stats().errors > 0
    # Back: the same cache object hits again.
    proxy.accepting = True
    assert await cache.alookup("p2", LLM) == value("2")
    assert cache.lookup("p3", LLM) == value("3")
    await cache.async_engine.dispose()


async def test_killed_server_sessions_are_replaced_without_a_miss(
    postgres_url: str, proxied_cache: tuple[SQLAlchemyCache, PgProxy]
) -> None:
    cache, proxy = proxied_cache
    await cache.aupdate("p", LLM, value("x"))
    cache.update("q", LLM, value("y"))
    await asyncio.gather(*(cache.alookup("p", LLM) for _ in range(20)))
    pids = server_sessions(postgres_url, proxy)
    assert pids
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        for pid in pids:
            connection.execute("SELECT pg_terminate_backend(%s)", [pid])
    # Pooled connections are dead now; one retry on a fresh connection serves the call.
    assert await cache.alookup("p", LLM) == value("x")
    assert cache.lookup("q", LLM) == value("y")
    assert cache.stats().errors == 0
    await cache.async_engine.dispose()


async def test_connections_whose_driver_lost_its_protocol_state_are_replaced(
    proxied_cache: tuple[SQLAlchemyCache, PgProxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncpg 0.29 answers a statement sent while a terminated session's goodbye is still
    # unread with InternalClientError, which SQLAlchemy passes on unwrapped (the test
    # above meets it by chance under `nox -s lowest`). Here every connection opened so
    # far fails that way from one moment on, as after a restart, and new ones work.
    cache, _ = proxied_cache
    used: weakref.WeakSet[Any] = weakref.WeakSet()
    broken = False
    fetch = PreparedStatement.fetch

    async def fetch_or_fail(statement: PreparedStatement, *args: Any, **kwargs: Any) -> Any:
        connection = statement._connection
        if broken and connection in used:
            raise InternalClientError(
                "cannot switch to state 12; another operation (2) is in progress"
            )
        if not broken:
            used.add(connection)
        return await fetch(statement, *args, **kwargs)

    monkeypatch.setattr(PreparedStatement, "fetch", fetch_or_fail)
    await cache.aupdate("p", LLM, value("x"))
    assert await asyncio.gather(*(cache.alookup("p", LLM) for _ in range(20))) == [value("x")] * 20
    assert len(used) > 1  # pooled connections, not only the held one
    broken = True
    assert await cache.alookup("p", LLM) == value("x")
    assert await asyncio.gather(*(cache.alookup("p", LLM) for _ in range(20))) == [value("x")] * 20
    assert cache.stats().errors == 0
    await cache.async_engine.dispose()


async def test_no_pool_timeout_when_the_server_is_slow(postgres_url: str) -> None:
    with PgProxy(postgres_url) as proxy:
        async_engine, sync_engine = proxied_engines(
            postgres_url, proxy, pool_size=2, max_overflow=0, pool_timeout=1
        )
        table = unique_table()
        # The subject is the pool's timeout, not the call's: 3,000 calls queue behind two
        # slow connections, longer than the default 2 s on a loaded machine.
        cache = SQLAlchemyCache(
            async_engine, sync_engine=sync_engine, table_name=table, timeout=30.0
        )
        await cache.aupdate("p0", LLM, value("x"))
        proxy.delay = 0.05  # each statement takes long enough to exhaust a pool of 2
        results = await asyncio.gather(*(cache.alookup(f"p{i % 3}", LLM) for i in range(3000)))
        assert results.count(value("x")) == 1000
        assert cache.stats().errors == 0
        proxy.delay = 0
        drop_table(cache, table)
        await async_engine.dispose()
        sync_engine.dispose()


async def test_cancellation_storm_on_sqlite_leaks_nothing(tmp_path: Path) -> None:
    # No proxy for a file: the queue in front of SQLite's single in-flight statement is
    # what keeps calls waiting here, so cancellations land both in the queue and mid-batch.
    table = unique_table()
    cache = SQLAlchemyCache(f"sqlite:///{tmp_path / 'storm.db'}", table_name=table)
    big = "x" * 200_000  # slow enough rows that batches take a while
    for i in range(50):
        await cache.aupdate(f"p{i}", LLM, value(f"{i}{big}"))
    await cancellation_storm(
        lambda i: cache.alookup(f"p{i % 50}", LLM), lambda i: value(f"{i % 50}{big}"), seed=5
    )
    pool = queue_pool(cache.async_engine)
    await eventually(lambda: pool.checkedout() == 0, "every connection back in the pool")
    results = await asyncio.gather(*(cache.alookup(f"p{i % 50}", LLM) for i in range(1000)))
    assert results == [value(f"{i % 50}{big}") for i in range(1000)]
    assert cache.stats().errors == 0
    drop_table(cache, table)
    await cache.aclose()
