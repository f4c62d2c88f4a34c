"""stats() counters, and table_stats() / astats() read from the real table, on both backends."""

from __future__ import annotations

import time
from datetime import timezone

import pytest
from sqlalchemy import create_engine, func, select, update

from langchain_sqlalchemy_cache import CacheError, SQLAlchemyCache, TableStats
from langchain_sqlalchemy_cache._stats import Counters

from .conftest import CacheFactory, unique_table
from .helpers import table_of, value


async def test_stats_count_hits_misses_writes_of_both_sides(make_cache: CacheFactory) -> None:
    cache = make_cache()
    empty = cache.stats()
    assert (empty.hits, empty.misses, empty.writes, empty.errors) == (0, 0, 0, 0)
    assert empty.lookup_p50_ms is None
    assert empty.hit_rate is None

    assert await cache.alookup("a", "m") is None
    assert cache.lookup("b", "m") is None
    await cache.aupdate("a", "m", value("A"))
    cache.update("b", "m", value("B"))
    assert await cache.alookup("a", "m") == value("A")
    assert cache.lookup("b", "m") == value("B")
    assert cache.lookup("a", "m") == value("A")

    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.writes, stats.errors) == (3, 2, 2, 0)
    assert stats.hit_rate == pytest.approx(3 / 5)
    lookups = (stats.lookup_p50_ms, stats.lookup_p95_ms, stats.lookup_p99_ms)
    updates = (stats.update_p50_ms, stats.update_p95_ms, stats.update_p99_ms)
    for p50, p95, p99 in (lookups, updates):
        assert p50 is not None
        assert p95 is not None
        assert p99 is not None
        assert 0 < p50 <= p95 <= p99 < 60_000
    await cache.aclose()


async def test_an_unreadable_row_is_a_miss_in_the_counters(make_cache: CacheFactory) -> None:
    cache = make_cache(local_max_bytes=0)  # the row is changed behind the cache's back
    cache.update("p", "m", value("x"))
    table = table_of(cache)
    with cache.sync_engine.begin() as connection:
        connection.execute(update(table).values(payload=b"not json"))
    assert await cache.alookup("p", "m") is None
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.errors) == (0, 1, 0)
    await cache.aclose()


async def test_failures_are_counted_as_errors_not_misses(backend_url: str) -> None:
    # No table and create_table=False: every statement fails in the database.
    cache = SQLAlchemyCache(backend_url, table_name=unique_table(), create_table=False)
    assert cache.lookup("p", "m") is None
    assert await cache.alookup("p", "m") is None
    cache.update("p", "m", value("x"))
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.writes, stats.errors) == (0, 0, 0, 3)
    await cache.aclose()


def test_latency_percentiles_are_nearest_rank_observed_values() -> None:
    counters = Counters()
    for ms in range(50, 0, -1):  # 1 ms .. 50 ms, in any order
        counters.lookup(hit=True, seconds=ms / 1000)
    stats = counters.snapshot(errors=0)
    # Nearest rank: the 25th, 48th and 50th of 50; interpolation would give 25.5, 47.55, 49.51.
    assert stats.lookup_p50_ms == pytest.approx(25)
    assert stats.lookup_p95_ms == pytest.approx(48)
    assert stats.lookup_p99_ms == pytest.approx(50)
    assert stats.update_p50_ms is None


async def test_stats_latency_percentiles_are_within_what_callers_saw(
    make_cache: CacheFactory,
) -> None:
    cache = make_cache()
    seen = []
    for i in range(50):
        start = time.perf_counter()
        cache.lookup(f"p{i}", "m")
        seen.append((time.perf_counter() - start) * 1000)
    stats = cache.stats()
    seen.sort()
    # Each lookup is timed inside the call, so each percentile is at most the same
    # percentile of the durations its callers measured around it.
    assert stats.lookup_p50_ms is not None
    assert stats.lookup_p95_ms is not None
    assert stats.lookup_p99_ms is not None
    assert 0 < stats.lookup_p50_ms <= seen[24]
    assert stats.lookup_p50_ms <= stats.lookup_p95_ms <= seen[47]
    assert stats.lookup_p95_ms <= stats.lookup_p99_ms <= seen[49]
    await cache.aclose()


def _payload_bytes(cache: SQLAlchemyCache, namespace: str) -> int:
    table = table_of(cache)
    with cache.sync_engine.connect() as connection:
        rows = connection.execute(
            select(table.c.payload).where(table.c.namespace == namespace)
        ).all()
    return sum(len(bytes(row.payload)) for row in rows)


async def test_table_stats_describe_the_namespace(make_cache: CacheFactory) -> None:
    table_name = unique_table()
    cache = make_cache(table_name=table_name, namespace="team-a")
    other = make_cache(table_name=table_name, namespace="team-b")
    empty = cache.table_stats()
    assert empty == TableStats(
        entries=0,
        payload_bytes=0,
        table_bytes=empty.table_bytes,
        oldest=None,
        newest=None,
        models=(),
    )

    before = time.time()
    for i in range(3):
        await cache.aupdate(f"p{i}", "gpt", value("x" * 1000))
    cache.update("q", "claude", value("short"))
    other.update("elsewhere", "gpt", value("not ours"))
    after = time.time()

    for stats in (
        cache.table_stats(),
        await cache.atable_stats(),
        await cache.astats(),  # the old name, kept for one release
    ):
        assert stats.entries == 4
        assert stats.payload_bytes == _payload_bytes(cache, "team-a")
        assert stats.oldest is not None
        assert stats.newest is not None
        assert stats.oldest.tzinfo is timezone.utc
        assert before <= stats.oldest.timestamp() <= stats.newest.timestamp() <= after
        assert [(m.llm_string, m.entries) for m in stats.models] == [("gpt", 3), ("claude", 1)]
        assert stats.table_bytes is not None
        assert stats.table_bytes > 0
    assert other.table_stats().entries == 1
    await cache.aclose()
    await other.aclose()


def _refresh_size_statistics(cache: SQLAlchemyCache) -> None:
    # MySQL/MariaDB report a table's size from statistics they refresh lazily.
    if cache.sync_engine.dialect.name in ("mysql", "mariadb"):
        with cache.sync_engine.connect() as connection:
            connection.exec_driver_sql(f"ANALYZE TABLE {table_of(cache).name}").all()


async def test_table_bytes_grow_with_the_table(make_cache: CacheFactory) -> None:
    cache = make_cache()
    cache.update("seed", "m", value("x"))
    _refresh_size_statistics(cache)
    small = cache.table_stats().table_bytes
    for i in range(20):
        cache.update(f"big{i}", "m", value(f"{i}" + "y" * 200_000))
    _refresh_size_statistics(cache)
    big = cache.table_stats().table_bytes
    assert small is not None
    assert big is not None
    assert big > small + 20 * 2_000  # even compressed (TOAST), 4 MB does not fit in 40 kB
    await cache.aclose()


def test_without_stored_prompts_models_are_known_by_hash(make_cache: CacheFactory) -> None:
    cache = make_cache(store_prompts=False)
    cache.update("p", "secret model settings", value("x"))
    (model,) = cache.table_stats().models
    assert model.llm_string is None
    assert model.entries == 1
    table = table_of(cache)
    with cache.sync_engine.connect() as connection:
        stored = connection.execute(select(table.c.llm_key)).scalar_one()
        assert connection.execute(select(func.count()).select_from(table)).scalar_one() == 1
    assert model.llm_key == stored


async def test_table_stats_raise_even_under_the_miss_policy(backend_url: str) -> None:
    cache = SQLAlchemyCache(backend_url, table_name=unique_table(), create_table=False)
    with pytest.raises(CacheError, match="table_stats failed"):
        cache.table_stats()
    with pytest.raises(CacheError, match="table_stats failed"):
        await cache.astats()
    await cache.aclose()


def test_table_bytes_of_a_table_in_its_own_schema(postgres_url: str) -> None:
    schema = f"Stats {unique_table()}"  # a name that needs quoting
    admin = create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        with SQLAlchemyCache(postgres_url, table_name="Odd Name", schema=schema) as cache:
            cache.update("p", "m", value("x"))
            stats = cache.table_stats()
        assert stats.entries == 1
        assert stats.table_bytes is not None
        assert stats.table_bytes > 0
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()
