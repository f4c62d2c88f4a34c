"""langchain_community users switching over: their constructor shapes, their engines,
their tables, on SQLite, PostgreSQL and MariaDB.

The first part follows langchain_community's own cache tests (an LLM and a chat model
cached through ``set_llm_cache`` and a model's ``cache=``, sync and async, and
``clear``), run against this package in every constructor shape community accepts.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.globals import set_llm_cache
from langchain_core.language_models import BaseLLM
from langchain_core.language_models.fake import FakeListLLM
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.load import dumps
from langchain_core.messages import HumanMessage
from langchain_core.outputs import ChatGeneration, Generation
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from langchain_sqlalchemy_cache import (
    ConfigurationError,
    SQLAlchemyCache,
    SQLAlchemyMd5Cache,
    SQLiteCache,
)

from .conftest import drop_table, unique_table

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from langchain_community import cache as community_cache


def sync_url(url: str) -> str:
    """The URL with the sync driver a langchain_community user has."""
    return url.replace("postgresql://", "postgresql+psycopg://", 1).replace(
        "mysql://", "mysql+pymysql://", 1
    )


def llm_string_of(llm: BaseLLM) -> str:
    # How langchain_community's tests (and BaseLLM for a call without stop) spell it, from
    # the dict BaseLLM itself reads: dict() up to langchain-core 1.4.1; from 1.4.2, which
    # deprecated dict(), _dict_for_compat() (the same dict, without the warning).
    as_dict = getattr(llm, "_dict_for_compat", None) or llm.dict
    params = as_dict()
    params["stop"] = None
    return str(sorted(params.items()))


# --- every constructor shape community accepts --------------------------------------

Shape = Callable[[Engine, str], SQLAlchemyCache]

SHAPES: dict[str, Shape] = {
    "SQLAlchemyCache(engine)": lambda engine, table: SQLAlchemyCache(engine, table_name=table),
    "SQLAlchemyCache(engine, FullLLMCache)": lambda engine, table: SQLAlchemyCache(
        engine, community_cache.FullLLMCache, table_name=table
    ),
    "SQLAlchemyCache(engine, cache_schema=FullLLMCache)": lambda engine, table: SQLAlchemyCache(
        engine, cache_schema=community_cache.FullLLMCache, table_name=table
    ),
    "SQLAlchemyMd5Cache(engine)": lambda engine, table: SQLAlchemyMd5Cache(
        engine, table_name=table
    ),
    "SQLAlchemyMd5Cache(engine, FullMd5LLMCache)": lambda engine, table: SQLAlchemyMd5Cache(
        engine, community_cache.FullMd5LLMCache, table_name=table
    ),
}


@pytest.fixture(params=list(SHAPES))
def shaped_cache(request: pytest.FixtureRequest, backend_url: str) -> Iterator[SQLAlchemyCache]:
    """A cache built as a community user builds one, on a sync engine of their own."""
    engine = create_engine(sync_url(backend_url))
    table = unique_table()
    cache = SHAPES[request.param](engine, table)
    yield cache
    set_llm_cache(None)
    drop_table(cache, table)
    cache.close()
    engine.dispose()


def _check_llm_and_chat_caching_sync(cache: SQLAlchemyCache) -> None:
    set_llm_cache(cache)
    llm = FakeListLLM(responses=["fresh answer"])
    cache.update("How are you?", llm_string_of(llm), [Generation(text="cached answer")])
    assert llm.invoke("How are you?") == "cached answer"

    chat = FakeListChatModel(responses=["first", "second"])
    assert chat.invoke([HumanMessage("hi")]).content == "first"
    assert chat.invoke([HumanMessage("hi")]).content == "first"  # a hit: not "second"
    key = (dumps([HumanMessage("hi")]), chat._get_llm_string())
    stored = cache.lookup(*key)
    assert isinstance(stored, list)
    assert isinstance(stored[0], ChatGeneration)
    assert stored[0].message.content == "first"

    cache.clear()
    assert cache.lookup("How are you?", llm_string_of(llm)) is None
    assert llm.invoke("How are you?") == "fresh answer"


async def _check_llm_and_chat_caching_async(cache: SQLAlchemyCache) -> None:
    llm = FakeListLLM(responses=["fresh answer"])
    await cache.aupdate("How are you?", llm_string_of(llm), [Generation(text="cached answer")])
    assert await llm.ainvoke("How are you?") == "cached answer"

    # A model's own cache= field, with no global cache set.
    set_llm_cache(None)
    chat = FakeListChatModel(responses=["first", "second"], cache=cache)
    assert (await chat.ainvoke([HumanMessage("hello")])).content == "first"
    assert (await chat.ainvoke([HumanMessage("hello")])).content == "first"
    assert chat.invoke([HumanMessage("hello")]).content == "first"  # sync sees it too

    await cache.aclear()
    assert await cache.alookup("How are you?", llm_string_of(llm)) is None
    assert cache.lookup(dumps([HumanMessage("hello")]), chat._get_llm_string()) is None
    await cache.aclose()


async def test_community_shapes_cache_llms_and_chat_models(shaped_cache: SQLAlchemyCache) -> None:
    _check_llm_and_chat_caching_sync(shaped_cache)
    await _check_llm_and_chat_caching_async(shaped_cache)


def test_cache_engine_is_the_sync_engine(backend_url: str) -> None:
    engine = create_engine(sync_url(backend_url))
    cache = SQLAlchemyCache(engine, table_name=unique_table())
    assert cache.engine is cache.sync_engine
    assert cache.engine.pool is engine.pool  # the caller's own engine, as in community
    cache.close()
    engine.dispose()


def test_sqlite_cache_by_database_path(tmp_path: Path) -> None:
    path = str(tmp_path / "community.db")
    cache = SQLiteCache(path)  # community passes it positionally
    _check_llm_and_chat_caching_sync(cache)
    asyncio.run(_check_llm_and_chat_caching_async(cache))
    assert make_url(str(cache.engine.url)).database == path
    set_llm_cache(None)


class _Base(DeclarativeBase):
    pass


class MyCache(_Base):
    """A cache_schema of the user's own, like community's tests declare."""

    __tablename__ = "my_llm_cache"
    prompt: Mapped[str] = mapped_column(primary_key=True)
    llm: Mapped[str] = mapped_column(primary_key=True)
    idx: Mapped[int] = mapped_column(primary_key=True)
    response: Mapped[str | None]


@pytest.mark.parametrize("cls", [SQLAlchemyCache, SQLAlchemyMd5Cache])
def test_other_cache_schema_says_what_is_stored_and_how_to_keep_entries(
    cls: type[SQLAlchemyCache], tmp_path: Path
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    calls: list[Callable[[], SQLAlchemyCache]] = [
        lambda: cls(engine, MyCache),
        lambda: cls(engine, cache_schema=MyCache),
    ]
    for call in calls:
        with pytest.raises(ConfigurationError) as caught:
            call()
        message = str(caught.value)
        assert "cache_schema=MyCache cannot be used" in message
        assert "one row per entry keyed by a SHA-256" in message
        assert "table_name=" in message
        assert "langchain-sqlalchemy-cache migrate" in message
        assert "--from-table my_llm_cache" in message
    with pytest.raises(ConfigurationError, match="cache_schema=int"):
        SQLAlchemyCache(engine, int)
    engine.dispose()


# --- a community table left behind ---------------------------------------------------


def _fill_community_table(engine: Engine, rows: int) -> None:
    if engine.dialect.name == "mysql":
        # Community's own FullLLMCache cannot be created on MySQL (VARCHAR without length).
        with engine.begin() as connection:
            connection.execute(
                text(
                    "CREATE TABLE full_llm_cache (prompt VARCHAR(255), llm VARCHAR(255), "
                    "idx INTEGER, response TEXT, PRIMARY KEY (prompt, llm, idx))"
                )
            )
            for i in range(rows):
                connection.execute(
                    text("INSERT INTO full_llm_cache VALUES (:p, 'llm', 0, :r)"),
                    {"p": f"prompt {i}", "r": dumps(Generation(text=f"answer {i}"))},
                )
        return
    old = community_cache.SQLAlchemyCache(engine)
    for i in range(rows):
        old.update(f"prompt {i}", "llm", [Generation(text=f"answer {i}")])


@pytest.fixture
def private_database(backend_url: str, tmp_path: Path) -> Iterator[str]:
    """A sync URL of a database of this test's own: community's table names are fixed."""
    url = make_url(sync_url(backend_url))
    backend = url.get_backend_name()
    if backend == "sqlite":
        yield sync_url(backend_url)
        return
    name = f"compat_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            if backend == "postgresql":
                connection.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
            else:
                connection.execute(text(f"DROP DATABASE {name}"))
        admin.dispose()


def test_a_filled_community_table_is_pointed_out_once(
    private_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret_url = make_url(private_database)
    engine = create_engine(secret_url)
    _fill_community_table(engine, 3)
    caplog.set_level(logging.INFO, logger="langchain_sqlalchemy_cache")
    cache = SQLAlchemyCache(engine)
    assert cache.lookup("prompt 0", "llm") is None  # this cache's table starts empty
    cache.lookup("prompt 1", "llm")
    lines = [r.getMessage() for r in caplog.records if "full_llm_cache" in r.getMessage()]
    assert len(lines) == 1
    assert "'full_llm_cache' with 3 rows" in lines[0]
    assert "'langchain_llm_cache' is empty" in lines[0]
    assert "langchain-sqlalchemy-cache migrate " in lines[0]
    assert "--from-table full_llm_cache" in lines[0]
    if secret_url.password:
        assert secret_url.password not in lines[0]

    # Once this cache holds entries, a new cache object says nothing.
    cache.update("p", "llm", [Generation(text="x")])
    caplog.clear()
    again = SQLAlchemyCache(engine)
    assert again.lookup("p", "llm") == [Generation(text="x")]
    assert not [r for r in caplog.records if "full_llm_cache" in r.getMessage()]
    drop_table(cache, "langchain_llm_cache")
    drop_table(cache, "full_llm_cache")
    cache.close()
    again.close()
    engine.dispose()


# --- split brain on PostgreSQL: one table, whatever the engine carries ---------------


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A schema of this test's own, dropped with everything in it afterwards."""
    name = f"s_{uuid.uuid4().hex[:10]}"
    admin = create_engine(sync_url(postgres_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE SCHEMA {name}"))
    yield name
    with admin.connect() as connection:
        connection.execute(text(f"DROP SCHEMA {name} CASCADE"))
    admin.dispose()


def schemas_holding(postgres_url: str, table: str) -> list[str]:
    """Every schema in the database that has a table named ``table``."""
    admin = create_engine(sync_url(postgres_url))
    with admin.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relname = :t AND c.relkind = 'r'"
            ),
            {"t": table},
        ).all()
    admin.dispose()
    return sorted(row[0] for row in rows)


async def assert_one_cache(cache: SQLAlchemyCache, *, async_first: bool) -> None:
    """A sync write is an async hit and the reverse (starting with either side)."""
    if async_first:
        await cache.aupdate("from async", "llm", [Generation(text="a")])
        assert cache.lookup("from async", "llm") == [Generation(text="a")]
    cache.update("from sync", "llm", [Generation(text="s")])
    assert await cache.alookup("from sync", "llm") == [Generation(text="s")]
    await cache.aupdate("from async 2", "llm", [Generation(text="a2")])
    assert cache.lookup("from async 2", "llm") == [Generation(text="a2")]


def _search_path_engines(postgres_url: str, schema: str) -> dict[str, Callable[[], Any]]:
    from sqlalchemy.ext.asyncio import create_async_engine

    base = make_url(postgres_url)
    return {
        "psycopg options": lambda: create_engine(
            base.set(drivername="postgresql+psycopg"),
            connect_args={"options": f"-csearch_path={schema}"},
        ),
        "psycopg2 options": lambda: create_engine(
            base.set(drivername="postgresql+psycopg2"),
            connect_args={"options": f"-csearch_path={schema}"},
        ),
        "pg8000 startup_params": lambda: create_engine(
            base.set(drivername="postgresql+pg8000"),
            connect_args={"startup_params": {"search_path": schema}},
        ),
        "asyncpg server_settings": lambda: create_async_engine(
            base.set(drivername="postgresql+asyncpg"),
            connect_args={"server_settings": {"search_path": schema}},
        ),
        "schema_translate_map": lambda: create_engine(
            base.set(drivername="postgresql+psycopg")
        ).execution_options(schema_translate_map={None: schema}),
    }


@pytest.mark.parametrize("async_first", [False, True], ids=["sync first", "async first"])
@pytest.mark.parametrize(
    "kind",
    [
        "psycopg options",
        "psycopg2 options",
        "pg8000 startup_params",
        "asyncpg server_settings",
        "schema_translate_map",
    ],
)
async def test_derived_engine_reaches_the_same_table(
    postgres_url: str, pg_schema: str, kind: str, async_first: bool
) -> None:
    engine = _search_path_engines(postgres_url, pg_schema)[kind]()
    table = unique_table()
    cache = SQLAlchemyCache(engine, table_name=table)
    await assert_one_cache(cache, async_first=async_first)
    assert schemas_holding(postgres_url, table) == [pg_schema]
    await cache.aclose()
    if isinstance(engine, Engine):
        engine.dispose()
    else:
        await engine.dispose()


async def test_creator_is_refused_on_postgres_with_the_pair_to_pass(
    postgres_url: str, pg_schema: str
) -> None:
    import psycopg

    def connect() -> Any:
        return psycopg.connect(postgres_url, options=f"-csearch_path={pg_schema}")

    engine = create_engine("postgresql+psycopg://", creator=connect)
    with pytest.raises(ConfigurationError) as caught:
        SQLAlchemyCache(engine)
    message = str(caught.value)
    assert "creator cannot be carried" in message
    assert "SQLAlchemyCache(create_async_engine('postgresql+asyncpg://..." in message
    assert "sync_engine=engine" in message

    # The pair it asks for: both creators set the same search_path.
    from sqlalchemy.ext.asyncio import create_async_engine

    async def async_connect() -> Any:
        return await psycopg.AsyncConnection.connect(
            postgres_url, options=f"-csearch_path={pg_schema}"
        )

    async_engine = create_async_engine("postgresql+psycopg_async://", async_creator=async_connect)
    table = unique_table()
    cache = SQLAlchemyCache(async_engine, sync_engine=engine, table_name=table)
    await assert_one_cache(cache, async_first=True)
    assert schemas_holding(postgres_url, table) == [pg_schema]
    await async_engine.dispose()
    engine.dispose()


# --- explicit pairs that reach two tables are refused at first use -------------------


@pytest.mark.parametrize("async_first", [False, True], ids=["sync first", "async first"])
async def test_pair_on_another_schema_is_refused(
    postgres_url: str, pg_schema: str, async_first: bool
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    base = make_url(postgres_url)
    async_engine = create_async_engine(
        base.set(drivername="postgresql+asyncpg"),
        connect_args={"server_settings": {"search_path": pg_schema}},
    )
    sync_engine = create_engine(base.set(drivername="postgresql+psycopg"))
    table = unique_table()
    cache = SQLAlchemyCache(async_engine, sync_engine=sync_engine, table_name=table)
    if async_first:
        with pytest.raises(ConfigurationError) as caught:
            await cache.alookup("p", "llm")
    else:
        with pytest.raises(ConfigurationError) as caught:
            cache.lookup("p", "llm")
        with pytest.raises(ConfigurationError, match="different tables"):
            await cache.alookup("p", "llm")
    message = str(caught.value)
    assert f"async: table {pg_schema}.{table} (not created yet)" in message
    assert f"sync: table public.{table} (not created yet)" in message
    # Refused before either side created anything; the sync side stays refused.
    assert schemas_holding(postgres_url, table) == []
    with pytest.raises(ConfigurationError, match="different tables"):
        cache.update("p", "llm", [Generation(text="x")])
    await async_engine.dispose()
    sync_engine.dispose()


@pytest.fixture(params=["postgres", "mysql"])
def other_database(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(URL of the test database, URL of a database created for this test)."""
    url = make_url(sync_url(str(request.getfixturevalue(f"{request.param}_url"))))
    name = f"other_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield (
            url.render_as_string(hide_password=False),
            url.set(database=name).render_as_string(hide_password=False),
        )
    finally:
        force = " WITH (FORCE)" if request.param == "postgres" else ""
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE {name}{force}"))
        admin.dispose()


@pytest.mark.parametrize("async_first", [False, True], ids=["sync first", "async first"])
async def test_pair_on_another_database_is_refused(
    other_database: tuple[str, str], async_first: bool
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    here, there = other_database
    async_driver = "postgresql+asyncpg" if here.startswith("postgresql") else "mysql+asyncmy"
    async_engine = create_async_engine(make_url(there).set(drivername=async_driver))
    sync_engine = create_engine(here)
    table = unique_table()
    cache = SQLAlchemyCache(async_engine, sync_engine=sync_engine, table_name=table)
    call = cache.alookup("p", "llm") if async_first else asyncio.to_thread(cache.lookup, "p", "llm")
    with pytest.raises(ConfigurationError, match="different tables") as caught:
        await call
    assert str(make_url(there).database) in str(caught.value)
    with pytest.raises(ConfigurationError, match="different tables"):
        await cache.aupdate("p", "llm", [Generation(text="x")])
    await async_engine.dispose()
    sync_engine.dispose()


async def test_pair_on_another_sqlite_file_is_refused(tmp_path: Path) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    async_engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}")
    sync_engine = create_engine(f"sqlite:///{tmp_path / 'b.db'}")
    cache = SQLAlchemyCache(async_engine, sync_engine=sync_engine)
    with pytest.raises(ConfigurationError) as caught:
        await cache.alookup("p", "llm")
    assert "a.db" in str(caught.value)
    assert "b.db" in str(caught.value)
    await async_engine.dispose()
    sync_engine.dispose()


async def test_pair_on_one_sqlite_file_by_two_paths_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    monkeypatch.chdir(tmp_path)
    async_engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    sync_engine = create_engine("sqlite:///c.db")  # relative: the same file
    cache = SQLAlchemyCache(async_engine, sync_engine=sync_engine)
    await assert_one_cache(cache, async_first=True)
    await async_engine.dispose()
    sync_engine.dispose()


# --- SQLite engines a community user may have ----------------------------------------


async def test_sqlite_creator_on_a_file_works(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "created.db"
    engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(path))
    cache = SQLAlchemyCache(engine)
    await assert_one_cache(cache, async_first=False)
    with sqlite3.connect(path) as connection:  # the creator's file holds the entries
        count = connection.execute("SELECT COUNT(*) FROM langchain_llm_cache").fetchone()
    assert count == (2,)
    await cache.aclose()
    engine.dispose()


def test_sqlite_creator_in_memory_is_refused_at_first_use() -> None:
    import sqlite3

    engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(":memory:"))
    cache = SQLAlchemyCache(engine)
    with pytest.raises(ConfigurationError, match="in-memory"):
        cache.lookup("p", "llm")
    engine.dispose()


def test_a_file_named_mode_memory_is_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cache = SQLiteCache("mode=memory.db")
    cache.update("p", "llm", [Generation(text="x")])
    assert (tmp_path / "mode=memory.db").exists()
    assert SQLiteCache("mode=memory.db").lookup("p", "llm") == [Generation(text="x")]
    cache.close()


# --- what the derived engine carries, and what it refuses ----------------------------


def test_pool_and_execution_settings_are_carried(tmp_path: Path) -> None:
    from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool

    engine = create_engine(
        f"sqlite:///{tmp_path / 'c.db'}",
        pool_size=3,
        max_overflow=7,
        pool_timeout=4,
        pool_recycle=600,
        pool_pre_ping=True,
        execution_options={"logging_token": "app"},
    )
    cache = SQLAlchemyCache(engine)
    pool = cache.async_engine.pool
    assert isinstance(pool, AsyncAdaptedQueuePool)
    assert (pool.size(), pool.timeout()) == (3, 4)
    assert cache.async_engine.get_execution_options()["logging_token"] == "app"
    cache.close()
    unpooled = create_engine(f"sqlite:///{tmp_path / 'c.db'}", poolclass=NullPool)
    cache = SQLAlchemyCache(unpooled)
    assert isinstance(cache.async_engine.pool, NullPool)
    cache.close()


def test_what_cannot_be_carried_is_named(tmp_path: Path) -> None:
    from sqlalchemy import event
    from sqlalchemy.pool import StaticPool

    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}", poolclass=StaticPool)
    with pytest.raises(ConfigurationError, match=r"poolclass=StaticPool cannot be carried"):
        SQLAlchemyCache(engine)
    hooked = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    event.listen(hooked, "do_connect", lambda *args: None)
    with pytest.raises(ConfigurationError, match="do_connect event cannot be carried") as caught:
        SQLAlchemyCache(hooked)
    assert "create_async_engine('sqlite+aiosqlite://..." in str(caught.value)


def test_untranslatable_connect_args_are_named(postgres_url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(
        make_url(postgres_url).set(drivername="postgresql+asyncpg"),
        connect_args={"record_class": dict},
    )
    with pytest.raises(ConfigurationError) as caught:
        SQLAlchemyCache(engine)
    message = str(caught.value)
    assert "connect_args['record_class'] cannot be carried to psycopg" in message
    assert "SQLAlchemyCache(async_engine, sync_engine=create_engine('postgresql+psycopg://" in (
        message
    )


# --- other sync drivers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("driver", "server"),
    [
        ("postgresql+psycopg2", "postgres_url"),
        ("postgresql+pg8000", "postgres_url"),
        ("mysql+mysqlconnector", "mysql_url"),
    ],
)
async def test_other_sync_drivers_get_an_async_twin(
    driver: str, server: str, request: pytest.FixtureRequest
) -> None:
    url = make_url(str(request.getfixturevalue(server))).set(drivername=driver)
    engine = create_engine(url)
    table = unique_table()
    cache = SQLAlchemyCache(engine, table_name=table)
    await assert_one_cache(cache, async_first=False)
    drop_table(cache, table)
    await cache.aclose()
    engine.dispose()


def test_a_missing_async_driver_names_its_package(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(make_url(postgres_url).set(drivername="postgresql+psycopg2"))
    monkeypatch.setitem(__import__("sys").modules, "asyncpg", None)  # as if not installed
    with pytest.raises(ConfigurationError) as caught:
        SQLAlchemyCache(engine)
    assert "pip install 'asyncpg'" in str(caught.value)
    engine.dispose()


# --- event loops that are not asyncio ------------------------------------------------


def test_trio_gets_a_clear_error_and_aclose_masks_nothing(tmp_path: Path) -> None:
    trio = pytest.importorskip("trio")
    cache = SQLiteCache(tmp_path / "c.db")
    cache.update("p", "llm", [Generation(text="x")])

    async def first_call() -> None:
        with pytest.raises(ConfigurationError, match="need an asyncio event loop"):
            await cache.alookup("p", "llm")
        with pytest.raises(ConfigurationError, match=r"trio\.to_thread\.run_sync"):
            await cache.aupdate("p", "llm", [Generation(text="y")])

    trio.run(first_call)

    class Boom(Exception):
        pass

    async def failing_block() -> None:
        async with cache:
            raise Boom

    with pytest.raises(Boom):
        trio.run(failing_block)
    cache = SQLiteCache(tmp_path / "c.db")  # that one is closed now

    async def clean_block() -> None:
        async with cache:
            pass

    trio.run(clean_block)  # aclose() outside asyncio closes without raising
    with SQLiteCache(tmp_path / "c.db") as reader:
        assert reader.lookup("p", "llm") == [Generation(text="x")]  # nothing was written


def test_anyio_on_trio_gets_the_same_clear_error(tmp_path: Path) -> None:
    anyio = pytest.importorskip("anyio")
    pytest.importorskip("trio")
    cache = SQLiteCache(tmp_path / "c.db")

    async def main() -> None:
        with pytest.raises(ConfigurationError, match=r"anyio\.to_thread\.run_sync"):
            await cache.aclear()
        # The way the message points to: the sync method in a worker thread.
        await anyio.to_thread.run_sync(cache.update, "p", "llm", [Generation(text="x")])
        assert await anyio.to_thread.run_sync(cache.lookup, "p", "llm") == [Generation(text="x")]

    anyio.run(main, backend="trio")
    cache.close()


async def test_mysql_engine_arguments_are_carried(mysql_url: str) -> None:
    # PyMySQL's arguments go unchanged to aiomysql, its async port: both sessions get
    # the same init_command.
    engine = create_engine(
        make_url(mysql_url).set(drivername="mysql+pymysql"),
        connect_args={"init_command": "SET SESSION sql_mode='ANSI_QUOTES'", "connect_timeout": 5},
    )
    table = unique_table()
    cache = SQLAlchemyCache(engine, table_name=table)
    assert cache.async_engine.url.drivername == "mysql+aiomysql"
    await assert_one_cache(cache, async_first=True)
    async with cache.async_engine.connect() as connection:
        mode = (await connection.exec_driver_sql("SELECT @@SESSION.sql_mode")).scalar()
    assert mode == "ANSI_QUOTES"
    drop_table(cache, table)
    await cache.aclose()
    engine.dispose()


async def test_sync_side_serves_while_the_async_side_is_unreachable(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from langchain_sqlalchemy_cache import CacheError

    url = make_url(postgres_url)
    # Nothing listens on port 1: the async side is refused at once.
    async_engine = create_async_engine(url.set(drivername="postgresql+asyncpg", port=1))
    sync_engine = create_engine(url.set(drivername="postgresql+psycopg"))
    table = unique_table()
    cache = SQLAlchemyCache(
        async_engine,
        sync_engine=sync_engine,
        table_name=table,
        on_error="raise",
        local_max_bytes=0,  # each side's own database path
    )
    cache.update("p", "llm", [Generation(text="x")])
    assert cache.lookup("p", "llm") == [Generation(text="x")]
    assert "could not check the async engine's table yet" in caplog.text
    with pytest.raises(CacheError):
        await cache.alookup("p", "llm")
    drop_table(cache, table)
    await async_engine.dispose()
    sync_engine.dispose()


async def test_async_side_serves_while_the_sync_side_is_unreachable(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from langchain_sqlalchemy_cache import CacheError

    url = make_url(postgres_url)
    async_engine = create_async_engine(url.set(drivername="postgresql+asyncpg"))
    sync_engine = create_engine(url.set(drivername="postgresql+psycopg", port=1))
    table = unique_table()
    cache = SQLAlchemyCache(
        async_engine,
        sync_engine=sync_engine,
        table_name=table,
        on_error="raise",
        local_max_bytes=0,  # each side's own database path
    )
    await cache.aupdate("p", "llm", [Generation(text="x")])
    assert await cache.alookup("p", "llm") == [Generation(text="x")]
    assert "could not check the sync engine's table yet" in caplog.text
    with pytest.raises(CacheError):
        await asyncio.to_thread(cache.lookup, "p", "llm")
    async with async_engine.begin() as connection:
        await connection.execute(text(f"DROP TABLE {table}"))
    await async_engine.dispose()
    sync_engine.dispose()
