"""Read replicas on a real streaming-replication cluster (a primary and two standbys).

What each standby served is read from its own pg_stat_statements (a standby counts
only what ran on it), filtered on the test's own table.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from langchain_sqlalchemy_cache import ConfigurationError, SQLAlchemyCache, _replicas

from .conftest import unique_table
from .helpers import value
from .pgcluster import Cluster, Node, cluster_or_skip, wait_until

LLM = "llm"
SEEDS = 100
MAX_LAG = 0.5

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with cluster_or_skip(standbys=2) as running:
        yield running


@pytest.fixture
def table(cluster: Cluster) -> Iterator[str]:
    """A table on the primary holding SEEDS entries, replayed on every standby."""
    name = unique_table()
    writer = SQLAlchemyCache(cluster.primary.url(), table_name=name, on_error="raise")
    for i in range(SEEDS):
        writer.update(f"seed {i}", LLM, value(f"seed {i}"))
    writer.close()
    cluster.wait_replayed()
    yield name
    cluster.primary.execute(f'DROP TABLE IF EXISTS "{name}"')


def label(node: Node) -> str:
    """How ``stats().reads_by_server`` names a standby given as ``node.url()``."""
    return node.url("psycopg")


def served(node: Node, table: str) -> int:
    """Rows the node's own lookups of ``table`` returned: one per hit it served."""
    return int(
        node.query(
            "SELECT coalesce(sum(rows), 0) FROM pg_stat_statements "
            # Lookups only: the first use's identity check also names the table.
            "WHERE query LIKE %s AND query ILIKE 'select%%' AND query LIKE '%%payload%%'",
            f"%{table}%",
        )
    )


def statements(node: Node, table: str) -> int:
    """Lookups of ``table`` the node itself ran (hits or not)."""
    return int(
        node.query(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
            # Lookups only: the first use's identity check also names the table.
            "WHERE query LIKE %s AND query ILIKE 'select%%' AND query LIKE '%%payload%%'",
            f"%{table}%",
        )
    )


def clients(node: Node) -> int:
    """Client sessions on the node other than this query's own."""
    return int(
        node.query(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        )
    )


def reader(cluster: Cluster, table: str, **options: object) -> SQLAlchemyCache:
    options.setdefault("replicas", [node.url() for node in cluster.standbys])
    options.setdefault("on_error", "raise")
    options.setdefault("local_max_bytes", 0)  # every lookup is routed, none is from memory
    # Three servers on two cores, one of them maybe being stopped: the default 2 s could
    # pass on a loaded machine, and these tests count every call that fails.
    options.setdefault("timeout", 10.0)
    return SQLAlchemyCache(
        cluster.primary.url(),
        table_name=table,
        create_table=False,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
async def paused(cluster: Cluster) -> AsyncIterator[list[Node]]:
    """The standbys whose replay the test pauses; resumed and caught up afterwards."""
    nodes: list[Node] = []
    yield nodes
    for node in nodes:
        node.execute("SELECT pg_wal_replay_resume()")
    cluster.wait_replayed()


def pause(node: Node, paused: list[Node]) -> None:
    paused.append(node)
    node.execute("SELECT pg_wal_replay_pause()")
    wait_until(
        lambda: node.query("SELECT pg_get_wal_replay_pause_state()") == "paused",
        f"replay paused on {node.name}",
    )


async def test_lookups_are_spread_over_the_standbys_and_counted_there(
    cluster: Cluster, table: str
) -> None:
    cache = reader(cluster, table)
    try:
        prompts = [f"seed {i % SEEDS}" for i in range(400)]
        for start in range(0, len(prompts), 50):
            wave = prompts[start : start + 50]
            found = await asyncio.gather(*(cache.alookup(p, LLM) for p in wave))
            assert all(result is not None for result in found)
        reads = cache.stats().reads_by_server
        one, two = cluster.standbys
        assert reads[label(one)] > 0
        assert reads[label(two)] > 0
        assert reads["primary"] == 0
        assert reads[label(one)] + reads[label(two)] == len(prompts)
        # The standbys' own statistics agree, and the primary served no lookup.
        assert served(one, table) == reads[label(one)]
        assert served(two, table) == reads[label(two)]
        assert served(cluster.primary, table) == 0
    finally:
        await cache.aclose()
    # Closing the cache closed its connections to the standbys too.
    for node in cluster.standbys:
        wait_until(lambda node=node: clients(node) == 0, f"no client left on {node.name}")  # type: ignore[misc]


async def test_own_writes_and_clear_are_read_from_the_primary(
    cluster: Cluster, table: str, paused: list[Node]
) -> None:
    """With both standbys' replay paused, what this object wrote is still seen at once,
    on both sides; another object's write is not (the documented staleness)."""
    cache = reader(cluster, table)
    other = SQLAlchemyCache(cluster.primary.url(), table_name=table, on_error="raise")
    try:
        for node in cluster.standbys:
            pause(node, paused)
        cache.update("mine sync", LLM, value("s"))
        await cache.aupdate("mine async", LLM, value("a"))
        other.update("theirs", LLM, value("t"))

        assert cache.lookup("mine sync", LLM) == value("s")
        assert await cache.alookup("mine async", LLM) == value("a")
        assert cache.lookup("theirs", LLM) is None  # the standby has not replayed it
        assert await cache.alookup("seed 1", LLM) == value("seed 1")
        reads = cache.stats().reads_by_server
        assert reads["primary"] == 2
        assert served(cluster.primary, table) == 2

        # After this object's clear(), the standbys still hold the seeds: read the primary.
        await cache.aclear()
        assert cache.lookup("seed 2", LLM) is None
        assert await cache.alookup("seed 3", LLM) is None
        assert cache.stats().reads_by_server["primary"] == 4
    finally:
        other.close()
        await cache.aclose()


def test_past_the_remembered_writes_every_lookup_goes_to_the_primary(
    cluster: Cluster, table: str, paused: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forgetting a recent write early must not expose a stale standby: when the memory
    of own writes overflows, all lookups go to the primary instead."""
    monkeypatch.setattr(_replicas, "OWN_WRITES_KEPT", 3)
    cache = reader(cluster, table)
    try:
        for node in cluster.standbys:
            pause(node, paused)
        for i in range(5):
            cache.update(f"mine {i}", LLM, value(str(i)))
        assert [cache.lookup(f"mine {i}", LLM) for i in range(5)] == [
            value(str(i)) for i in range(5)
        ]
        assert cache.stats().reads_by_server["primary"] == 5
    finally:
        cache.close()


async def test_a_standby_stopped_mid_load_sends_its_reads_elsewhere(
    cluster: Cluster, table: str
) -> None:
    cache = reader(cluster, table, on_error="miss")
    one, two = cluster.standbys
    misses: list[str] = []
    stop = asyncio.Event()
    progress = asyncio.Event()

    async def load(worker: int) -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            prompt = f"seed {(worker + n) % SEEDS}"
            if await cache.alookup(prompt, LLM) is None:
                misses.append(prompt)
            progress.set()

    async def until(condition: Callable[[], bool]) -> None:
        while not condition():
            progress.clear()
            await progress.wait()

    tasks = [asyncio.create_task(load(i)) for i in range(100)]
    try:
        await until(lambda: min(cache.stats().reads_by_server[label(n)] for n in (one, two)) > 50)
        await asyncio.to_thread(two.stop, "immediate")
        before = cache.stats().reads_by_server[label(one)]
        await until(lambda: cache.stats().reads_by_server[label(one)] > before + 500)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        await cache.aclose()
        await asyncio.to_thread(two.start)
        await asyncio.to_thread(cluster.wait_streaming)
    assert misses == []
    stats = cache.stats()
    assert stats.errors == 0
    assert served(one, table) == stats.reads_by_server[label(one)]


async def test_a_lagging_standby_is_skipped_past_max_replica_lag(
    cluster: Cluster, table: str, paused: list[Node]
) -> None:
    one, two = cluster.standbys
    pause(two, paused)
    writer = SQLAlchemyCache(cluster.primary.url(), table_name=table, on_error="raise")
    fresh = [f"fresh {i}" for i in range(20)]
    for prompt in fresh:
        writer.update(prompt, LLM, value(prompt))
    writer.close()
    cluster.wait_replayed(one)
    lag = "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp())"
    wait_until(lambda: two.query(lag) > MAX_LAG, f"{two.name} lagging")

    # Without a bound, the paused standby answers with what it has: misses.
    stale = reader(cluster, table, replicas=[two.url()])
    try:
        assert [await stale.alookup(prompt, LLM) for prompt in fresh] == [None] * len(fresh)
        assert stale.stats().reads_by_server[label(two)] == len(fresh)
    finally:
        await stale.aclose()

    ran_on_two = statements(two, table)
    bounded = reader(cluster, table, max_replica_lag=timedelta(seconds=MAX_LAG))
    try:
        for _ in range(5):
            found = await asyncio.gather(*(bounded.alookup(p, LLM) for p in fresh))
            assert found == [value(prompt) for prompt in fresh]
            assert [bounded.lookup(p, LLM) for p in fresh] == [value(p) for p in fresh]
        reads = bounded.stats().reads_by_server
        assert reads[label(two)] == 0
        # Until a standby's first lag measure is back, its share goes to the primary.
        assert reads[label(one)] > 0
        assert reads[label(one)] + reads["primary"] == 10 * len(fresh)
        assert statements(two, table) == ran_on_two  # not one lookup reached it

        # Caught up again, it serves again (its lag is asked again within a second).
        two.execute("SELECT pg_wal_replay_resume()")
        cluster.wait_replayed(two)
        while bounded.stats().reads_by_server[label(two)] == 0:
            assert await bounded.alookup(fresh[0], LLM) == value(fresh[0])
        assert served(two, table) > 0
    finally:
        await bounded.aclose()


@pytest.mark.parametrize(
    ("primary", "options", "says"),
    [
        ("postgresql://a@db/app", {"replicas": "postgresql://a@db2/app"}, "list of URLs"),
        ("postgresql://a@db/app", {"replicas": [42]}, "each replica must be"),
        ("postgresql://a@db/app", {"replicas": ["mysql://a@db2/app"]}, "database kind"),
        ("postgresql://a@db/app", {"max_replica_lag": 0}, "positive number of seconds"),
        ("mysql://a@db/app", {"max_replica_lag": 1.0}, "PostgreSQL standbys only"),
        ("sqlite:///{tmp}/a.db", {"replicas": ["sqlite:///{tmp}/b.db"]}, "SQLite has no read"),
    ],
)
def test_replicas_a_cache_cannot_use_say_what_to_pass(
    tmp_path: Path, primary: str, options: dict[str, object], says: str
) -> None:
    replicas = options.get("replicas")
    if isinstance(replicas, list):
        options = {
            **options,
            "replicas": [r.format(tmp=tmp_path) if isinstance(r, str) else r for r in replicas],
        }
    with pytest.raises(ConfigurationError, match=says):
        SQLAlchemyCache(primary.format(tmp=tmp_path), **options)  # type: ignore[arg-type]


async def test_a_replica_engine_passed_in_is_used_and_left_open(
    cluster: Cluster, table: str
) -> None:
    one = cluster.standbys[0]
    engine = create_async_engine(one.url("asyncpg"))
    cache = reader(cluster, table, replicas=[engine])
    try:
        assert await cache.alookup("seed 5", LLM) == value("seed 5")
        assert cache.lookup("seed 6", LLM) == value("seed 6")  # on the derived sync twin
        assert cache.stats().reads_by_server[label(one)] == 2
    finally:
        await cache.aclose()
    async with engine.connect() as connection:  # still the caller's to use
        assert (await connection.execute(text("SELECT 1"))).scalar() == 1
    await engine.dispose()
