"""Following a PostgreSQL failover: multi-host URLs, and a read-only server is the wrong one.

A highly available PostgreSQL is reached through a URL naming every node
(``?host=db1:5432&host=db2:5432&target_session_attrs=read-write``): the driver tries
them in turn and keeps the first that is writable, so after a failover a new
connection finds the promoted standby by itself. Both engines of the cache must name
the same nodes and ask for the same kind of server, or the async and the sync calls
would write to different databases.

A pooled connection can still sit on a server that became read-only (a demoted or
fenced old primary). Its writes fail with SQLSTATE 25006; that is a wrong server, not
a wrong statement, so the connection is treated as dropped: SQLAlchemy invalidates the
pool, and the statement's one retry on a dropped connection reconnects, and the
driver picks the writable node.
"""

from __future__ import annotations

from sqlalchemy import URL
from sqlalchemy.engine import ExceptionContext

from ._errors import ConfigurationError

# SQLSTATE read_only_sql_transaction: "cannot execute INSERT in a read-only transaction".
READ_ONLY_SQLSTATE = "25006"
# Drivers built on libpq (or asyncpg's copy of its rules) take several hosts and
# target_session_attrs; pg8000 takes neither.
_MULTIHOST_DRIVERS = frozenset({"asyncpg", "psycopg", "psycopg_async", "psycopg2"})
SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
_EXAMPLE = "postgresql://user@/db?host=db1:5432&host=db2:5432&target_session_attrs=read-write"


def _values(url: URL, name: str) -> list[str]:
    value = url.query.get(name)
    if value is None:
        return []
    tokens = [value] if isinstance(value, str) else list(value)
    return [part for token in tokens for part in token.split(",")]


def hosts(url: URL) -> tuple[tuple[str, str], ...]:
    """The (host, port) pairs a URL names, in order; a port may be "" (the default)."""
    named = _values(url, "host")
    if not named:
        return ((url.host or "", str(url.port or "")),)
    ports = _values(url, "port")
    pairs = []
    for index, token in enumerate(named):
        host, _, port = token.partition(":")
        if not port and index < len(ports):
            port = ports[index]
        pairs.append((host, port))
    return tuple(pairs)


def _check(url: URL) -> None:
    several = len(hosts(url)) > 1
    attrs = url.query.get("target_session_attrs")
    if not (several or attrs is not None):
        return
    driver = url.drivername.partition("+")[2]
    if driver not in _MULTIHOST_DRIVERS:
        msg = (
            f"the {driver!r} driver cannot take several hosts or target_session_attrs: "
            "use postgresql+psycopg:// (sync) or postgresql+asyncpg:// (async), or a bare "
            f"postgresql:// URL, e.g. {_EXAMPLE}"
        )
        raise ConfigurationError(msg)
    if several and url.host:
        msg = (
            f"name the hosts either before the database or as host= parameters, not both: "
            f"e.g. {_EXAMPLE}"
        )
        raise ConfigurationError(msg)
    if attrs is not None and attrs not in SESSION_ATTRS:
        msg = (
            f"target_session_attrs must be one of {', '.join(SESSION_ATTRS)}, got {attrs!r}; "
            "read-write (or primary) finds the writable node after a failover"
        )
        raise ConfigurationError(msg)
    if driver == "asyncpg" and several and not all(port for _, port in hosts(url)):
        msg = (
            "asyncpg needs a port for every host of a multi-host URL: write "
            "host=db1:5432&host=db2:5432"
        )
        raise ConfigurationError(msg)


def check_hosts(async_url: URL, sync_url: URL, *, explicit: bool = False) -> None:
    """Check that both engines' drivers take the hosts named, and that they name the same.

    An ``explicit`` pair of single-host URLs may name its host differently (a pooler on
    one side, another name of the same server): the first-use identity check tells
    whether both reach one table. Host lists must match: after a failover, different
    lists could lead the two sides to different servers.

    Raises:
        ConfigurationError: A driver cannot take several hosts or
            ``target_session_attrs``, a value is wrong, or the two URLs name different
            nodes or ask for different kinds of server.
    """
    if async_url.get_backend_name() != "postgresql":
        return
    _check(async_url)
    _check(sync_url)
    if explicit and len(hosts(async_url)) <= 1 and len(hosts(sync_url)) <= 1:
        return
    if hosts(async_url) != hosts(sync_url) or async_url.query.get(
        "target_session_attrs"
    ) != sync_url.query.get("target_session_attrs"):
        msg = (
            "engine and sync_engine name different hosts or target_session_attrs: after a "
            "failover the async and sync calls could reach different servers; give both "
            "the same host= list and target_session_attrs, or pass one engine and let the "
            "cache derive the other"
        )
        raise ConfigurationError(msg)


def wrong_server(context: ExceptionContext) -> None:
    """``handle_error`` hook: a write refused as read-only means the connection is stale."""
    error = context.original_exception
    state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if state == READ_ONLY_SQLSTATE:
        context.is_disconnect = True
