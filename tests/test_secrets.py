"""A sentinel password never shows: not in repr, exceptions (causes included), log
records at DEBUG, nor the command line's output, whatever fails and wherever the
password was given (user info, ``?password=``, ``connect_args``)."""

from __future__ import annotations

import logging
import subprocess
import sys
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import pytest
from langchain_core.outputs import Generation
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from langchain_sqlalchemy_cache import CacheError, ConfigurationError, SQLAlchemyCache

from .conftest import unique_table

pytestmark = pytest.mark.timeout(180)

# A slash and a space: what naive URL masking lets through.
SENTINEL = "S3nt/ inel-7q"
MARK = "S3nt"  # in every spelling of it: plain, URL-quoted, repr'd
VALUE = [Generation(text="answer")]
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Seen:
    """Everything the cache showed during a test."""

    texts: list[str]

    def add_exception(self, exc: BaseException) -> None:
        self.texts.append("".join(traceback.format_exception(exc)))  # causes included
        self.texts.append(repr(exc))

    def leaks(self) -> list[str]:
        return [text for text in self.texts if MARK in text]


@pytest.fixture
def seen(caplog: pytest.LogCaptureFixture) -> Iterator[Seen]:
    found = Seen([])
    caplog.set_level(logging.DEBUG)  # the library's and SQLAlchemy's, every level
    yield found
    formatter = logging.Formatter("%(name)s %(message)s")
    found.texts.extend(formatter.format(record) for record in caplog.records)
    assert found.leaks() == []


def _exercise(cache: SQLAlchemyCache, seen: Seen) -> None:
    """Every kind of call, under the cache's own error policy; keep what it shows."""
    seen.texts.append(repr(cache))
    seen.texts.append(str(cache))
    for call in (
        lambda: cache.lookup("p", "m"),
        lambda: cache.update("p", "m", VALUE),
        lambda: cache.clear(),
        cache.table_stats,
    ):
        try:
            call()
        except Exception as exc:
            seen.add_exception(exc)


async def _aexercise(cache: SQLAlchemyCache, seen: Seen) -> None:
    for call in (
        lambda: cache.alookup("p", "m"),
        lambda: cache.aupdate("p", "m", VALUE),
        cache.astats,
    ):
        try:
            await call()
        except Exception as exc:
            seen.add_exception(exc)


def _cli(seen: Seen, *args: str) -> int:
    done = subprocess.run(
        [sys.executable, "-m", "langchain_sqlalchemy_cache", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    seen.texts.extend([done.stdout, done.stderr])
    return done.returncode


def _with_password(url: str, *, where: str, user: str | None = None) -> str:
    """``url`` with SENTINEL as its password, in user info or as ``?password=``."""
    scheme, rest = url.split("://", 1)
    host = rest.split("@", 1)[-1]
    name = user or rest.split("@", 1)[0]
    if where == "userinfo":
        return f"{scheme}://{name}:{quote(SENTINEL, safe='')}@{host}"
    return f"{scheme}://{name}@{host}?password={quote(SENTINEL, safe='')}"


def _dead(url: str) -> str:
    """The same URL on a port nobody listens on."""
    return url.replace(":5432/", ":1/").replace(":3306/", ":1/")


@pytest.mark.parametrize("where", ["userinfo", "query"])
@pytest.mark.parametrize("on_error", ["miss", "raise"])
async def test_unreachable_server(
    postgres_url: str, mysql_url: str, seen: Seen, where: str, on_error: Any
) -> None:
    for url in (postgres_url, mysql_url):
        dead = _dead(_with_password(url, where=where))
        cache = SQLAlchemyCache(dead, on_error=on_error)
        _exercise(cache, seen)
        await _aexercise(cache, seen)
        await cache.aclose()
        if on_error == "miss":  # the command line has one policy: once is enough
            assert _cli(seen, "stats", dead) == 1
    assert len(seen.texts) > 10


@pytest.mark.parametrize("where", ["userinfo", "query"])
async def test_missing_table_without_create_table(
    postgres_url: str, seen: Seen, where: str
) -> None:
    url = _with_password(postgres_url, where=where)  # trust auth: any password is let in
    on_error: Literal["miss", "raise"]
    for on_error in ("miss", "raise"):
        cache = SQLAlchemyCache(
            url, table_name=unique_table(), create_table=False, on_error=on_error
        )
        _exercise(cache, seen)
        await _aexercise(cache, seen)
        await cache.aclose()
    assert any("does not exist" in text for text in seen.texts)
    assert _cli(seen, "stats", url, "--table", unique_table()) == 1
    assert _cli(seen, "migrate", url, "--from-table", unique_table()) == 1


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{SENTINEL}@db:notaport/x",  # raw slash and space, unparsable
        f"postgresql//app:{SENTINEL}@db/x",
        f"mysql://app:{SENTINEL}@db:5432:1/x",
        f"postgresql://app@db:notaport/x?password={SENTINEL}",
    ],
)
def test_unparsable_url(seen: Seen, url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        SQLAlchemyCache(url)
    seen.add_exception(raised.value)
    assert "cannot parse the database URL" in str(raised.value)
    assert _cli(seen, "purge", url, "--ttl", "1d") == 1


@pytest.fixture
def mariadb_user(mysql_url: str) -> Iterator[str]:
    """A MariaDB account whose password is SENTINEL; its name."""
    name = f"u{uuid.uuid4().hex[:10]}"
    admin = create_engine(
        mysql_url.replace("mysql://", "mysql+pymysql://", 1), isolation_level="AUTOCOMMIT"
    )
    hosts = ("%", "localhost", "127.0.0.1")
    with admin.connect() as connection:
        for host in hosts:
            connection.execute(
                text("CREATE USER :name@:host IDENTIFIED BY :pw"),
                {"name": name, "host": host, "pw": SENTINEL},
            )
            connection.execute(text(f"GRANT ALL ON test.* TO '{name}'@'{host}'"))
    yield name
    with admin.connect() as connection:
        for host in hosts:
            connection.execute(text(f"DROP USER IF EXISTS '{name}'@'{host}'"))
    admin.dispose()


@pytest.mark.parametrize("where", ["userinfo", "query"])
async def test_mariadb_with_the_password_and_a_missing_table(
    mysql_url: str, mariadb_user: str, seen: Seen, where: str
) -> None:
    url = _with_password(mysql_url, where=where, user=mariadb_user)
    table = unique_table()
    cache = SQLAlchemyCache(url, table_name=table, create_table=False, on_error="raise")
    _exercise(cache, seen)
    await _aexercise(cache, seen)
    await cache.aclose()
    assert any("does not exist" in text for text in seen.texts)
    assert _cli(seen, "stats", url, "--table", table) == 1
    working = SQLAlchemyCache(url, table_name=table)  # the password works
    try:
        await working.aupdate("p", "m", VALUE)
        assert working.lookup("p", "m") == VALUE
        seen.texts.append(repr(working))
    finally:
        with working.sync_engine.connect() as connection:
            connection.execute(text(f"DROP TABLE `{table}`"))
        await working.aclose()


async def test_authentication_failure(mysql_url: str, mariadb_user: str, seen: Seen) -> None:
    # The sentinel is the wrong password of another account here.
    url = _with_password(mysql_url, where="userinfo", user=mariadb_user + "x")
    on_error: Literal["miss", "raise"]
    for on_error in ("miss", "raise"):
        cache = SQLAlchemyCache(url, on_error=on_error)
        _exercise(cache, seen)
        await _aexercise(cache, seen)
        await cache.aclose()
    assert any("Access denied" in text for text in seen.texts)
    assert _cli(seen, "stats", url) == 1
    assert any("Access denied" in text for text in seen.texts[-2:])


def _connect_args_engines(url: str) -> tuple[Any, Any]:
    backend, rest = url.split("://", 1)
    drivers = {"postgresql": ("asyncpg", "psycopg"), "mysql": ("asyncmy", "pymysql")}[backend]
    secret = {"password": SENTINEL}
    return (
        create_async_engine(f"{backend}+{drivers[0]}://{rest}", connect_args=secret),
        create_engine(f"{backend}+{drivers[1]}://{rest}", connect_args=secret),
    )


@pytest.mark.parametrize("failure", ["unreachable", "missing table", "wrong password"])
async def test_password_in_connect_args(
    postgres_url: str, mysql_url: str, mariadb_user: str, seen: Seen, failure: str
) -> None:
    urls: dict[str, Callable[[], str]] = {
        "unreachable": lambda: _dead(postgres_url),
        "missing table": lambda: postgres_url,
        "wrong password": lambda: mysql_url.replace("root@", f"{mariadb_user}x@"),
    }
    async_engine, sync_engine = _connect_args_engines(urls[failure]())
    cache = SQLAlchemyCache(
        async_engine, sync_engine=sync_engine, table_name=unique_table(), create_table=False
    )
    for policy in ("miss", "raise"):
        cache._policy.raises = policy == "raise"
        _exercise(cache, seen)
        await _aexercise(cache, seen)
    with pytest.raises(CacheError) as raised:
        cache.table_stats()
    seen.add_exception(raised.value)
    await async_engine.dispose()
    sync_engine.dispose()
