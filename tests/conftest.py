"""Fixtures: real SQLite files and a real PostgreSQL server, one fresh table per test."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from langchain_sqlalchemy_cache import SQLAlchemyCache

from .helpers import mysql_url_from_env, postgres_url_from_env, remember
from .pgproxy import PgProxy

BACKENDS = ("sqlite", "postgresql", "mysql")

# Hypothesis budgets, for tests that do not set their own. "ci" (the default) keeps the
# whole suite within a few minutes on two cores; "soak" (`nox -s soak`, or
# HYPOTHESIS_PROFILE=soak) runs the property tests far deeper, for nightly runs.
# deadline=None: examples talk to real databases on a shared machine, whose latency is
# not what these tests are about.
settings.register_profile("ci", max_examples=15, stateful_step_count=20, deadline=None)
settings.register_profile("soak", max_examples=300, stateful_step_count=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _reachable_server(name: str, url: str, sync_url: str, required_by: str) -> str:
    """Return ``url`` if the server answers; else skip, or fail when ``required_by`` is set."""
    engine = create_engine(sync_url)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        reason = f"{name} at {url} is unreachable: {exc}"
        if os.environ.get(required_by) == "1":
            pytest.fail(f"{reason} ({required_by}=1)")
        pytest.skip(reason)
    finally:
        engine.dispose()
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL; skips (or fails under REQUIRE_POSTGRES=1) if unreachable."""
    url = postgres_url_from_env()
    sync_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    return _reachable_server("PostgreSQL", url, sync_url, "REQUIRE_POSTGRES")


@pytest.fixture(scope="session")
def mysql_url() -> str:
    """The MySQL/MariaDB test server's URL (TEST_MYSQL_URL); skips unless REQUIRE_MYSQL=1."""
    if os.environ.get("NO_MYSQL") == "1":
        pytest.fail(
            "this run leaves MySQL/MariaDB out (NO_MYSQL=1, -m 'not mysql'), yet a test not "
            "marked mysql reached for it: request mysql_url or name a parameter 'mysql', so "
            "that pytest_collection_modifyitems marks it"
        )
    url = mysql_url_from_env()
    sync_url = url.replace("mysql://", "mysql+pymysql://", 1).replace(
        "mariadb://", "mariadb+pymysql://", 1
    )
    return _reachable_server("MySQL/MariaDB", url, sync_url, "REQUIRE_MYSQL")


def unique_table() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def drop_table(cache: SQLAlchemyCache, table_name: str) -> None:
    with cache.sync_engine.connect() as connection:
        quoted = connection.dialect.identifier_preparer.quote(table_name)
        connection.execute(text(f"DROP TABLE IF EXISTS {quoted}"))


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL for each backend: a fresh SQLite file, or the PostgreSQL or
    MySQL/MariaDB server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cache.db'}"
    server = {"postgresql": "postgres_url", "mysql": "mysql_url"}[request.param]
    return str(request.getfixturevalue(server))


CacheFactory = Callable[..., SQLAlchemyCache]


@pytest.fixture
def make_cache(backend_url: str) -> Iterator[CacheFactory]:
    """Build caches on this test's backend, each on a table of its own, dropped afterwards."""
    made: list[tuple[SQLAlchemyCache, str]] = []

    def factory(**options: Any) -> SQLAlchemyCache:
        table_name = str(options.pop("table_name", unique_table()))
        cache = SQLAlchemyCache(backend_url, table_name=table_name, **options)
        made.append((cache, table_name))
        # The test knows its table (helpers.table_of) without reading the cache's insides.
        return remember(cache, table_name, options.get("schema"), options.get("namespace", ""))

    yield factory
    for cache, table_name in made:
        drop_table(cache, table_name)
        cache.close()


@pytest.fixture
def cache(make_cache: CacheFactory) -> SQLAlchemyCache:
    return make_cache()


@pytest.fixture
async def acache(make_cache: CacheFactory) -> AsyncIterator[SQLAlchemyCache]:
    """A cache whose async connections are closed on the test's own event loop."""
    cache = make_cache()
    yield cache
    await cache.aclose()


def proxied_engines(
    postgres_url: str, proxy: PgProxy, **async_options: Any
) -> tuple[AsyncEngine, Engine]:
    """An asyncpg and a psycopg engine that reach PostgreSQL through ``proxy``, TLS off."""
    url = make_url(postgres_url).set(host="127.0.0.1", port=proxy.port)
    async_engine = create_async_engine(
        url.set(drivername="postgresql+asyncpg"), connect_args={"ssl": False}, **async_options
    )
    sync_engine = create_engine(
        url.set(drivername="postgresql+psycopg"), connect_args={"sslmode": "disable"}
    )
    return async_engine, sync_engine


@pytest.fixture
def proxied_cache(postgres_url: str) -> Iterator[tuple[SQLAlchemyCache, PgProxy]]:
    """A cache whose both engines reach PostgreSQL through a proxy the test controls."""
    with PgProxy(postgres_url) as proxy:
        async_engine, sync_engine = proxied_engines(postgres_url, proxy)
        table = unique_table()
        # No circuit breaker: these tests check that the pool itself recovers at once.
        # The tier off: they watch what reaches the server.
        cache = SQLAlchemyCache(
            async_engine,
            sync_engine=sync_engine,
            table_name=table,
            breaker_threshold=None,
            local_max_bytes=0,
        )
        yield cache, proxy
        proxy.accepting = True
        proxy.delay = 0
        proxy.release_replies()
        drop_table(cache, table)
        sync_engine.dispose()


def start_threads(target: Callable[[int], object], count: int) -> Callable[[], list[BaseException]]:
    """Start ``target(0)`` .. ``target(count - 1)`` in threads; return a join that lists
    what they raised, and a TimeoutError for each still running after 120 s (call it via
    ``asyncio.to_thread`` from async code)."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()

    def join() -> list[BaseException]:
        for thread in threads:
            thread.join(120)
        # A thread still running is a hang, not a success.
        hung = [
            TimeoutError(f"{thread.name} still running") for thread in threads if thread.is_alive()
        ]
        return errors + hung

    return join


def _needs_mysql(item: pytest.Item) -> bool:
    if "mysql_url" in getattr(item, "fixturenames", ()):
        return True
    callspec = getattr(item, "callspec", None)
    values = callspec.params.values() if callspec is not None else ()
    return any(isinstance(value, str) and _names_mysql(value) for value in values)


def _names_mysql(value: str) -> bool:
    """``"mysql"``, ``"mariadb"``, a driver name such as ``"mysql+asyncmy"``, a MySQL URL,
    or the ``"mysql_url"`` fixture's name (tests that look it up by name)."""
    backend = value.split("+", 1)[0].split(":", 1)[0]
    return backend in ("mysql", "mariadb") or value == "mysql_url"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "mysql: needs the MySQL/MariaDB server (set by conftest; -m 'not mysql')"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs MySQL/MariaDB: it requests ``mysql_url``, or one of its
    parameters is ``"mysql"`` / ``"mariadb"`` (``backend_url`` and the like)."""
    for item in items:
        if _needs_mysql(item):
            item.add_marker(pytest.mark.mysql)
