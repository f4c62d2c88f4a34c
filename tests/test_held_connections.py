"""The lean hot path's held connections (issue 12): reused without a checkout per call,
never idle in a transaction, replaced after a drop or a cancellation, given back by
``aclose()`` and closed when their event loop ends."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, event, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from langchain_sqlalchemy_cache import SQLAlchemyCache
from langchain_sqlalchemy_cache._engine_internals import DriverStatement

from .conftest import drop_table, proxied_engines, unique_table
from .helpers import queue_pool, value
from .pgproxy import PgProxy

LLM = "llm"


def sessions(postgres_url: str, name: str) -> list[tuple[int, str, str | None]]:
    """(pid, state, backend_xid) of the server sessions opened under ``name``."""
    with psycopg.connect(postgres_url) as connection:
        rows = connection.execute(
            "SELECT pid, state, backend_xid::text FROM pg_stat_activity "
            "WHERE application_name = %s",
            [name],
        ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


def named_engines(postgres_url: str, name: str, driver: str = "asyncpg") -> tuple[AsyncEngine, Any]:
    """An async engine (asyncpg or psycopg) whose sessions carry ``name``; a psycopg twin."""
    url = make_url(postgres_url)
    if driver == "asyncpg":
        async_engine = create_async_engine(
            url.set(drivername="postgresql+asyncpg"),
            connect_args={"server_settings": {"application_name": name}},
        )
    else:
        async_engine = create_async_engine(
            url.set(drivername="postgresql+psycopg_async"),
            connect_args={"application_name": name},
        )
    sync_engine = create_engine(
        url.set(drivername="postgresql+psycopg"), connect_args={"application_name": name + "-sync"}
    )
    return async_engine, sync_engine


@contextlib.asynccontextmanager
async def proxied(
    postgres_url: str, **options: Any
) -> AsyncIterator[tuple[SQLAlchemyCache, PgProxy]]:
    """A cache reaching PostgreSQL through a proxy whose replies the test holds back."""
    with PgProxy(postgres_url) as proxy:
        async_engine, sync_engine = proxied_engines(postgres_url, proxy)
        table = unique_table()
        cache = SQLAlchemyCache(
            async_engine, sync_engine=sync_engine, table_name=table, local_max_bytes=0, **options
        )
        try:
            yield cache, proxy
        finally:
            proxy.release_replies()
            drop_table(cache, table)
            await cache.aclose()
            await async_engine.dispose()
            sync_engine.dispose()


@pytest.fixture(params=["asyncpg", "psycopg"])
def named(
    postgres_url: str, request: pytest.FixtureRequest
) -> Iterator[tuple[SQLAlchemyCache, str]]:
    """A cache on engines passed in (not disposed of by the cache), and their name."""
    name = f"lsc-held-{uuid.uuid4().hex[:12]}"
    async_engine, sync_engine = named_engines(postgres_url, name, request.param)
    table = unique_table()
    cache = SQLAlchemyCache(
        async_engine, sync_engine=sync_engine, table_name=table, local_max_bytes=0, on_error="raise"
    )
    yield cache, name
    drop_table(cache, table)
    sync_engine.dispose()


def held(cache: SQLAlchemyCache) -> list[AsyncConnection]:
    """The running loop's idle held connections of the cache's primary executor."""
    idle = cache._async._held._by_loop.find(asyncio.get_running_loop())
    return [] if idle is None else list(idle.connections)


async def test_statements_reuse_held_connections_without_a_checkout(
    named: tuple[SQLAlchemyCache, str],
) -> None:
    cache, _ = named
    await cache.aupdate("p", LLM, value("x"))
    pool = queue_pool(cache.async_engine)
    checkouts: list[object] = []
    event.listen(pool, "checkout", lambda *args: checkouts.append(args))
    for _ in range(20):
        await cache.aupdate("p", LLM, value("x"))
        assert await cache.alookup("p", LLM) == value("x")
    assert checkouts == []
    assert len(held(cache)) == 1
    await cache.aclose()
    await cache.async_engine.dispose()


async def test_no_held_connection_is_idle_in_a_transaction(
    postgres_url: str, named: tuple[SQLAlchemyCache, str]
) -> None:
    cache, name = named
    await asyncio.gather(*(cache.aupdate(f"p{i}", LLM, value(str(i))) for i in range(200)))
    found = await asyncio.gather(*(cache.alookup(f"p{i}", LLM) for i in range(200)))
    assert found == [value(str(i)) for i in range(200)]
    await cache.aclear()
    assert await cache.alookup("p1", LLM) is None
    held_now = held(cache)
    assert held_now
    states = await asyncio.to_thread(sessions, postgres_url, name)
    # Every session of the async engine is idle, outside any transaction.
    assert len(states) >= len(held_now)
    assert {state for _, state, _ in states} == {"idle"}
    assert all(xid is None for _, _, xid in states)
    await cache.aclose()
    await cache.async_engine.dispose()


async def test_a_dropped_held_connection_is_replaced_without_an_error(
    postgres_url: str, named: tuple[SQLAlchemyCache, str]
) -> None:
    cache, name = named
    await cache.aupdate("p", LLM, value("x"))
    assert await cache.alookup("p", LLM) == value("x")
    before = held(cache)
    pids = {pid for pid, _, _ in await asyncio.to_thread(sessions, postgres_url, name)}
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        for pid in pids:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])
    assert await cache.alookup("p", LLM) == value("x")
    await cache.aupdate("q", LLM, value("y"))
    assert await cache.alookup("q", LLM) == value("y")
    assert cache.stats().errors == 0
    after = held(cache)
    assert after
    assert not set(map(id, after)) & set(map(id, before))
    new_pids = {pid for pid, _, _ in await asyncio.to_thread(sessions, postgres_url, name)}
    assert not new_pids & pids
    await cache.aclose()
    await cache.async_engine.dispose()


async def test_a_statement_cancelled_midway_is_never_held_again(postgres_url: str) -> None:
    async with proxied(postgres_url) as (cache, proxy):
        await cache.aupdate("A", LLM, value("answer A"))
        await cache.aupdate("B", LLM, value("answer B"))
        [before] = held(cache)
        proxy.hold_replies()
        lookup = asyncio.ensure_future(cache.alookup("A", LLM))
        await asyncio.to_thread(proxy.wait_until, lambda p: p.held == 1)
        lookup.cancel()
        with pytest.raises(asyncio.CancelledError):
            await lookup
        assert held(cache) == []
        assert before.invalidated  # closed for good: its reply may still come
        proxy.release_replies()
        assert await cache.alookup("B", LLM) == value("answer B")
        assert await cache.alookup("A", LLM) == value("answer A")
        [after] = held(cache)
        assert after is not before
        assert cache.stats().errors == 0


async def test_a_deadline_cut_off_replaces_the_held_connection(postgres_url: str) -> None:
    async with proxied(postgres_url, timeout=0.5, breaker_threshold=None) as (cache, proxy):
        # Under load the first statement (connecting and setting the table up through the
        # proxy) can pass the short deadline itself: store until a connection is held.
        for _ in range(20):
            await cache.aupdate("A", LLM, value("answer A"))
            if held(cache):
                break
        [before] = held(cache)
        timeouts = cache.stats().timeouts
        proxy.hold_replies()
        assert await cache.alookup("A", LLM) is None  # the deadline passed: a miss
        assert cache.stats().timeouts == timeouts + 1
        assert held(cache) == []
        assert before.invalidated
        proxy.release_replies()
        # A new connection through the proxy can itself pass 0.5 s under load: retry.
        for _ in range(20):
            if await cache.alookup("A", LLM) == value("answer A"):
                break
        assert await cache.alookup("A", LLM) == value("answer A")
        assert held(cache)[0] is not before


async def test_aclose_returns_held_connections_to_the_pool(
    named: tuple[SQLAlchemyCache, str],
) -> None:
    cache, _ = named
    await asyncio.gather(*(cache.aupdate(f"p{i}", LLM, value(str(i))) for i in range(50)))
    pool = queue_pool(cache.async_engine)
    assert held(cache)
    assert pool.checkedout() == len(held(cache))
    await cache.aclose()
    assert held(cache) == []
    assert pool.checkedout() == 0
    assert pool.checkedin() >= 1
    await cache.async_engine.dispose()


async def test_aclose_of_its_own_engines_leaves_no_server_session(postgres_url: str) -> None:
    table = unique_table()
    cache = SQLAlchemyCache(postgres_url, table_name=table, local_max_bytes=0, on_error="raise")
    pids: list[int] = []
    event.listen(
        cache.async_engine.sync_engine.pool,
        "connect",
        lambda dbapi_connection, _record: pids.append(
            dbapi_connection.driver_connection.get_server_pid()
        ),
    )
    await asyncio.gather(*(cache.aupdate(f"p{i}", LLM, value(str(i))) for i in range(50)))
    assert await cache.alookup("p1", LLM) == value("1")
    assert held(cache)
    assert pids
    drop_table(cache, table)
    await cache.aclose()
    with psycopg.connect(postgres_url) as admin:
        left = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids]
        ).fetchone()
    assert left == (0,)


def test_held_connections_are_closed_when_their_loop_ends(postgres_url: str) -> None:
    name = f"lsc-held-{uuid.uuid4().hex[:12]}"
    async_engine, sync_engine = named_engines(postgres_url, name)
    table = unique_table()
    cache = SQLAlchemyCache(
        async_engine, sync_engine=sync_engine, table_name=table, local_max_bytes=0
    )

    async def use() -> int:
        await asyncio.gather(*(cache.aupdate(f"p{i}", LLM, value(str(i))) for i in range(50)))
        assert await cache.alookup("p1", LLM) == value("1")
        return len(held(cache))

    for _ in range(2):  # the second loop holds connections of its own
        assert asyncio.run(use()) >= 1
        # The loop is gone: what it held is closed, not left checked out of the pool.
        pool = queue_pool(async_engine)
        assert pool.checkedout() == 0
        assert len(sessions(postgres_url, name)) <= pool.checkedin()
    drop_table(cache, table)
    cache.close()
    sync_engine.dispose()


async def test_a_driver_path_that_does_not_fit_sqlalchemy_is_turned_off_not_retried(
    named: tuple[SQLAlchemyCache, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As with an adapter whose private parts moved (SQLAlchemy 2.0's cursor had no
    # _rowcount): each call used to fall back and replace its connection, silently.
    cache, _ = named
    await cache.aupdate("p", LLM, value("x"))

    async def unfit(*args: Any, **kwargs: Any) -> Any:
        raise AttributeError("_rowcount")

    monkeypatch.setattr(DriverStatement, "run", unfit)
    pool = queue_pool(cache.async_engine)
    checkouts: list[object] = []
    event.listen(pool, "checkout", lambda *args: checkouts.append(args))
    for _ in range(10):
        await cache.aupdate("p", LLM, value("x"))
        assert await cache.alookup("p", LLM) == value("x")
    # One replacement per statement (the upsert, the lookup) on asyncpg, then none.
    assert len(checkouts) <= 2
    assert cache.stats().errors == 0
    await cache.aclose()
    await cache.async_engine.dispose()
