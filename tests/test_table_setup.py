"""Table setup that heals: indexes verified and created on first use, a setup cut short
leaves nothing half-made on PostgreSQL, a table dropped at runtime comes back."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from langchain_core.outputs import Generation
from sqlalchemy import Engine, MetaData, NullPool, create_engine, inspect, text

from langchain_sqlalchemy_cache import CacheError, SQLAlchemyCache, cache_table

from .conftest import drop_table, unique_table

pytestmark = pytest.mark.timeout(120)

VALUE = [Generation(text="answer")]
OUR_INDEXES = {("namespace", "updated_at"), ("namespace", "llm_key")}


@pytest.fixture
def admin(backend_url: str) -> Iterator[Engine]:
    """A plain sync engine on the test's database, for setting the stage by hand."""
    url = backend_url.replace("postgresql://", "postgresql+psycopg://", 1).replace(
        "mysql://", "mysql+pymysql://", 1
    )
    # No pool: a pooled SQLite connection answers PRAGMA index_list from a stale schema.
    engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    yield engine
    engine.dispose()


def _indexes(engine: Engine, table_name: str) -> set[tuple[str, ...]]:
    return {
        tuple(str(name) for name in index["column_names"])
        for index in inspect(engine).get_indexes(table_name)
    }


def _bare_table(engine: Engine, table_name: str) -> None:
    """The cache's table without its indexes, as a setup cut short after CREATE TABLE."""
    table = cache_table(MetaData(), table_name)
    table.indexes.clear()
    table.create(engine)


@pytest.mark.parametrize("side", ["sync", "async"])
async def test_first_use_creates_the_missing_indexes(
    backend_url: str, admin: Engine, side: str
) -> None:
    table_name = unique_table()
    _bare_table(admin, table_name)
    assert _indexes(admin, table_name) == set()
    cache = SQLAlchemyCache(backend_url, table_name=table_name)
    try:
        if side == "sync":
            assert cache.lookup("p", "m") is None
        else:
            assert await cache.alookup("p", "m") is None
        assert _indexes(admin, table_name) >= OUR_INDEXES
        assert cache.stats().errors == 0
    finally:
        drop_table(cache, table_name)
        await cache.aclose()


async def test_a_dropped_index_is_recreated_by_the_next_cache(
    backend_url: str, admin: Engine
) -> None:
    table_name = unique_table()
    first = SQLAlchemyCache(backend_url, table_name=table_name)
    first.update("p", "m", VALUE)
    index = next(ix for ix in cache_table(MetaData(), table_name).indexes if "llm" in str(ix.name))
    with admin.connect() as connection:
        index.drop(connection)
    assert ("namespace", "llm_key") not in _indexes(admin, table_name)
    second = SQLAlchemyCache(backend_url, table_name=table_name)
    try:
        assert await second.alookup("p", "m") == VALUE
        assert _indexes(admin, table_name) >= OUR_INDEXES
    finally:
        drop_table(second, table_name)
        first.close()
        await second.aclose()


def test_without_create_table_a_missing_index_is_reported_not_made(
    backend_url: str, admin: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    table_name = unique_table()
    _bare_table(admin, table_name)
    cache = SQLAlchemyCache(backend_url, table_name=table_name, create_table=False)
    try:
        with caplog.at_level(logging.WARNING, logger="langchain_sqlalchemy_cache"):
            cache.update("p", "m", VALUE)
        assert cache.lookup("p", "m") == VALUE
        assert _indexes(admin, table_name) == set()
        lacking = [r.getMessage() for r in caplog.records if "lacks an index" in r.getMessage()]
        assert len(lacking) == 2
        assert any("namespace, updated_at" in message for message in lacking)
    finally:
        drop_table(cache, table_name)
        cache.close()


def test_postgresql_creates_table_and_indexes_in_one_transaction(postgres_url: str) -> None:
    admin = create_engine(
        postgres_url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
    )
    table_name = unique_table()
    index = next(ix for ix in cache_table(MetaData(), table_name).indexes if "llm" in str(ix.name))
    # An object holding the second index's name makes CREATE INDEX fail after CREATE
    # TABLE went through: the setup is cut short between the two.
    with admin.connect() as connection:
        connection.execute(text(f'CREATE TABLE "{index.name}" (x int)'))
    cache = SQLAlchemyCache(postgres_url, table_name=table_name, on_error="raise")
    try:
        with pytest.raises(CacheError):
            cache.update("p", "m", VALUE)
        assert not inspect(admin).has_table(table_name)  # rolled back with its index
        with admin.connect() as connection:
            connection.execute(text(f'DROP TABLE "{index.name}"'))
        cache.update("p", "m", VALUE)  # the next call sets it up whole
        assert cache.lookup("p", "m") == VALUE
        assert _indexes(admin, table_name) >= OUR_INDEXES
    finally:
        if inspect(admin).has_table(str(index.name)):  # the test failed before dropping it
            with admin.connect() as connection:
                connection.execute(text(f'DROP TABLE "{index.name}"'))
        drop_table(cache, table_name)
        cache.close()
        admin.dispose()


@pytest.mark.parametrize("side", ["sync", "async"])
async def test_a_table_dropped_at_runtime_is_recreated_by_the_next_call(
    backend_url: str, admin: Engine, side: str
) -> None:
    table_name = unique_table()
    # The tier off: after the drop, lookups must go to the new table.
    cache = SQLAlchemyCache(backend_url, table_name=table_name, on_error="raise", local_max_bytes=0)
    try:
        cache.update("p", "m", VALUE)
        assert await cache.alookup("p", "m") == VALUE  # both sides ready
        drop_table(cache, table_name)
        assert not inspect(admin).has_table(table_name)
        if side == "sync":
            cache.update("q", "m", VALUE)  # under "raise": a failure would raise
            assert cache.lookup("q", "m") == VALUE
        else:
            await cache.aupdate("q", "m", VALUE)
            assert await cache.alookup("q", "m") == VALUE
        assert _indexes(admin, table_name) >= OUR_INDEXES
        # The other side finds the new table too, and the old entry is gone with the old one.
        assert cache.lookup("p", "m") is None
        assert await cache.alookup("p", "m") is None
        assert cache.stats().errors == 0
    finally:
        drop_table(cache, table_name)
        await cache.aclose()


async def test_without_create_table_a_dropped_table_fails_until_it_is_back(
    backend_url: str,
) -> None:
    table_name = unique_table()
    maker = SQLAlchemyCache(backend_url, table_name=table_name)
    maker.update("p", "m", VALUE)
    # The tier off: after the drop, lookups must reach the database.
    cache = SQLAlchemyCache(
        backend_url, table_name=table_name, create_table=False, local_max_bytes=0
    )
    try:
        assert await cache.alookup("p", "m") == VALUE
        drop_table(cache, table_name)
        assert await cache.alookup("p", "m") is None  # a miss, logged and counted
        assert cache.lookup("p", "m") is None
        errors = cache.stats().errors
        assert errors >= 1
        maker.update("p", "m", VALUE)  # the migrations bring it back
        assert await cache.alookup("p", "m") == VALUE
        assert cache.lookup("p", "m") == VALUE
        assert cache.stats().errors == errors
    finally:
        drop_table(maker, table_name)
        maker.close()
        await cache.aclose()
