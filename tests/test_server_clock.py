"""Two application hosts whose clocks differ by an hour agree on what has expired:
write times and every comparison with them read the database server's clock."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from langchain_core.outputs import Generation
from sqlalchemy import text, update

from langchain_sqlalchemy_cache import SQLAlchemyCache

from .conftest import drop_table, unique_table
from .helpers import remember, table_of

pytestmark = pytest.mark.timeout(120)

HOUR = 3600.0
TTL = 600.0  # ten minutes: an hour of skew is far beyond it either way
VALUE = [Generation(text="answer")]


@pytest.fixture(params=["postgresql", "mysql"])
def server_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param.replace('postgresql', 'postgres')}_url"))


@contextmanager
def host_clock(monkeypatch: pytest.MonkeyPatch, skew: float) -> Iterator[None]:
    """Run as a host whose clock is ``skew`` seconds off (the cache reads time.time)."""
    real = time.time
    with monkeypatch.context() as patch:
        patch.setattr(time, "time", lambda: real() + skew)
        yield


@pytest.fixture
def hosts(server_url: str) -> Iterator[tuple[SQLAlchemyCache, SQLAlchemyCache]]:
    """Two caches on one table, as two application hosts would have."""
    table = unique_table()
    # The tier off: what is judged here is the table's rows, by the server's clock.
    first = remember(
        SQLAlchemyCache(server_url, table_name=table, ttl=TTL, local_max_bytes=0), table
    )
    second = SQLAlchemyCache(server_url, table_name=table, ttl=TTL, local_max_bytes=0)
    yield first, second
    drop_table(first, table)
    first.close()
    second.close()


def _server_now(cache: SQLAlchemyCache) -> float:
    with cache.sync_engine.connect() as connection:
        query = (
            "SELECT EXTRACT(EPOCH FROM now())"
            if cache.sync_engine.dialect.name == "postgresql"
            else "SELECT UNIX_TIMESTAMP()"
        )
        return float(connection.execute(text(query)).scalar_one())


@pytest.mark.parametrize("skew", [-HOUR, HOUR])
async def test_an_entry_written_by_a_skewed_host_is_fresh_for_every_host(
    hosts: tuple[SQLAlchemyCache, SQLAlchemyCache], monkeypatch: pytest.MonkeyPatch, skew: float
) -> None:
    skewed, true = hosts
    with host_clock(monkeypatch, skew):
        skewed.update("sync", "m", VALUE)
        await skewed.aupdate("async", "m", VALUE)
        assert skewed.lookup("sync", "m") == VALUE
        assert await skewed.alookup("async", "m") == VALUE
    assert true.lookup("async", "m") == VALUE
    assert await true.alookup("sync", "m") == VALUE
    true.update("true", "m", VALUE)
    with host_clock(monkeypatch, skew):
        assert skewed.lookup("true", "m") == VALUE
        assert await skewed.alookup("true", "m") == VALUE
        # Maintenance by the skewed host judges ages by the server's clock too.
        assert skewed.purge_expired() == 0
        assert await skewed.apurge_expired() == 0
        skewed.clear(older_than=TTL)
        await skewed.aclear(older_than=TTL)
    assert true.table_stats().entries == 3
    stats = true.table_stats()
    assert stats.newest is not None
    # Written by the server's clock: nowhere near an hour off.
    assert abs(stats.newest.timestamp() - _server_now(true)) < TTL


async def test_expiry_is_judged_by_the_server_clock(
    hosts: tuple[SQLAlchemyCache, SQLAlchemyCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = hosts
    first.update("old", "m", VALUE)
    first.update("new", "m", VALUE)
    table = table_of(first)
    with first.sync_engine.connect() as connection:  # written 20 minutes ago, server time
        connection.execute(
            update(table)
            .where(table.c.prompt == '"old"')
            .values(updated_at=_server_now(first) - 2 * TTL)
        )
    for skew in (-HOUR, HOUR):
        with host_clock(monkeypatch, skew):
            assert first.lookup("old", "m") is None
            assert await second.alookup("old", "m") is None
            assert await first.alookup("new", "m") == VALUE
    with host_clock(monkeypatch, HOUR):
        assert second.purge_expired() == 1  # only the old one, whatever the host's clock
    assert first.lookup("new", "m") == VALUE
    assert second.table_stats().entries == 1
