"""ttl=, purge_expired() / apurge_expired(), clear(older_than=) on both backends."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from langchain_sqlalchemy_cache import ConfigurationError, SQLAlchemyCache

from .conftest import CacheFactory
from .helpers import age, key_of, table_of, value

LLM = "llm"


async def test_an_expired_entry_is_a_miss(make_cache: CacheFactory) -> None:
    cache = make_cache(ttl=timedelta(minutes=10), local_max_bytes=0)  # rows aged behind its back
    await cache.aupdate("old", LLM, value("old"))
    await cache.aupdate("new", LLM, value("new"))
    age(cache, "old", 601)
    age(cache, "new", 540)  # a minute to spare: the calls below take real time
    assert await cache.alookup("old", LLM) is None
    assert cache.lookup("old", LLM) is None
    assert await cache.alookup("new", LLM) == value("new")
    assert cache.lookup("new", LLM) == value("new")
    await cache.aupdate("old", LLM, value("rewritten"))  # a new write is fresh again
    assert await cache.alookup("old", LLM) == value("rewritten")
    await cache.aclose()


def test_without_ttl_entries_never_expire(cache: SQLAlchemyCache) -> None:
    cache.update("p", LLM, value("x"))
    age(cache, "p", 10 * 365 * 86400)
    assert cache.lookup("p", LLM) == value("x")
    with pytest.raises(ConfigurationError, match="needs a cache made with ttl"):
        cache.purge_expired()


@pytest.mark.parametrize("bad", [0, -5, "10", True, timedelta(0)])
def test_bad_ttl_says_what_to_pass(make_cache: CacheFactory, bad: object) -> None:
    with pytest.raises(ConfigurationError, match="ttl must be a positive number of seconds"):
        make_cache(ttl=bad)


async def test_purge_deletes_only_expired_entries_in_batches(make_cache: CacheFactory) -> None:
    # An hour's ttl: 2,500 writes in a row must not outlast it on a loaded machine.
    cache = make_cache(ttl=3600)
    for i in range(2500):
        cache.update(f"p{i}", LLM, value(str(i)))
    table = table_of(cache)
    with cache.sync_engine.connect() as connection:  # age 2,300 of them at once
        keep = [key_of(cache, f"p{i}", LLM) for i in range(200)]
        connection.execute(
            update(table).where(table.c.key.not_in(keep)).values(updated_at=time.time() - 7200)
        )
    assert await cache.apurge_expired() == 2300  # three DELETEs of at most 1000 rows
    assert cache.purge_expired() == 0
    assert cache.lookup("p0", LLM) == value("0")
    assert cache.lookup("p200", LLM) is None
    await cache.aclose()


async def test_clear_older_than(make_cache: CacheFactory) -> None:
    cache = make_cache()
    for name, seconds in (("a", 7200), ("b", 1800), ("c", 10)):
        cache.update(name, LLM, value(name))
        age(cache, name, seconds)
    cache.clear(older_than=timedelta(hours=1))
    assert cache.lookup("a", LLM) is None
    assert cache.lookup("b", LLM) == value("b")
    await cache.aclear(older_than=60)
    assert await cache.alookup("b", LLM) is None
    assert await cache.alookup("c", LLM) == value("c")
    with pytest.raises(TypeError, match="older_than must be a positive"):
        cache.clear(older_than="yesterday")
    with pytest.raises(TypeError, match="unexpected keyword arguments: namespace"):
        await cache.aclear(namespace="x")
    assert cache.lookup("c", LLM) == value("c")  # nothing deleted by the bad calls
    await cache.aclose()
