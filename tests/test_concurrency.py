"""One round trip per call, coalesced batches, and a bounded number of statements in flight."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from langchain_core.outputs import Generation
from sqlalchemy import event
from sqlalchemy.ext.asyncio import create_async_engine

from langchain_sqlalchemy_cache import SQLAlchemyCache

from .conftest import CacheFactory, drop_table, unique_table
from .helpers import queue_pool
from .pgproxy import PgProxy

LLM = "llm"


def count_statements(cache: SQLAlchemyCache) -> list[str]:
    """The statements the async engine sends, as its engine events see them."""
    sent: list[str] = []
    event.listen(
        cache.async_engine.sync_engine,
        "before_cursor_execute",
        lambda *args: sent.append(args[2].split()[0]),
    )
    return sent


async def test_every_async_call_is_one_round_trip_on_postgres(
    proxied_cache: tuple[SQLAlchemyCache, PgProxy],
) -> None:
    cache, proxy = proxied_cache
    value = [Generation(text="x")]
    # Warm up: table creation, connection setup and asyncpg's one-off statement prepares.
    for _ in range(2):
        await cache.aupdate("p", LLM, value)
        await cache.alookup("p", LLM)
        await cache.alookup("missing", LLM)
        await cache.aclear()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: cache.aupdate("p", LLM, value),
        lambda: cache.alookup("p", LLM),
        lambda: cache.alookup("missing", LLM),
        lambda: cache.aclear(),
    ]
    for call in calls:
        proxy.reset()
        await call()
        assert proxy.round_trips == 1, dict(proxy.messages)
        assert proxy.messages["Q"] == 0  # no BEGIN / ROLLBACK / COMMIT as simple queries
    await cache.async_engine.dispose()


def test_every_sync_call_is_one_round_trip_on_postgres(
    proxied_cache: tuple[SQLAlchemyCache, PgProxy],
) -> None:
    cache, proxy = proxied_cache
    value = [Generation(text="x")]
    cache.update("p", LLM, value)
    cache.lookup("p", LLM)
    calls: list[Callable[[], object]] = [
        lambda: cache.update("p", LLM, value),
        lambda: cache.lookup("p", LLM),
        lambda: cache.lookup("missing", LLM),
        lambda: cache.clear(),
    ]
    for call in calls:
        proxy.reset()
        call()
        assert proxy.round_trips == 1, dict(proxy.messages)


async def test_every_call_is_one_statement(make_cache: CacheFactory) -> None:
    acache = make_cache(local_max_bytes=0)
    await acache.alookup("warm", LLM)  # table creation
    sent = count_statements(acache)
    await acache.aupdate("p", LLM, [Generation(text="x")])
    await acache.alookup("p", LLM)
    await acache.aclear()
    assert sent == ["INSERT", "SELECT", "DELETE"]
    await acache.aclose()


async def test_concurrent_lookups_share_one_select_and_get_their_own_answers(
    acache: SQLAlchemyCache,
) -> None:
    for i in range(0, 200, 2):  # every other key is stored
        await acache.aupdate(f"p{i}", LLM, [Generation(text=f"answer {i}")])
    sent = count_statements(acache)
    keys = [f"p{i}" for i in range(200)] * 2
    random.Random(7).shuffle(keys)
    results = await asyncio.gather(*(acache.alookup(key, LLM) for key in keys))
    for key, result in zip(keys, results, strict=True):
        i = int(key[1:])
        assert result == ([Generation(text=f"answer {i}")] if i % 2 == 0 else None)
    # 400 callers, batches of at most 500 keys: the first caller found the loop idle and
    # went alone, the other 399 shared one statement.
    assert sent == ["SELECT", "SELECT"]
    # Callers asking for the same key get equal but separate objects.
    first, second = (r for k, r in zip(keys, results, strict=True) if k == "p0")
    assert first == second
    assert first is not second


async def test_concurrent_updates_share_one_upsert(acache: SQLAlchemyCache) -> None:
    await acache.alookup("warm", LLM)
    sent = count_statements(acache)
    await asyncio.gather(
        *(acache.aupdate(f"k{i % 10}", LLM, [Generation(text=str(i))]) for i in range(50))
    )
    assert sent == ["INSERT", "INSERT"]  # the first alone, the other 49 together
    for k in range(10):
        # Concurrent writers of one key have no order; any value written for it may win
        # (within one batch the last one does: see test_statements.py).
        hit = await acache.alookup(f"k{k}", LLM)
        assert hit is not None
        assert int(hit[0].text) % 10 == k


async def test_coalescing_can_be_turned_off(make_cache: CacheFactory) -> None:
    cache = make_cache(coalesce=False)
    await cache.alookup("warm", LLM)
    sent = count_statements(cache)
    await asyncio.gather(*(cache.alookup(f"p{i}", LLM) for i in range(20)))
    assert sent == ["SELECT"] * 20
    await cache.aclose()


async def test_batches_are_chunked(make_cache: CacheFactory) -> None:
    cache = make_cache(max_batch_size=7)
    await cache.alookup("warm", LLM)
    sent = count_statements(cache)
    await asyncio.gather(*(cache.alookup(f"p{i}", LLM) for i in range(50)))
    assert sent == ["SELECT"] * 8  # one lone call, then 49 / 7 batches
    await cache.aclose()


async def test_cancelled_callers_cancel_nobody_else(make_cache: CacheFactory) -> None:
    acache = make_cache(local_max_bytes=0)  # the database path: hits from memory never wait
    for i in range(50):
        await acache.aupdate(f"p{i}", LLM, [Generation(text=str(i))])
    tasks = [asyncio.ensure_future(acache.alookup(f"p{i}", LLM)) for i in range(50)]
    await asyncio.sleep(0)  # queued, the batch not yet answered
    for task in tasks[::2]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for i, result in enumerate(results):
        if i % 2 == 0:
            assert isinstance(result, asyncio.CancelledError)
        else:
            assert result == [Generation(text=str(i))]
    # The cache still answers afterwards.
    assert await acache.alookup("p3", LLM) == [Generation(text="3")]
    await acache.aclose()


async def test_ten_thousand_concurrent_calls_on_a_pool_of_five(backend_url: str) -> None:
    url = (
        backend_url.replace("postgresql://", "postgresql+asyncpg://")
        .replace("sqlite:///", "sqlite+aiosqlite:///")
        .replace("mysql://", "mysql+asyncmy://")
    )
    engine = create_async_engine(url, pool_size=5, max_overflow=0, pool_timeout=5)
    table = unique_table()
    # No deadline: 10,000 callers queued behind a few connections wait longer than the
    # default 2 s, and would then (rightly) give up; this tests that none gets an error.
    cache = SQLAlchemyCache(engine, table_name=table, timeout=None)
    checked_out: list[int] = []
    pool = queue_pool(engine)
    event.listen(pool, "checkout", lambda *a: checked_out.append(pool.checkedout()))

    async def call(i: int) -> Any:
        if i % 10 == 0:
            await cache.aupdate(f"p{i % 500}", LLM, [Generation(text=str(i % 500))])
            return None
        return await cache.alookup(f"p{i % 500}", LLM)

    results = await asyncio.gather(*(call(i) for i in range(10_000)))
    for i, result in enumerate(results):
        assert result is None or result == [Generation(text=str(i % 500))]
    assert max(checked_out) <= 5
    drop_table(cache, table)
    await engine.dispose()
