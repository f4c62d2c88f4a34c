"""max_entries=: amortised trimming of the oldest entries, on both backends."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from sqlalchemy import func, select

from langchain_sqlalchemy_cache import ConfigurationError, SQLAlchemyCache
from langchain_sqlalchemy_cache._eviction import check_interval

from .conftest import CacheFactory, drop_table, start_threads, unique_table
from .helpers import table_of, value


def count(cache: SQLAlchemyCache, namespace: str = "") -> int:
    table = table_of(cache)
    with cache.sync_engine.connect() as connection:
        return int(
            connection.execute(
                select(func.count()).select_from(table).where(table.c.namespace == namespace)
            ).scalar_one()
        )


def test_check_interval_is_a_tenth_of_the_bound_within_limits() -> None:
    assert [check_interval(n) for n in (1, 9, 10, 50, 10_000, 10_001, 10**6)] == [
        1,
        1,
        1,
        5,
        1000,
        1000,
        1000,
    ]


def test_sync_writes_keep_the_table_near_the_bound(make_cache: CacheFactory) -> None:
    cache = make_cache(max_entries=50)  # trims every 5 writes
    for i in range(200):
        cache.update(f"p{i}", "m", value(str(i)))
        assert count(cache) <= 50 + 5
    assert count(cache) >= 50
    # What is left is the newest: the last 50 written are all there, the first gone.
    assert all(cache.lookup(f"p{i}", "m") == value(str(i)) for i in range(150, 200))
    assert cache.lookup("p0", "m") is None
    before = count(cache)
    assert cache.enforce_max_entries() == before - 50
    assert count(cache) == 50
    assert cache.enforce_max_entries() == 0


async def test_concurrent_async_writes_keep_the_table_near_the_bound(
    make_cache: CacheFactory,
) -> None:
    cache = make_cache(max_entries=100)  # trims every 10 writes
    await asyncio.gather(*(cache.aupdate(f"p{i}", "m", value(str(i))) for i in range(1000)))
    before = count(cache)
    assert 100 <= before <= 100 + 10
    assert await cache.aenforce_max_entries() == before - 100
    assert count(cache) == 100
    assert cache.stats().writes == 1000
    assert cache.stats().errors == 0
    await cache.aclose()


def test_enforce_deletes_in_batches_down_to_the_bound(make_cache: CacheFactory) -> None:
    writer = make_cache(table_name=(table := unique_table()))
    for start in range(0, 2500, 100):
        for i in range(start, start + 100):
            writer.update(f"p{i}", "m", value(str(i)))
    bounded = make_cache(table_name=table, max_entries=10)
    assert bounded.enforce_max_entries() == 2490  # more than one 1000-row DELETE
    assert count(bounded) == 10
    assert bounded.lookup("p2499", "m") == value("2499")
    assert bounded.lookup("p2489", "m") is None


def test_trimming_touches_only_its_namespace(make_cache: CacheFactory) -> None:
    table = unique_table()
    small = make_cache(table_name=table, namespace="small", max_entries=5)
    other = make_cache(table_name=table, namespace="other")
    for i in range(30):
        other.update(f"p{i}", "m", value("o"))
        small.update(f"p{i}", "m", value("s"))
    assert count(small, "small") <= 6
    assert count(other, "other") == 30


def test_two_writers_drift_at_most_one_interval_each(make_cache: CacheFactory) -> None:
    # Two cache objects on one table stand for two processes: each counts its own writes.
    table = unique_table()
    first = make_cache(table_name=table, max_entries=40)
    second = make_cache(table_name=table, max_entries=40)
    for i in range(300):
        (first if i % 2 else second).update(f"p{i}", "m", value(str(i)))
        assert count(first) <= 40 + 2 * 4


def test_short_lived_writers_trim_too(make_cache: CacheFactory) -> None:
    # A script or CLI run that writes fewer entries than the interval still trims: each
    # cache object trims on its first write.
    table = unique_table()
    for run in range(20):
        writer = make_cache(table_name=table, max_entries=50)  # interval 5
        for i in range(4):
            writer.update(f"run{run}-{i}", "m", value("x"))
        assert count(writer) <= 50 + 4
    assert count(writer) >= 50


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_max_entries_is_validated(backend_url: str, bad: object) -> None:
    with pytest.raises(ConfigurationError, match="max_entries must be a positive int"):
        SQLAlchemyCache(backend_url, max_entries=bad)  # type: ignore[arg-type]


async def test_enforce_needs_max_entries(cache: SQLAlchemyCache) -> None:
    with pytest.raises(ConfigurationError, match="max_entries"):
        cache.enforce_max_entries()
    with pytest.raises(ConfigurationError, match="max_entries"):
        await cache.aenforce_max_entries()


@pytest.fixture(params=["postgresql", "mysql"])
def server_url(request: pytest.FixtureRequest) -> str:
    return str(
        request.getfixturevalue({"postgresql": "postgres_url", "mysql": "mysql_url"}[request.param])
    )


def test_trimming_beside_concurrent_writers_loses_no_write(server_url: str) -> None:
    # A trim deletes in age order while upsert batches lock rows in key order: the two
    # can deadlock. The server then rolls one back; the cache must retry it, not lose a
    # batch of writes (or a trim) to it.
    table = unique_table()
    # No deadline: this checks lock-conflict retries, which may take longer than the
    # default 2 s on a loaded machine; deadlines have tests of their own.
    seed = SQLAlchemyCache(server_url, table_name=table, on_error="raise", timeout=None)
    keys = 2000

    async def fill() -> None:
        await asyncio.gather(*(seed.aupdate(f"k{i}", "m", value("x")) for i in range(keys)))
        await seed.aclose()

    asyncio.run(fill())
    deadline = time.monotonic() + 4
    trims: list[int] = []

    def trimmer(_: int) -> None:
        bounded = SQLAlchemyCache(
            server_url, table_name=table, max_entries=1000, on_error="raise", timeout=None
        )
        while time.monotonic() < deadline:
            trims.append(bounded.enforce_max_entries())
        bounded.close()

    def writer(number: int) -> None:
        cache = SQLAlchemyCache(server_url, table_name=table, on_error="raise", timeout=None)
        rng = random.Random(number)

        async def write() -> None:
            while time.monotonic() < deadline:
                batch = rng.sample(range(keys), 300)
                await asyncio.gather(*(cache.aupdate(f"k{k}", "m", value("y")) for k in batch))
            await cache.aclose()

        asyncio.run(write())

    join_trimmer = start_threads(trimmer, 1)
    join_writers = start_threads(writer, 2)
    assert join_writers() == []
    assert join_trimmer() == []
    assert sum(trims) > 0  # the trimmer really ran beside the writers
    drop_table(seed, table)
    seed.close()
