"""What this package knows of ``langchain_community``'s SQL caches, without importing it.

``langchain_community`` is not a dependency: its schema classes are recognised by module
and name, and its tables by name.
"""

from __future__ import annotations

from sqlalchemy import Connection, Table, func, inspect, select, table

from ._errors import ConfigurationError
from ._ratelimit import logger
from ._secrets import safe_url

# langchain_community.cache's default schema classes and the tables they declare.
COMMUNITY_TABLES = {"FullLLMCache": "full_llm_cache", "FullMd5LLMCache": "full_md5_llm_cache"}
_COMMUNITY_MODULE = "langchain_community.cache"


def check_cache_schema(cache_schema: object, table_name: str) -> None:
    """Accept community's default schema classes (ignored); refuse any other.

    Raises:
        ConfigurationError: ``cache_schema`` is another class; the message says what
            this cache stores instead and how to keep the entries of the old table.
    """
    if cache_schema is None:
        return
    name = getattr(cache_schema, "__qualname__", type(cache_schema).__name__)
    module = getattr(cache_schema, "__module__", "")
    if isinstance(cache_schema, type) and module == _COMMUNITY_MODULE and name in COMMUNITY_TABLES:
        return
    old_table = getattr(cache_schema, "__tablename__", None)
    keep = (
        f"to keep the entries of {old_table!r}, copy them once with "
        f"`langchain-sqlalchemy-cache migrate <database URL> --from-table {old_table} "
        f"--table {table_name}`"
        if isinstance(old_table, str)
        else "to keep the entries of the old table, copy them once with "
        "`langchain-sqlalchemy-cache migrate <database URL> --from-table <old table>`"
    )
    msg = (
        f"cache_schema={name} cannot be used: this cache stores its own layout, one row per "
        "entry keyed by a SHA-256 of (namespace, llm_string, prompt) with the generations "
        f"as JSON, in table {table_name!r} (see cache_table()); drop cache_schema "
        "(langchain_community's FullLLMCache and FullMd5LLMCache are accepted and "
        f"ignored) and pick the table with table_name=...; {keep}"
    )
    raise ConfigurationError(msg)


def notice_community_tables(connection: Connection, cache: Table) -> None:
    """Log one line if a community cache table has rows while this cache's table is empty.

    Such a user has just switched packages and would otherwise start with a cold cache
    without knowing why.
    """
    inspector = inspect(connection)
    schema = connection.schema_for_object(cache)
    if inspector.has_table(cache.name, schema=schema):
        own = table(cache.name, schema=schema)
        if connection.execute(select(1).select_from(own).limit(1)).first() is not None:
            return
    for old_name in COMMUNITY_TABLES.values():
        if not inspector.has_table(old_name):
            continue
        rows = connection.execute(select(func.count()).select_from(table(old_name))).scalar_one()
        if not rows:
            continue
        url = safe_url(connection.engine.url)
        logger.warning(
            "the database holds langchain_community's cache table %r with %d rows and this "
            "cache's table %r is empty: copy them once with "
            "`langchain-sqlalchemy-cache migrate %s --from-table %s --table %s`",
            old_name,
            rows,
            cache.name,
            url,
            old_name,
            cache.name,
        )
        return
