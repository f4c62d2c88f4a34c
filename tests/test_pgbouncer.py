"""The cache through a real PgBouncer in transaction pooling mode, set up as the README says."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator

import pytest
from langchain_core.outputs import Generation
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine

from langchain_sqlalchemy_cache import SQLAlchemyCache

from .conftest import drop_table, unique_table
from .pgbouncer import running_pgbouncer

LLM = "llm"


@pytest.fixture(scope="module")
def pgbouncer_url(postgres_url: str) -> Iterator[str]:
    if not (shutil.which("pgbouncer") or os.path.exists("/usr/sbin/pgbouncer")):
        reason = "PgBouncer is not installed (apt-get install pgbouncer)"
        if os.environ.get("REQUIRE_PGBOUNCER") == "1":
            pytest.fail(reason + " (REQUIRE_PGBOUNCER=1)")
        pytest.skip(reason)
    with running_pgbouncer(postgres_url) as url:
        yield url


def pgbouncer_cache(url: str, table: str) -> SQLAlchemyCache:
    # The README's recipe: psycopg on both sides, without server-side prepared
    # statements, which transaction pooling cannot keep on one server connection.
    no_prepare = {"prepare_threshold": None}
    async_engine = create_async_engine(
        url.replace("postgresql://", "postgresql+psycopg_async://"), connect_args=no_prepare
    )
    sync_engine = create_engine(
        url.replace("postgresql://", "postgresql+psycopg://"), connect_args=no_prepare
    )
    return SQLAlchemyCache(
        async_engine, sync_engine=sync_engine, table_name=table, on_error="raise"
    )


async def test_the_cache_works_through_pgbouncer_transaction_pooling(pgbouncer_url: str) -> None:
    table = unique_table()
    cache = pgbouncer_cache(pgbouncer_url, table)
    for round_ in range(3):
        await asyncio.gather(
            *(cache.aupdate(f"p{i}", LLM, [Generation(text=f"{round_}-{i}")]) for i in range(300))
        )
        results = await asyncio.gather(*(cache.alookup(f"p{i}", LLM) for i in range(300)))
        assert results == [[Generation(text=f"{round_}-{i}")] for i in range(300)]
    for i in range(30):
        cache.update(f"s{i}", LLM, [Generation(text=str(i))])
        assert cache.lookup(f"s{i}", LLM) == [Generation(text=str(i))]
    await cache.aclear()
    assert await cache.alookup("p1", LLM) is None
    drop_table(cache, table)
    await cache.async_engine.dispose()
    cache.sync_engine.dispose()
