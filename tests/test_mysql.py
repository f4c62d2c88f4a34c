"""What is particular to MySQL/MariaDB: driver pairing, the table's character set and
types, both async drivers, killed server sessions, cancellations and packet limits.

Everything else (standard suites, LangChain flows, concurrency, expiry, namespaces)
runs on MariaDB through the ``backend_url`` fixture like on the other backends.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, ExitStack
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from langchain_sqlalchemy_cache import SQLAlchemyCache

from .conftest import drop_table, unique_table
from .helpers import (
    cancellation_storm,
    eventually,
    held_idle,
    queue_pool,
    release_held,
    remember,
    table_of,
    value,
)

LLM = "llm"
ASYNC_DRIVERS = ("asyncmy", "aiomysql")


@pytest.mark.parametrize(
    ("given", "async_url", "sync_url"),
    [
        ("mysql://u@h/db", "mysql+asyncmy://u@h/db?charset=utf8mb4", "mysql+pymysql"),
        ("mysql+asyncmy://u@h/db", "mysql+asyncmy://u@h/db?charset=utf8mb4", "mysql+pymysql"),
        ("mysql+aiomysql://u@h/db", "mysql+aiomysql://u@h/db?charset=utf8mb4", "mysql+pymysql"),
        ("mysql+pymysql://u@h/db", "mysql+asyncmy://u@h/db?charset=utf8mb4", "mysql+pymysql"),
        ("mariadb://u@h/db", "mariadb+asyncmy://u@h/db?charset=utf8mb4", "mariadb+pymysql"),
        (
            "mysql://u@h/db?charset=utf8mb3",
            "mysql+asyncmy://u@h/db?charset=utf8mb3",
            "mysql+pymysql",
        ),
    ],
)
def test_mysql_urls_get_both_drivers(given: str, async_url: str, sync_url: str) -> None:
    cache = SQLAlchemyCache(given)
    assert cache.async_engine.url.render_as_string() == async_url
    assert cache.sync_engine.url.drivername == sync_url
    assert cache.sync_engine.url.query == cache.async_engine.url.query
    cache.close()


@pytest.fixture(params=ASYNC_DRIVERS)
async def mysql_cache(
    request: pytest.FixtureRequest, mysql_url: str
) -> AsyncIterator[SQLAlchemyCache]:
    """A cache on MariaDB through each async driver (pymysql on the sync side)."""
    url = mysql_url.replace("mysql://", f"mysql+{request.param}://", 1)
    table = unique_table()
    # No deadline: multi-megabyte entries and call storms may outlast the default 2 s
    # on a loaded server, and these tests are about what MySQL stores and leaks;
    # deadlines on MySQL are tested in test_deadlines.py. The tier off: the drivers' path.
    cache = remember(SQLAlchemyCache(url, table_name=table, timeout=None, local_max_bytes=0), table)
    assert cache.async_engine.dialect.driver == request.param
    yield cache
    drop_table(cache, table)
    await cache.aclose()


async def test_the_table_holds_every_character_and_precise_times(
    mysql_cache: SQLAlchemyCache,
) -> None:
    await mysql_cache.aupdate("p", LLM, value("x"))
    name = table_of(mysql_cache).name
    with mysql_cache.sync_engine.connect() as connection:
        ddl = connection.execute(text(f"SHOW CREATE TABLE {name}")).one()[1]
        stored = connection.execute(text(f"SELECT updated_at FROM {name}")).scalar_one()
    assert "CHARSET=utf8mb4" in ddl
    assert "COLLATE=utf8mb4_bin" in ddl
    assert "ENGINE=InnoDB" in ddl
    assert "`payload` longblob" in ddl
    assert "`updated_at` double" in ddl  # FLOAT would round a UNIX time to minutes
    stats = mysql_cache.table_stats()
    assert stats.newest is not None
    assert abs(stats.newest.timestamp() - stored) < 1e-6


async def test_astral_characters_nul_and_surrogates_round_trip(
    mysql_cache: SQLAlchemyCache,
) -> None:
    odd = "emoji 😀 𝄞 nul \x00 lone \ud800 pair-like \ud800\udfff end"
    namespaced = SQLAlchemyCache(
        mysql_cache.async_engine,
        sync_engine=mysql_cache.sync_engine,
        table_name=table_of(mysql_cache).name,
        namespace="équipe 😀",
    )
    for cache in (mysql_cache, namespaced):
        await cache.aupdate(odd, odd, value(odd))
        assert await cache.alookup(odd, odd) == value(odd)
        assert cache.lookup(odd, odd) == value(odd)
    # The inspection column is a JSON literal, where an escaped high+low pair reads back
    # as one astral character; the key (a hash of the str) is exact either way.
    (model,) = namespaced.table_stats().models
    assert model.llm_string == odd.replace("\ud800\udfff", "\U000103ff")
    await namespaced.aclear()
    assert await mysql_cache.alookup(odd, odd) == value(odd)


async def test_multi_megabyte_generations_and_concurrent_batches(
    mysql_cache: SQLAlchemyCache,
) -> None:
    big = uuid.uuid4().hex * (5 * 1024 * 1024 // 32)  # 5 MiB, more than TEXT/BLOB's 64 KiB
    await mysql_cache.aupdate("big", LLM, value(big))
    assert await mysql_cache.alookup("big", LLM) == value(big)
    # 200 concurrent 100 kB writes: batched into multi-row upserts, each under the packet limit.
    mid = "m" * 100_000
    await asyncio.gather(
        *(mysql_cache.aupdate(f"k{i}", LLM, value(f"{i}{mid}")) for i in range(200))
    )
    got = await asyncio.gather(*(mysql_cache.alookup(f"k{i}", LLM) for i in range(200)))
    assert got == [value(f"{i}{mid}") for i in range(200)]
    assert mysql_cache.stats().errors == 0


async def test_a_value_over_the_servers_packet_limit_is_skipped_not_raised(
    mysql_cache: SQLAlchemyCache, caplog: pytest.LogCaptureFixture
) -> None:
    with mysql_cache.sync_engine.connect() as connection:
        limit = int(connection.execute(text("SELECT @@max_allowed_packet")).scalar_one())
    too_big = "z" * (limit + 1024)
    await mysql_cache.aupdate("warm", LLM, value("x"))  # the next calls queue up behind
    with caplog.at_level(logging.WARNING, logger="langchain_sqlalchemy_cache"):
        # Written at the same moment, coalesced into one batch with the huge one: only
        # the huge entry's own statement fails.
        await asyncio.gather(
            mysql_cache.aupdate("warm", LLM, value("x")),
            *(mysql_cache.aupdate(f"small{i}", LLM, value(f"ok{i}")) for i in range(20)),
            mysql_cache.aupdate("huge", LLM, value(too_big)),
        )
        mysql_cache.update("huge", LLM, value(too_big))
    assert await mysql_cache.alookup("huge", LLM) is None
    small = await asyncio.gather(*(mysql_cache.alookup(f"small{i}", LLM) for i in range(20)))
    assert small == [value(f"ok{i}") for i in range(20)]
    assert mysql_cache.stats().errors == 2
    assert "cache update failed" in caplog.text
    # The server closed those connections: none is left in the pool to trip over.
    with mysql_cache.sync_engine.connect() as connection:
        assert connection.execute(text("SELECT 1")).scalar_one() == 1
    # And the cache goes on working.
    await mysql_cache.aupdate("small", LLM, value("fine"))
    assert await mysql_cache.alookup("small", LLM) == value("fine")


async def test_killed_server_sessions_are_replaced_without_a_miss(
    mysql_cache: SQLAlchemyCache, mysql_url: str
) -> None:
    session_ids: list[int] = []

    def remember(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("SELECT CONNECTION_ID()")
        session_ids.append(int(cursor.fetchone()[0]))
        cursor.close()

    event.listen(mysql_cache.async_engine.sync_engine, "connect", remember)
    event.listen(mysql_cache.sync_engine, "connect", remember)
    await mysql_cache.aupdate("p", LLM, value("x"))
    mysql_cache.update("q", LLM, value("y"))
    await asyncio.gather(*(mysql_cache.alookup("p", LLM) for _ in range(20)))
    assert session_ids
    admin = create_engine(mysql_url.replace("mysql://", "mysql+pymysql://", 1))
    with admin.connect() as connection:
        for session_id in session_ids:
            connection.execute(text(f"KILL CONNECTION {session_id}"))
    admin.dispose()
    # Pooled connections are dead now; one retry on a fresh connection serves the call.
    assert await mysql_cache.alookup("p", LLM) == value("x")
    assert mysql_cache.lookup("q", LLM) == value("y")
    assert mysql_cache.stats().errors == 0


async def test_cancellation_storm_leaks_nothing(mysql_cache: SQLAlchemyCache) -> None:
    big = "x" * 200_000  # rows slow enough that batches take a while
    await asyncio.gather(
        *(mysql_cache.aupdate(f"p{i}", LLM, value(f"{i}{big}")) for i in range(50))
    )
    await cancellation_storm(
        lambda i: mysql_cache.alookup(f"p{i % 50}", LLM), lambda i: value(f"{i % 50}{big}"), seed=7
    )
    pool = queue_pool(mysql_cache.async_engine)
    # Batches already sent when their callers were cancelled finish on their own; their
    # connections are back in the pool or held idle for the next statements.
    await eventually(
        lambda: pool.checkedout() == held_idle(mysql_cache), "every connection back or held idle"
    )
    results = await asyncio.gather(*(mysql_cache.alookup(f"p{i % 50}", LLM) for i in range(1000)))
    assert results == [value(f"{i % 50}{big}") for i in range(1000)]
    assert mysql_cache.stats().errors == 0


# Statements each session has sent, by kind, as the server counts them. Questions counts
# every statement (these SHOWs too); the rest ignore SHOW. Read on the cache's own
# connections, so that other clients of the server count for nothing.
COUNTERS = ("Questions", "Com_select", "Com_insert", "Com_rollback", "Com_commit", "Com_begin")
SHOW_COUNTERS = "SHOW SESSION STATUS WHERE Variable_name IN ({})".format(
    ", ".join(f"'{name}'" for name in COUNTERS)
)


def _add(total: dict[str, int], rows: Any) -> None:
    for name, count in rows:
        total[name] += int(count)


def sync_session_counters(engine: Engine) -> tuple[int, dict[str, int]]:
    """(sessions read, their counters summed): every idle connection of the pool, each
    checked out at once so that every one is read once."""
    total = dict.fromkeys(COUNTERS, 0)
    with ExitStack() as stack:
        sessions: list[Connection] = [
            stack.enter_context(engine.connect()) for _ in range(queue_pool(engine).checkedin())
        ]
        for connection in sessions:
            _add(total, connection.exec_driver_sql(SHOW_COUNTERS).all())
    return len(sessions), total


async def async_session_counters(engine: AsyncEngine) -> tuple[int, dict[str, int]]:
    total = dict.fromkeys(COUNTERS, 0)
    async with AsyncExitStack() as stack:
        sessions: list[AsyncConnection] = [
            await stack.enter_async_context(engine.connect())
            for _ in range(queue_pool(engine).checkedin())
        ]
        for connection in sessions:
            _add(total, (await connection.exec_driver_sql(SHOW_COUNTERS)).all())
    return len(sessions), total


async def test_every_call_is_one_statement_on_the_server(mysql_cache: SQLAlchemyCache) -> None:
    # PyMySQL-style drivers send a ROLLBACK after every statement unless told not to,
    # which would be a second round trip per call.
    connects: list[object] = []
    for engine in (mysql_cache.async_engine.sync_engine, mysql_cache.sync_engine):
        event.listen(engine, "connect", lambda dbapi, record: connects.append(dbapi))
    await mysql_cache.aupdate("p", LLM, value("x"))  # connections and table are ready
    assert mysql_cache.lookup("p", LLM) == value("x")
    sync_sessions, sync_before = sync_session_counters(mysql_cache.sync_engine)
    await release_held(mysql_cache)  # counted on the pool's idle connections
    async_sessions, async_before = await async_session_counters(mysql_cache.async_engine)
    opened = len(connects)
    assert sync_sessions + async_sessions == opened  # every session the cache has
    for _ in range(25):
        assert mysql_cache.lookup("p", LLM) == value("x")
        assert await mysql_cache.alookup("p", LLM) == value("x")
        mysql_cache.update("q", LLM, value("y"))
        await mysql_cache.aupdate("q", LLM, value("y"))
    assert len(connects) == opened  # the same sessions did it all
    sync_after = sync_session_counters(mysql_cache.sync_engine)
    await release_held(mysql_cache)
    async_after = await async_session_counters(mysql_cache.async_engine)
    assert (sync_after[0], async_after[0]) == (sync_sessions, async_sessions)
    sent = {
        name: sync_after[1][name] - sync_before[name] + async_after[1][name] - async_before[name]
        for name in COUNTERS
    }
    assert sent == {
        "Questions": 100 + opened,  # and one SHOW per session to read these
        "Com_select": 50,
        "Com_insert": 50,
        "Com_rollback": 0,
        "Com_commit": 0,
        "Com_begin": 0,
    }
