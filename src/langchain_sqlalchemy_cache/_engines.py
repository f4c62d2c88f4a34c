"""Turning what the caller passed into a paired (AsyncEngine, Engine) on one database.

The async core and the sync facade must see the same data, so both engines point at
the same database, and an engine the caller did not give is derived from the other
one's URL by swapping the driver for its twin.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ._deadline import limit_created_engine, sync_engine_options
from ._errors import ConfigurationError
from ._retry import MYSQL_PACKET_TOO_LARGE, mysql_error_code
from ._statements import check_dialect

# (backend, async driver) <-> (backend, sync driver). The first driver listed for a
# backend is the one a bare URL such as ``postgresql://`` gets.
_MYSQL_ASYNC = ("asyncmy", "aiomysql")
_MYSQL_SYNC = ("pymysql", "mysqldb")
_ASYNC_DRIVERS = {
    "postgresql": ("asyncpg", "psycopg_async"),
    "sqlite": ("aiosqlite",),
    "mysql": _MYSQL_ASYNC,
    "mariadb": _MYSQL_ASYNC,
}
_SYNC_DRIVERS = {
    "postgresql": ("psycopg", "psycopg2", "pg8000"),
    "sqlite": ("pysqlite",),
    "mysql": _MYSQL_SYNC,
    "mariadb": _MYSQL_SYNC,
}
_SYNC_TWIN = {
    "asyncpg": "psycopg",
    "psycopg_async": "psycopg",
    "aiosqlite": "pysqlite",
    "asyncmy": "pymysql",
    "aiomysql": "pymysql",
}
_ASYNC_TWIN = {
    "psycopg": "asyncpg",
    "psycopg2": "asyncpg",
    "pg8000": "asyncpg",
    "pysqlite": "aiosqlite",
    "pymysql": "asyncmy",
    "mysqldb": "asyncmy",
}
# The pip extra that installs each backend's drivers.
_EXTRAS = {"postgresql": "postgres", "sqlite": "", "mysql": "mysql", "mariadb": "mysql"}

_E = TypeVar("_E", AsyncEngine, Engine)

SQLITE_BUSY_TIMEOUT_MS = 30_000

_IN_MEMORY_HELP = (
    "an in-memory SQLite database belongs to one connection, so the async core and the "
    "sync facade would each see a different, private cache (and one connection shared "
    "by coroutines loses writes on rollback); use a file, e.g. "
    "SQLiteCache(database_path='.langchain.db') or a temporary file, or "
    "langchain_core.caches.InMemoryCache for a process-local cache"
)


@dataclass
class EnginePair:
    """The two engines the cache runs on, with the ones it must dispose of itself."""

    async_engine: AsyncEngine
    sync_engine: Engine
    owned: list[AsyncEngine | Engine] = field(default_factory=list)

    @property
    def dialect_name(self) -> str:
        """The database's dialect name, e.g. ``"postgresql"``."""
        return self.sync_engine.dialect.name


# What may be a password in a URL that could not be parsed: "user:secret@" up to the
# last "@" before the host, and password=... in the query.
_URL_SECRETS = (
    (re.compile(r"([^/:@\s]*:)[^/\s]*@"), r"\1***@"),
    (re.compile(r"(password=)[^&\s]*", re.IGNORECASE), r"\1***"),
)


def mask_url(text: str) -> str:
    """``text`` with anything that looks like a password in a URL replaced by ``***``."""
    for pattern, replacement in _URL_SECRETS:
        text = pattern.sub(replacement, text)
    return text


def _parse(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: e.g. a port that is no number
        shown = mask_url(url if isinstance(url, str) else url.render_as_string())
        msg = (
            f"cannot parse the database URL {shown!r}: write it as "
            "dialect[+driver]://user@host[:port]/database, e.g. postgresql://app@db-host/app"
        )
        raise ConfigurationError(msg) from exc
    if parsed.get_backend_name() == "postgres":
        # Heroku-style URLs; SQLAlchemy only knows the long name.
        parsed = parsed.set(drivername="postgresql" + parsed.drivername[len("postgres") :])
    return parsed


def _split(url: URL) -> tuple[str, str | None]:
    backend = url.get_backend_name()
    driver = url.drivername.partition("+")[2] or None
    return backend, driver


def _unsupported(url: URL) -> ConfigurationError:
    return ConfigurationError(
        f"cannot pair a driver for {url.drivername!r}: pass a URL with one of "
        + ", ".join(
            f"{backend}+{driver}"
            for backend in _ASYNC_DRIVERS
            for driver in _ASYNC_DRIVERS[backend] + _SYNC_DRIVERS[backend]
        )
        + " (or a bare postgresql://, mysql:// or sqlite:/// URL), or pass both engines: "
        "SQLAlchemyCache(async_engine, sync_engine=engine)"
    )


def _twin_urls(url: URL) -> tuple[URL, URL]:
    """Return (async URL, sync URL) for ``url``, whichever kind it is."""
    backend, driver = _split(url)
    check_dialect(backend)
    if backend not in _ASYNC_DRIVERS:
        raise _unsupported(url)
    if driver is None:
        async_driver, sync_driver = _ASYNC_DRIVERS[backend][0], _SYNC_DRIVERS[backend][0]
    elif driver in _SYNC_TWIN:
        async_driver, sync_driver = driver, _SYNC_TWIN[driver]
    elif driver in _ASYNC_TWIN:
        async_driver, sync_driver = _ASYNC_TWIN[driver], driver
    else:
        raise _unsupported(url)
    if backend in ("mysql", "mariadb") and "charset" not in url.query:
        # utf8mb4: MySQL's "utf8" stops at three bytes and mangles astral characters.
        url = url.update_query_dict({"charset": "utf8mb4"})
    return (
        url.set(drivername=f"{backend}+{async_driver}"),
        url.set(drivername=f"{backend}+{sync_driver}"),
    )


def _is_in_memory_sqlite(url: URL) -> bool:
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    return (
        database in ("", ":memory:")
        or "mode=memory" in database
        or (url.query.get("mode") == "memory")
    )


def _same_database(a: URL, b: URL) -> bool:
    def where(url: URL) -> tuple[Any, ...]:
        return (url.get_backend_name(), url.host, url.port, url.database, url.username)

    return where(a) == where(b)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer; the busy timeout makes a writer wait
    # for the lock instead of failing at once with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _mysql_closed_connection(context: ExceptionContext) -> None:
    # After "packet bigger than max_allowed_packet" the server closes the connection,
    # but SQLAlchemy does not count the error as a disconnect and would pool the dead
    # connection for the next call to trip over.
    if mysql_error_code(context.original_exception) == MYSQL_PACKET_TOO_LARGE:
        context.is_disconnect = True


def _create(url: URL, factory: Callable[..., _E], **options: Any) -> _E:
    # AUTOCOMMIT: every cache statement is a single atomic statement, so the
    # BEGIN/COMMIT round trips around it would buy nothing.
    try:
        # Nothing to reset on return either: no transaction is ever left open. And no
        # ROLLBACK after each statement: drivers such as PyMySQL send one to the server
        # even in autocommit mode, a second round trip per call.
        engine = factory(
            url,
            isolation_level="AUTOCOMMIT",
            pool_reset_on_return=None,
            skip_autocommit_rollback=True,
            **options,
        )
    except (ImportError, NoSuchModuleError) as exc:
        driver = url.drivername.partition("+")[2]
        extra = _EXTRAS.get(url.get_backend_name(), "")
        msg = (
            f"the {driver!r} driver for {url.drivername!r} is not installed: "
            f"pip install 'langchain-sqlalchemy-cache[{extra}]' "
            f"or install {driver} yourself ({exc})"
        )
        raise ConfigurationError(msg) from exc
    sync_side = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if url.get_backend_name() == "sqlite":
        event.listen(sync_side, "connect", _sqlite_pragmas)
    elif url.get_backend_name() in ("mysql", "mariadb"):
        event.listen(sync_side, "handle_error", _mysql_closed_connection)
    return engine


def _autocommit_async(engine: AsyncEngine) -> AsyncEngine:
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def _autocommit_sync(engine: Engine) -> Engine:
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def resolve_engines(
    engine: str | URL | AsyncEngine | Engine,
    sync_engine: Engine | None,
    timeout: float | None = None,
) -> EnginePair:
    """Build the engine pair for what the caller passed, validating it.

    A sync engine the cache creates gets driver limits for ``timeout`` (seconds).
    """
    if sync_engine is not None and not isinstance(sync_engine, Engine):
        msg = (
            f"sync_engine must be a sqlalchemy.Engine on a sync driver, got "
            f"{type(sync_engine).__name__}"
        )
        raise ConfigurationError(msg)

    if isinstance(engine, AsyncEngine):
        given_url = engine.url
    elif isinstance(engine, Engine):
        if sync_engine is not None:
            msg = (
                "engine is a sync Engine and sync_engine is given too: pass the AsyncEngine "
                "first, SQLAlchemyCache(async_engine, sync_engine=engine)"
            )
            raise ConfigurationError(msg)
        given_url = engine.url
    elif isinstance(engine, (str, URL)):
        given_url = _parse(engine)
    else:
        msg = (
            "engine must be a database URL, a sqlalchemy AsyncEngine or a sqlalchemy "
            f"Engine, got {type(engine).__name__}"
        )
        raise ConfigurationError(msg)

    if _is_in_memory_sqlite(given_url):
        raise ConfigurationError(f"{given_url.render_as_string()}: {_IN_MEMORY_HELP}")
    check_dialect(given_url.get_backend_name())
    if sync_engine is not None:
        check_dialect(sync_engine.dialect.name)
        if not _same_database(given_url, sync_engine.url):
            msg = (
                "engine and sync_engine point at different databases "
                f"({given_url.render_as_string()} vs {sync_engine.url.render_as_string()}): "
                "the async and sync calls would see different caches; pass two engines "
                "for the same database, or only one and let the cache derive the other"
            )
            raise ConfigurationError(msg)

    given_sync = engine if isinstance(engine, Engine) else sync_engine
    if isinstance(engine, AsyncEngine) and given_sync is not None:
        # An explicit pair needs no twin table: any drivers the caller chose will do.
        return EnginePair(_autocommit_async(engine), _autocommit_sync(given_sync))

    async_url, sync_url = _twin_urls(given_url)
    owned: list[AsyncEngine | Engine] = []
    if isinstance(engine, AsyncEngine):
        async_engine = _autocommit_async(engine)
    else:
        async_engine = _create(async_url, create_async_engine)
        owned.append(async_engine)
    if given_sync is not None:
        sync = _autocommit_sync(given_sync)
    else:
        sync = _create(sync_url, create_engine, **sync_engine_options(sync_url, timeout))
        limit_created_engine(sync, timeout)
        owned.append(sync)
    return EnginePair(async_engine, sync, owned)
