"""namespace=, clear(llm_string=...), and a table of the wrong layout, on both backends."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, MetaData, String, Table

from langchain_sqlalchemy_cache import ConfigurationError, SQLAlchemyCache

from .conftest import CacheFactory, unique_table
from .helpers import age, value

GPT = '{"model": "gpt"}'
CLAUDE = '{"model": "claude"}'


async def test_namespaces_never_see_each_other(make_cache: CacheFactory) -> None:
    table = unique_table()
    team_a = make_cache(table_name=table, namespace="team-a")
    team_b = make_cache(table_name=table, namespace="team-b")
    default = make_cache(table_name=table)
    await team_a.aupdate("p", GPT, value("a"))
    team_b.update("p", GPT, value("b"))
    assert await team_a.alookup("p", GPT) == value("a")
    assert team_b.lookup("p", GPT) == value("b")
    assert default.lookup("p", GPT) is None
    await team_a.aclear()  # only team-a's entries go
    assert await team_a.alookup("p", GPT) is None
    assert await team_b.alookup("p", GPT) == value("b")
    await team_a.aclose()
    await team_b.aclose()
    await default.aclose()


async def test_clear_one_models_entries(make_cache: CacheFactory) -> None:
    table = unique_table()
    cache = make_cache(table_name=table, namespace="n", store_prompts=False)
    other_namespace = make_cache(table_name=table, namespace="m")
    for prompt in ("p1", "p2"):
        await cache.aupdate(prompt, GPT, value(f"gpt {prompt}"))
        await cache.aupdate(prompt, CLAUDE, value(f"claude {prompt}"))
    other_namespace.update("p1", GPT, value("m gpt"))
    cache.clear(llm_string=GPT)  # works without stored prompt text: the model's hash
    assert cache.lookup("p1", GPT) is None
    assert cache.lookup("p2", GPT) is None
    assert cache.lookup("p1", CLAUDE) == value("claude p1")
    assert other_namespace.lookup("p1", GPT) == value("m gpt")
    # Both filters together: only Claude's entries older than an hour.
    age(cache, "p1", 7200, CLAUDE)
    await cache.aclear(llm_string=CLAUDE, older_than=3600)
    assert await cache.alookup("p1", CLAUDE) is None
    assert await cache.alookup("p2", CLAUDE) == value("claude p2")
    with pytest.raises(TypeError, match="llm_string must be a str"):
        cache.clear(llm_string=42)
    await cache.aclose()
    await other_namespace.aclose()


async def test_purge_touches_only_its_namespace(make_cache: CacheFactory) -> None:
    table = unique_table()
    mine = make_cache(table_name=table, namespace="mine", ttl=60)
    theirs = make_cache(table_name=table, namespace="theirs", ttl=60)
    mine.update("p", GPT, value("mine"))
    theirs.update("p", GPT, value("theirs"))
    age(mine, "p", 120, GPT)
    age(theirs, "p", 120, GPT)
    assert await mine.apurge_expired() == 1
    assert theirs.purge_expired() == 1
    await mine.aclose()
    await theirs.aclose()


@pytest.mark.parametrize("bad", [None, 3, "x" * 256])
def test_bad_namespace(make_cache: CacheFactory, bad: object) -> None:
    with pytest.raises(ConfigurationError, match="namespace must be a str"):
        make_cache(namespace=bad)


def test_a_table_of_another_layout_is_reported(make_cache: CacheFactory) -> None:
    probe = make_cache()
    foreign = Table(unique_table(), MetaData(), Column("key", String(64), primary_key=True))
    with probe.sync_engine.connect() as connection:
        foreign.create(connection)
    try:
        cache = SQLAlchemyCache(probe.sync_engine, table_name=foreign.name)
        with pytest.raises(ConfigurationError, match="lacks the columns"):
            cache.lookup("p", GPT)
        # Also when the table is the application's to manage: checked once, not created.
        managed = SQLAlchemyCache(probe.sync_engine, table_name=foreign.name, create_table=False)
        with pytest.raises(ConfigurationError, match="lacks the columns"):
            managed.lookup("p", GPT)
    finally:
        with probe.sync_engine.connect() as connection:
            foreign.drop(connection)
