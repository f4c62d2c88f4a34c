"""Pure statement builders: every SQL statement the cache sends is made here.

Nothing in this module does I/O. The async core and the sync facade execute the very
same statement objects, so the two sides cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Delete, Select, String, Table, any_, bindparam, delete, func, select
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from ._errors import ConfigurationError
from ._keys import KEY_LENGTH
from ._schema import FORMAT_VERSION

Row = Mapping[str, Any]

# Columns an upsert overwrites; the key is what it matches on.
_UPDATED_COLUMNS = ("prompt", "llm_string", "payload", "updated_at", "format")
_COLUMNS = ("key", *_UPDATED_COLUMNS)

_KEY_ARRAY = postgresql.ARRAY(String(KEY_LENGTH))

SUPPORTED_DIALECTS = ("postgresql", "sqlite", "mysql", "mariadb")


def check_dialect(dialect_name: str) -> None:
    """Raise ConfigurationError unless the cache can build upserts for this dialect."""
    if dialect_name not in SUPPORTED_DIALECTS:
        msg = (
            f"the {dialect_name!r} database is not supported: use PostgreSQL, SQLite "
            "or MySQL/MariaDB (an upsert in one statement is what keeps concurrent "
            "writers correct, and only those dialects have one)"
        )
        raise ConfigurationError(msg)


def entry_row(
    key: str, prompt: str | None, llm_string: str | None, payload: str, now: float
) -> Row:
    """Return the column values of one cache entry."""
    return {
        "key": key,
        "prompt": prompt,
        "llm_string": llm_string,
        "payload": payload,
        "updated_at": now,
        "format": FORMAT_VERSION,
    }


def select_payloads(
    table: Table, dialect_name: str, keys: Sequence[str]
) -> Select[tuple[str, str]]:
    """SELECT key, payload for the given keys.

    On PostgreSQL the keys travel as one array parameter, so every batch size is the
    same statement and asyncpg prepares it once per connection instead of once per size.
    """
    stmt = select(table.c.key, table.c.payload)
    if dialect_name == "postgresql":
        return stmt.where(table.c.key == any_(bindparam("keys", list(keys), type_=_KEY_ARRAY)))
    if len(keys) == 1:
        return stmt.where(table.c.key == keys[0])
    return stmt.where(table.c.key.in_(keys))


def upsert(table: Table, dialect_name: str, rows: Iterable[Row]) -> Insert:
    """One INSERT .. ON CONFLICT / ON DUPLICATE KEY UPDATE statement for all ``rows``.

    Rows are de-duplicated by key (the last one wins) and sorted by key, so that
    two concurrent multi-row upserts lock rows in the same order and cannot deadlock.
    """
    by_key = {row["key"]: row for row in rows}
    values = [by_key[key] for key in sorted(by_key)]
    if dialect_name == "postgresql":
        return _postgres_upsert(table, values)
    if dialect_name in ("mysql", "mariadb"):
        my_stmt = mysql.insert(table).values(values)
        return my_stmt.on_duplicate_key_update(
            {name: my_stmt.inserted[name] for name in _UPDATED_COLUMNS}
        )
    stmt = sqlite.insert(table).values(values)
    return stmt.on_conflict_do_update(
        index_elements=[table.c.key],
        set_={name: stmt.excluded[name] for name in _UPDATED_COLUMNS},
    )


def _postgres_upsert(table: Table, values: Sequence[Row]) -> Insert:
    # INSERT .. SELECT FROM unnest(one array per column): the same statement text for
    # any number of rows, so it is compiled and prepared once, not once per batch size.
    columns = [table.c[name] for name in _COLUMNS]
    arrays = [
        bindparam(
            f"{column.name}_array",
            [row[column.name] for row in values],
            type_=postgresql.ARRAY(column.type),
        )
        for column in columns
    ]
    rows = func.unnest(*arrays).table_valued(*_COLUMNS).render_derived()
    stmt = postgresql.insert(table).from_select(
        _COLUMNS, select(*(rows.c[name] for name in _COLUMNS))
    )
    return stmt.on_conflict_do_update(
        index_elements=[table.c.key],
        set_={name: stmt.excluded[name] for name in _UPDATED_COLUMNS},
    )


def delete_all(table: Table) -> Delete:
    """DELETE every entry."""
    return delete(table)
