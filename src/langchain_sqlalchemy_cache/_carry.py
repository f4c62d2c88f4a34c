"""Carrying a caller's engine configuration over to the engine derived from it.

A derived engine must reach the very table the caller's engine reaches, so it gets the
caller's ``connect_args`` (translated where the other driver names them differently),
``creator`` (where the other driver can run it), execution options (a
``schema_translate_map`` included) and pool settings. Where a driver family has both a
sync and an async driver (psycopg, PyMySQL/aiomysql, sqlite3/aiosqlite) the family is
kept, so the arguments carry over unchanged. Whatever cannot be carried is refused,
naming the setting, rather than silently dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import URL, Engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from ._engine_internals import EngineSettings, pool_twin

# Source driver -> the twin of the same family, used when there is something to carry.
SAME_FAMILY = {
    "psycopg": "psycopg_async",
    "psycopg2": "psycopg_async",  # both take libpq's connection keywords
    "pg8000": "asyncpg",
    "pysqlite": "aiosqlite",
    "pymysql": "aiomysql",  # aiomysql is PyMySQL's async port: same arguments
    "mysqldb": "aiomysql",
    "mysqlconnector": "aiomysql",
    "asyncpg": "psycopg",
    "psycopg_async": "psycopg",
    "aiosqlite": "pysqlite",
    "aiomysql": "pymysql",
    "asyncmy": "pymysql",
}


class UncarriableError(Exception):
    """A setting of the caller's engine has no equivalent on the derived engine."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"{setting}: {reason}")
        self.setting = setting
        self.reason = reason


Translator = Callable[[Mapping[str, Any]], dict[str, Any]]


def _same(args: Mapping[str, Any]) -> dict[str, Any]:
    return dict(args)


def _refusing(*keys: str) -> Translator:
    def translate(args: Mapping[str, Any]) -> dict[str, Any]:
        for key in keys:
            if key in args:
                raise UncarriableError(f"connect_args[{key!r}]", "no async equivalent")
        return dict(args)

    return translate


def _libpq_value(value: object) -> str:
    # libpq splits "options" on spaces; a backslash keeps one inside a value.
    return str(value).replace("\\", "\\\\").replace(" ", "\\ ")


# asyncpg arguments that only tune its own statement cache: psycopg has its own.
_ASYNCPG_CACHE_ONLY = {
    "prepared_statement_cache_size",
    "prepared_statement_name_func",
    "max_cached_statement_lifetime",
    "max_cacheable_statement_size",
}
_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _asyncpg_to_libpq(args: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    options: list[str] = []
    for key, value in args.items():
        if key == "server_settings":
            options += [f"-c {name}={_libpq_value(v)}" for name, v in dict(value).items()]
        elif key == "ssl":
            if value is False or value is True:
                out["sslmode"] = "require" if value else "disable"
            elif value in _SSL_MODES:
                out["sslmode"] = value
            else:
                raise UncarriableError(
                    "connect_args['ssl']", "an SSL context has no libpq keyword equivalent"
                )
        elif key == "timeout":
            out["connect_timeout"] = max(1, math.ceil(float(value)))
        elif key == "command_timeout":
            # Client-side in asyncpg; the server-side limit bounds each statement alike.
            options.append(f"-c statement_timeout={max(1, int(float(value) * 1000))}")
        elif key == "statement_cache_size":
            if not value:  # PgBouncer in transaction mode: no prepared statements
                out["prepare_threshold"] = None
        elif key not in _ASYNCPG_CACHE_ONLY:
            raise UncarriableError(f"connect_args[{key!r}]", "no psycopg equivalent")
    if options:
        out["options"] = " ".join(options)
    return out


def _pg8000_to_asyncpg(args: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    settings: dict[str, str] = {}
    for key, value in args.items():
        if key == "application_name":
            settings["application_name"] = str(value)
        elif key == "startup_params":
            settings.update({str(k): str(v) for k, v in dict(value).items()})
        elif key == "timeout":
            out["timeout"] = value
        elif key == "ssl_context":
            out["ssl"] = value
        else:
            raise UncarriableError(f"connect_args[{key!r}]", "no asyncpg equivalent")
    if settings:
        out["server_settings"] = settings
    return out


# Keyword arguments mysqlclient and PyMySQL share.
_MYSQL_COMMON = {
    "connect_timeout",
    "read_timeout",
    "write_timeout",
    "charset",
    "init_command",
    "ssl",
    "autocommit",
    "local_infile",
    "client_flag",
    "sql_mode",
    "unix_socket",
    "use_unicode",
    "read_default_file",
    "read_default_group",
}


def _mysqldb_to_pymysql(args: Mapping[str, Any]) -> dict[str, Any]:
    renamed = {"passwd": "password"}
    out: dict[str, Any] = {}
    for key, value in args.items():
        if key in _MYSQL_COMMON or key in ("db", "password", "user", "host", "port"):
            out[key] = value
        elif key in renamed:
            out[renamed[key]] = value
        else:
            raise UncarriableError(f"connect_args[{key!r}]", "no aiomysql equivalent")
    return out


def _mysqlconnector_to_pymysql(args: Mapping[str, Any]) -> dict[str, Any]:
    direct = {"charset", "autocommit", "init_command", "unix_socket", "sql_mode"}
    ssl_files = {"ssl_ca": "ca", "ssl_cert": "cert", "ssl_key": "key"}
    out: dict[str, Any] = {}
    ssl: dict[str, Any] = {}
    for key, value in args.items():
        if key in direct:
            out[key] = value
        elif key in ("connection_timeout", "connect_timeout"):
            out["connect_timeout"] = value
        elif key in ssl_files:
            ssl[ssl_files[key]] = value
        elif key == "use_pure" or (key == "ssl_disabled" and value):
            continue  # the pure-Python switch; TLS off is aiomysql's default
        else:
            raise UncarriableError(f"connect_args[{key!r}]", "no aiomysql equivalent")
    if ssl:
        out["ssl"] = ssl
    return out


_TRANSLATORS: dict[tuple[str, str], Translator] = {
    ("psycopg", "psycopg_async"): _same,
    ("psycopg_async", "psycopg"): _same,
    ("psycopg2", "psycopg_async"): _refusing("cursor_factory", "connection_factory"),
    ("asyncpg", "psycopg"): _asyncpg_to_libpq,
    ("pg8000", "asyncpg"): _pg8000_to_asyncpg,
    ("pysqlite", "aiosqlite"): _same,
    ("aiosqlite", "pysqlite"): _same,
    ("pymysql", "aiomysql"): _same,
    ("aiomysql", "pymysql"): _same,
    ("asyncmy", "pymysql"): _same,
    ("mysqldb", "aiomysql"): _mysqldb_to_pymysql,
    ("mysqlconnector", "aiomysql"): _mysqlconnector_to_pymysql,
}


@dataclass
class Carried:
    """Keyword arguments for ``create_engine``/``create_async_engine`` of the twin."""

    options: dict[str, Any] = field(default_factory=dict)
    execution_options: dict[str, Any] = field(default_factory=dict)


def needs_family(settings: EngineSettings, url: URL) -> bool:
    """Whether the twin should be of the same driver family, to carry arguments unchanged."""
    return bool(settings.connect_args) or bool(url.query)


def _aiosqlite_creator(creator: Callable[[], Any]) -> Callable[[], Any]:
    import aiosqlite

    async def connect() -> Any:
        # aiosqlite.connect() only builds a connector around sqlite3.connect(); its
        # Connection runs any connector in its own thread, here the caller's creator.
        return await aiosqlite.Connection(creator, 64)

    return connect


def carry(
    engine: Engine, settings: EngineSettings, source: str, target: str, *, to_async: bool
) -> Carried:
    """What the twin on driver ``target`` needs to behave as ``engine`` (on ``source``).

    Raises:
        UncarriableError: A setting has no equivalent for ``target``.
    """
    carried = Carried()
    if settings.do_connect:
        raise UncarriableError(
            "the do_connect event", "it rewrites the arguments of each sync connection"
        )
    if settings.async_creator is not None:
        raise UncarriableError("async_creator", "a sync driver cannot run an async creator")
    if settings.creator is not None:
        if (source, target) != ("pysqlite", "aiosqlite"):
            raise UncarriableError("creator", f"{target} cannot open connections through it")
        # aiosqlite runs any sqlite3 connector in its thread: the caller's creator too.
        carried.options["async_creator"] = _aiosqlite_creator(settings.creator)
    if settings.connect_args:
        translate = _TRANSLATORS.get((source, target))
        if translate is None:
            raise UncarriableError("connect_args", f"no translation from {source} to {target}")
        carried.options["connect_args"] = translate(settings.connect_args)
    twin_pool = pool_twin(settings.pool_class, to_async=to_async)
    if twin_pool is not None:
        carried.options["poolclass"] = twin_pool
        carried.options.update(settings.pool_options)
    elif settings.creator is not None:
        # "sqlite://" with a creator gets the in-memory default pool; the creator's file
        # needs a real pool (one shared aiosqlite connection would mix transactions).
        carried.options["poolclass"] = AsyncAdaptedQueuePool
    elif settings.pool_class is not engine.dialect.get_dialect_pool_class(engine.url):
        raise UncarriableError(
            f"poolclass={settings.pool_class.__name__}", "it has no twin on the other side"
        )
    carried.options["echo"] = engine.echo
    carried.options["hide_parameters"] = engine.hide_parameters
    carried.execution_options = {
        key: value
        for key, value in engine.get_execution_options().items()
        if key != "isolation_level"  # the cache runs in autocommit on both sides
    }
    return carried
