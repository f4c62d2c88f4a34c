"""Database faults, cancellation, event loops and threads: the cache never breaks the call."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from langchain_sqlalchemy_cache import CacheError, ConfigurationError, SQLAlchemyCache

from .conftest import CacheFactory, drop_table, start_threads, unique_table
from .helpers import table_of, value

LLM = "llm"


# Error policy.


def test_on_error_must_be_miss_or_raise(tmp_path: Any) -> None:
    with pytest.raises(ConfigurationError, match="on_error must be 'miss'"):
        SQLAlchemyCache(f"sqlite:///{tmp_path / 'c.db'}", on_error="ignore")  # type: ignore[arg-type]


@pytest.fixture
def broken_cache(make_cache: CacheFactory) -> CacheFactory:
    """Caches on a table that does not exist: every statement fails in the database."""

    def factory(**options: Any) -> SQLAlchemyCache:
        return make_cache(table_name=unique_table(), create_table=False, **options)

    return factory


async def test_errors_are_misses_and_no_ops_by_default(
    broken_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cache = broken_cache()
    with caplog.at_level(logging.WARNING, logger="langchain_sqlalchemy_cache"):
        assert cache.lookup("p", LLM) is None
        cache.update("p", LLM, value("x"))
        cache.clear()
        assert await cache.alookup("p", LLM) is None
        await cache.aupdate("p", LLM, value("x"))
        await cache.aclear()
        results = await asyncio.gather(*(cache.alookup(f"p{i}", LLM) for i in range(100)))
    assert results == [None] * 100
    stats = cache.stats()
    # The first five calls fail (the breaker's threshold), each counted once; the
    # breaker then answers the other 101 calls (one aclear, the hundred concurrent
    # lookups) without a statement.
    assert stats.errors == 5
    assert stats.short_circuited == 101
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    # Rate-limited: one line per operation kind, not one per failure.
    assert len(warnings) == 3
    assert all("served as a miss or skipped" in r.getMessage() for r in warnings)
    await cache.aclose()


async def test_on_error_raise_raises_cache_error_chained_to_the_cause(
    broken_cache: CacheFactory,
) -> None:
    cache = broken_cache(on_error="raise")
    with pytest.raises(CacheError, match="lookup failed") as sync_error:
        cache.lookup("p", LLM)
    assert sync_error.value.__cause__ is not None
    with pytest.raises(CacheError, match="update failed") as async_error:
        await cache.aupdate("p", LLM, value("x"))
    assert async_error.value.__cause__ is not None
    with pytest.raises(CacheError, match="clear failed"):
        await cache.aclear()
    await cache.aclose()


async def test_type_errors_are_not_swallowed_by_the_policy(acache: SQLAlchemyCache) -> None:
    with pytest.raises(TypeError):
        await acache.aupdate("p", LLM, "not generations")  # type: ignore[arg-type]


# Event loops and threads.


def test_alternating_asyncio_runs_on_one_cache(cache: SQLAlchemyCache) -> None:
    for i in range(5):
        asyncio.run(cache.aupdate("p", LLM, value(str(i))))
        assert asyncio.run(cache.alookup("p", LLM)) == value(str(i))
    assert cache.lookup("p", LLM) == value("4")


def test_a_finished_loops_sqlite_connections_are_closed(tmp_path: Path) -> None:
    # Each aiosqlite connection owns a thread and an open file. A loop's connections are
    # closed on that loop as it shuts down, their threads ended before asyncio.run
    # returns: none left for the garbage collector, none accumulating across runs.
    others = set(threading.enumerate())  # threads of other tests' caches

    def aiosqlite_threads() -> set[threading.Thread]:
        alive = set(threading.enumerate()) - others
        return {t for t in alive if "_connection_worker_thread" in t.name}

    # The tier off: each run's lookup must reach the database through its own loop.
    cache = SQLAlchemyCache(f"sqlite:///{tmp_path / 'runs.db'}", local_max_bytes=0)

    async def in_one_run(call: Any) -> tuple[Any, int]:
        result = await call
        return result, len(aiosqlite_threads())  # this run's own, pooled connection

    for i in range(6):
        for call in (cache.aupdate(f"p{i}", LLM, value(str(i))), cache.alookup(f"p{i}", LLM)):
            assert aiosqlite_threads() == set()
            result, during = asyncio.run(in_one_run(call))
            assert during == 1
            assert aiosqlite_threads() == set()  # closed, its thread joined, at loop end
        assert result == value(str(i))

    async def close() -> None:
        await cache.aclose()

    asyncio.run(close())


def test_a_loop_reaching_the_engine_directly_leaves_no_closed_connection_pooled(
    tmp_path: Path,
) -> None:
    # cache.async_engine used on a loop the cache never served: that loop still closes
    # the aiosqlite connection it opened (its thread ended before asyncio.run returns),
    # and the pool forgets it, so the next loop's calls open a fresh one.
    others = set(threading.enumerate())

    def aiosqlite_threads() -> set[threading.Thread]:
        alive = set(threading.enumerate()) - others
        return {t for t in alive if "_connection_worker_thread" in t.name}

    cache = SQLAlchemyCache(f"sqlite:///{tmp_path / 'direct.db'}", local_max_bytes=0)

    async def direct() -> Any:
        async with cache.async_engine.connect() as connection:
            return (await connection.exec_driver_sql("SELECT 1")).scalar()

    for i in range(3):
        assert asyncio.run(direct()) == 1
        assert aiosqlite_threads() == set()
        asyncio.run(cache.aupdate(f"p{i}", LLM, value(str(i))))
        assert asyncio.run(cache.alookup(f"p{i}", LLM)) == value(str(i))
        assert aiosqlite_threads() == set()
    assert cache.stats().errors == 0
    cache.close()


def test_a_loop_keeps_its_engine_when_the_first_loop_ends(make_cache: CacheFactory) -> None:
    # The first loop (thread "first") gets the cache's engine, a loop beside it (thread
    # "second") a clone of its own. When the first loop has ended, the second one keeps
    # its clone and its connections: none is closed under its running statements.
    cache = make_cache(timeout=None, local_max_bytes=0)  # no deadline: a hang would show
    first_served, second_served = threading.Event(), threading.Event()

    def first(_: int) -> None:
        async def run() -> None:
            await cache.aupdate("first", LLM, value("first"))
            first_served.set()
            await asyncio.to_thread(second_served.wait, 60)

        asyncio.run(run())

    def second(_: int) -> None:
        async def run() -> None:
            await asyncio.to_thread(first_served.wait, 60)
            await cache.aupdate("second", LLM, value("second"))
            second_served.set()
            assert await asyncio.to_thread(join_first) == []  # the first loop has ended
            for round_ in range(3):
                keys = [f"r{round_}-{i}" for i in range(50)]
                await asyncio.gather(*(cache.aupdate(k, LLM, value(k)) for k in keys))
                hits = await asyncio.gather(*(cache.alookup(k, LLM) for k in keys))
                assert hits == [value(k) for k in keys]

        asyncio.run(run())

    join_first = start_threads(first, 1)
    assert start_threads(second, 1)() == []
    assert cache.stats().errors == 0
    assert cache.lookup("first", LLM) == value("first")


def test_threads_each_running_their_own_loop_share_a_cache(make_cache: CacheFactory) -> None:
    cache = make_cache(local_max_bytes=0)  # no tier: each loop's own engine reaches the table

    def thread_main(t: int) -> None:
        async def work() -> None:
            for i in range(20):
                await cache.aupdate(f"t{t}-{i}", LLM, value(f"{t}-{i}"))
            results = await asyncio.gather(*(cache.alookup(f"t{t}-{i}", LLM) for i in range(20)))
            assert results == [value(f"{t}-{i}") for i in range(20)]

        asyncio.run(work())

    assert start_threads(thread_main, 4)() == []
    assert cache.lookup("t3-19", LLM) == value("3-19")


@pytest.fixture(scope="module")
def module_cache(postgres_url: str) -> Iterator[SQLAlchemyCache]:
    table = unique_table()
    cache = SQLAlchemyCache(postgres_url, table_name=table)
    cache.update("shared", LLM, value("before any loop"))
    yield cache
    drop_table(cache, table)
    cache.close()


# Two tests, two function-scoped loops, one module-scoped cache; each test stands alone.
@pytest.mark.parametrize("loop_name", ["first loop", "second loop"])
async def test_module_scoped_cache_on_function_scoped_loops(
    module_cache: SQLAlchemyCache, loop_name: str
) -> None:
    assert await module_cache.alookup("shared", LLM) is not None
    await module_cache.aupdate(loop_name, LLM, value(loop_name))
    assert await module_cache.alookup(loop_name, LLM) == value(loop_name)


async def test_sync_threads_beside_async_tasks(make_cache: CacheFactory) -> None:
    # 32 threads share a sync pool of 15: a deadline that covers waiting for a
    # connection on a loaded machine, since a skipped update fails the thread's lookup.
    acache = make_cache(timeout=30.0)

    def sync_worker(t: int) -> None:
        for i in range(10):
            acache.update(f"s{t}-{i}", LLM, value(f"s{t}-{i}"))
            assert acache.lookup(f"s{t}-{i}", LLM) == value(f"s{t}-{i}")

    async def async_worker(i: int) -> None:
        await acache.aupdate(f"a{i}", LLM, value(f"a{i}"))
        assert await acache.alookup(f"a{i}", LLM) == value(f"a{i}")

    join = start_threads(sync_worker, 32)
    await asyncio.gather(*(async_worker(i) for i in range(500)))
    assert await asyncio.to_thread(join) == []
    await acache.aclose()


# Concurrent writers.


async def test_tasks_and_threads_writing_one_new_key(acache: SQLAlchemyCache) -> None:
    written = {f"task {i}" for i in range(1000)} | {
        f"thread {t}-{j}" for t in range(8) for j in range(20)
    }

    def thread_writer(t: int) -> None:
        for j in range(20):
            acache.update("contended", LLM, value(f"thread {t}-{j}"))

    join = start_threads(thread_writer, 8)
    results = await asyncio.gather(
        *(acache.aupdate("contended", LLM, value(f"task {i}")) for i in range(1000)),
        return_exceptions=True,
    )
    assert await asyncio.to_thread(join) == []
    assert [r for r in results if r is not None] == []
    hit = await acache.alookup("contended", LLM)
    assert hit is not None
    assert hit[0].text in written
    with acache.sync_engine.connect() as connection:
        table = table_of(acache)
        assert connection.execute(select(func.count()).select_from(table)).scalar() == 1


def test_concurrent_batches_over_the_same_keys_do_not_deadlock(make_cache: CacheFactory) -> None:
    # A long deadline: a slow lock wait on a loaded machine is not a deadlock, and the
    # databases report a real one as an error at once.
    cache = make_cache(timeout=30.0)
    keys = [f"k{i}" for i in range(50)]
    for key in keys:
        cache.update(key, LLM, value("initial"))
    barrier = threading.Barrier(20)

    def writer(t: int) -> None:
        order = keys[:]
        random.Random(t).shuffle(order)

        async def batch() -> None:
            barrier.wait()  # all 20 batches hit the database together
            for _ in range(3):
                await asyncio.gather(*(cache.aupdate(k, LLM, value(f"w{t}")) for k in order))

        asyncio.run(batch())

    assert start_threads(writer, 20)() == []
    assert cache.stats().errors == 0  # no deadlock hidden as a skipped update
    assert all(cache.lookup(k, LLM) is not None for k in keys)
