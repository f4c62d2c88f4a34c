"""Turning what the caller passed into a paired (AsyncEngine, Engine) on one database.

The async core and the sync facade must see the same data, so both engines point at
the same database, and an engine the caller did not give is derived from the other
one's URL by swapping the driver for its twin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ._carry import SAME_FAMILY, UncarriableError, carry, needs_family
from ._deadline import limit_created_engine, sync_engine_options
from ._engine_internals import UnreadableEngineError, read_settings
from ._errors import ConfigurationError
from ._failover import check_hosts, wrong_server
from ._retry import MYSQL_PACKET_TOO_LARGE, mysql_error_code
from ._secrets import Redactor, raw_url_secrets, safe_url
from ._statements import check_dialect

# (backend, async driver) <-> (backend, sync driver). The first driver listed for a
# backend is the one a bare URL such as ``postgresql://`` gets.
_MYSQL_ASYNC = ("asyncmy", "aiomysql")
_MYSQL_SYNC = ("pymysql", "mysqldb", "mysqlconnector")
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
    "mysqlconnector": "asyncmy",
}
# What pip installs each driver as, and the extra of this package that includes it.
_PACKAGES = {
    "asyncpg": ("asyncpg", "postgres"),
    "psycopg": ("psycopg[binary]", "postgres"),
    "psycopg_async": ("psycopg[binary]", "postgres"),
    "psycopg2": ("psycopg2-binary", None),
    "pg8000": ("pg8000", None),
    "aiosqlite": ("aiosqlite", None),
    "asyncmy": ("asyncmy", "mysql"),
    "aiomysql": ("aiomysql", "mysql"),
    "pymysql": ("PyMySQL", "mysql"),
    "mysqldb": ("mysqlclient", None),
    "mysqlconnector": ("mysql-connector-python", None),
}

_E = TypeVar("_E", AsyncEngine, Engine)

SQLITE_BUSY_TIMEOUT_MS = 30_000

IN_MEMORY_HELP = (
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


def _parse(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: e.g. a port that is no number
        raw = url if isinstance(url, str) else url.render_as_string(hide_password=False)
        shown = Redactor(raw_url_secrets(raw))(raw)
        msg = (
            f"cannot parse the database URL {shown!r}: write it as "
            "dialect[+driver]://user@host[:port]/database, e.g. postgresql://app@db-host/app "
            "(several hosts: postgresql://app@/app?host=db1:5432&host=db2:5432)"
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
    # The URL's query (mode=memory, uri=true) is parsed out of the database: a file
    # named "mode=memory.db" is a file.
    if database.startswith("file:"):
        database = database[len("file:") :]
    return database in ("", ":memory:") or url.query.get("mode") == "memory"


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


def missing_driver(drivername: str, exc: BaseException) -> ConfigurationError:
    """The error for a driver that cannot be imported, naming the package to install."""
    driver = drivername.partition("+")[2]
    package, extra = _PACKAGES.get(driver, (driver, None))
    also = f" (or pip install 'langchain-sqlalchemy-cache[{extra}]')" if extra else ""
    msg = (
        f"the {driver!r} driver for {drivername!r} is not installed: "
        f"pip install '{package}'{also} ({type(exc).__name__}: {exc})"
    )
    return ConfigurationError(msg)


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
        raise missing_driver(url.drivername, exc) from exc
    sync_side = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if url.get_backend_name() == "sqlite":
        event.listen(sync_side, "connect", _sqlite_pragmas)
    elif url.get_backend_name() in ("mysql", "mariadb"):
        event.listen(sync_side, "handle_error", _mysql_closed_connection)
    elif url.get_backend_name() == "postgresql":
        event.listen(sync_side, "handle_error", wrong_server)
    return engine


def _autocommit_async(engine: AsyncEngine) -> AsyncEngine:
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def _autocommit_sync(engine: Engine) -> Engine:
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def _pair_needed(engine: Engine, *, to_async: bool, problem: str) -> ConfigurationError:
    """Ask for an explicit pair when the twin of ``engine`` cannot be derived."""
    backend = engine.url.get_backend_name()
    shown = safe_url(engine.url)
    if to_async:
        twin = f"{backend}+{_ASYNC_DRIVERS.get(backend, ('<async driver>',))[0]}"
        example = (
            f"SQLAlchemyCache(create_async_engine('{twin}://...', <the same settings>), "
            "sync_engine=engine)"
        )
    else:
        twin = f"{backend}+{_SYNC_DRIVERS.get(backend, ('<sync driver>',))[0]}"
        example = (
            f"SQLAlchemyCache(async_engine, sync_engine=create_engine('{twin}://...', "
            "<the same settings>))"
        )
    kind = "async" if to_async else "sync"
    msg = (
        f"cannot derive the {kind} engine from your engine on {shown}: {problem}; "
        f"configure the {kind} engine alike yourself and pass the pair: {example}"
    )
    return ConfigurationError(msg)


def _derive(
    engine: Engine, *, to_async: bool, timeout: float | None = None
) -> AsyncEngine | Engine:
    """The engine of the other kind, carrying what the caller configured on ``engine``."""
    url = engine.url
    backend, source = url.get_backend_name(), engine.dialect.driver
    try:
        settings = read_settings(engine)
    except UnreadableEngineError as exc:
        problem = f"its configuration cannot be read from this SQLAlchemy release ({exc})"
        raise _pair_needed(engine, to_async=to_async, problem=problem) from exc
    twins = _ASYNC_TWIN if to_async else _SYNC_TWIN
    if needs_family(settings, url) or settings.creator is not None:
        target = SAME_FAMILY.get(source)
    else:
        target = twins.get(source)
    if target is None:
        raise _unsupported(url)
    try:
        carried = carry(engine, settings, source, target, to_async=to_async)
    except UncarriableError as exc:
        problem = f"its {exc.setting} cannot be carried to {target} ({exc.reason})"
        raise _pair_needed(engine, to_async=to_async, problem=problem) from exc
    twin_url = url.set(drivername=f"{backend}+{target}")
    if backend in ("mysql", "mariadb") and "charset" not in url.query:
        twin_url = twin_url.update_query_dict({"charset": "utf8mb4"})
    options: dict[str, Any] = {"execution_options": carried.execution_options}
    options.update(carried.options)
    if to_async:
        return _create(twin_url, create_async_engine, **options)
    return _create_sync(twin_url, timeout, **options)


def _create_sync(url: URL, timeout: float | None, **options: Any) -> Engine:
    """A sync engine of the cache's own, with driver limits for ``timeout`` (seconds).

    What the caller configured (carried ``options``) wins over the limits.
    """
    limits = sync_engine_options(url, timeout)
    connect = {**limits.pop("connect_args", {}), **options.pop("connect_args", {})}
    if connect:
        options["connect_args"] = connect
    engine = _create(url, create_engine, **{**limits, **options})
    limit_created_engine(engine, timeout)
    return engine


def _has_creator(engine: AsyncEngine | Engine) -> bool:
    sync = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    try:
        settings = read_settings(sync)
    except UnreadableEngineError:
        return False
    return settings.creator is not None or settings.async_creator is not None


def resolve_engines(
    engine: str | URL | AsyncEngine | Engine,
    sync_engine: Engine | None,
    timeout: float | None = None,
) -> EnginePair:
    """Build the engine pair for what the caller passed, validating it.

    Whether both engines reach the same table is checked at first use (``_identity``):
    URLs cannot tell (two host names of one server, a creator, a search_path).

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

    check_dialect(given_url.get_backend_name())
    # An engine's creator picks the file itself: the identity check sees which.
    creator = not isinstance(engine, (str, URL)) and _has_creator(engine)
    if _is_in_memory_sqlite(given_url) and not creator:
        raise ConfigurationError(f"{safe_url(given_url)}: {IN_MEMORY_HELP}")
    if sync_engine is not None:
        check_dialect(sync_engine.dialect.name)

    if isinstance(engine, AsyncEngine):
        if sync_engine is not None:
            # An explicit pair: any drivers the caller chose will do.
            pair = EnginePair(_autocommit_async(engine), _autocommit_sync(sync_engine))
            check_hosts(pair.async_engine.url, pair.sync_engine.url, explicit=True)
            return pair
        derived_sync = _derive(engine.sync_engine, to_async=False, timeout=timeout)
        assert isinstance(derived_sync, Engine)
        check_hosts(engine.url, derived_sync.url)
        return EnginePair(_autocommit_async(engine), derived_sync, [derived_sync])
    if isinstance(engine, Engine):
        derived_async = _derive(engine, to_async=True)
        assert isinstance(derived_async, AsyncEngine)
        check_hosts(derived_async.url, engine.url)
        return EnginePair(derived_async, _autocommit_sync(engine), [derived_async])

    async_url, sync_url = _twin_urls(given_url)
    check_hosts(async_url, sync_url)
    async_engine = _create(async_url, create_async_engine)
    sync = _create_sync(sync_url, timeout)
    return EnginePair(async_engine, sync, [async_engine, sync])
