"""Pure statement builders: every SQL statement the cache sends is made here.

Nothing in this module does I/O. Statements are built once per cache, with bind
parameters where the values go; a call only builds its parameters. The async core and
the sync facade execute the very same statement objects with the same parameters, so
the two sides cannot drift apart, and SQLAlchemy compiles each statement once.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Delete,
    Double,
    Integer,
    Select,
    String,
    Table,
    TextClause,
    and_,
    any_,
    bindparam,
    cast,
    delete,
    desc,
    func,
    literal_column,
    select,
    text,
    type_coerce,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from ._codec import encode_text
from ._errors import ConfigurationError
from ._keys import KEY_LENGTH, cache_key, llm_key
from ._schema import FORMAT_VERSION

Row = Mapping[str, Any]
# What one execution sends: a dict of parameters, or a list of them (executemany).
Params = dict[str, Any] | list[dict[str, Any]]

# Columns an upsert overwrites; the key is what it matches on.
_UPDATED_COLUMNS = (
    "namespace",
    "llm_key",
    "prompt",
    "llm_string",
    "payload",
    "updated_at",
    "format",
)
_COLUMNS = ("key", *_UPDATED_COLUMNS)
# What a server-clock write sends: all but the time, which the statement reads.
_SENT_COLUMNS = tuple(name for name in _COLUMNS if name != "updated_at")

# Rows per DELETE when purging or trimming: short locks, no huge transaction.
PURGE_BATCH_ROWS = 1000

SUPPORTED_DIALECTS = ("postgresql", "sqlite", "mysql", "mariadb")


# Write times of the rows of one statement, apart by this much in key order: the
# server's clock reads the same for the whole statement, and max_entries trims need
# distinct times to keep exactly the newest entries.
ROW_TICK_S = 1e-6


def server_clock(dialect_name: str) -> ColumnElement[Any] | None:
    """The database server's clock in UNIX seconds, or None where it is the client's.

    Application hosts' clocks differ; the server's is the one they share, so write
    times and every comparison with them (ttl, ``clear(older_than=)``, purges) read it.
    A SQLite file is local: the client's clock is the server's.
    """
    if dialect_name == "postgresql":
        return cast(func.extract("epoch", func.statement_timestamp()), Double)
    if dialect_name in ("mysql", "mariadb"):
        # Both read the statement's start; UNIX_TIMESTAMP(NOW(6)) would go through the
        # session time zone and be an hour off around daylight-saving changes.
        seconds = func.unix_timestamp() + func.microsecond(
            func.now(literal_column("6"))
        ) / literal_column("1000000")
        return type_coerce(seconds, Double)  # a DECIMAL; older MySQL cannot CAST to DOUBLE
    return None


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
    prompt: str,
    llm_string: str,
    payload: bytes,
    now: float,
    *,
    namespace: str = "",
    store_prompts: bool = True,
) -> Row:
    """Return the column values of one cache entry (written by the cache and by migrate).

    With ``store_prompts`` False only the hashes of the prompt and llm_string are kept.
    """
    return {
        "key": cache_key(prompt, llm_string, namespace),
        "namespace": namespace,
        "llm_key": llm_key(llm_string),
        "prompt": encode_text(prompt) if store_prompts else None,
        "llm_string": encode_text(llm_string) if store_prompts else None,
        "payload": payload,
        "updated_at": now,
        "format": FORMAT_VERSION,
    }


@dataclass(frozen=True)
class Statements:
    """The cache's statements for one table on one dialect, and their parameters."""

    dialect_name: str
    ttl: float | None
    # SELECT of the server's clock (None on SQLite: the client's clock is the server's).
    clock: Select[tuple[float]] | None
    lookup: Select[tuple[str, bytes, float]]
    # The same for one key (``key = :key``): a lone lookup, and every sync one. Cheaper
    # than ``= ANY(array)`` on PostgreSQL (no array to encode and unpack).
    lookup_one: Select[tuple[str, bytes, float]]
    upsert: Insert
    namespace: str
    # clear(): indexed by (llm_key given, cutoff given); each scoped to the namespace.
    clears: dict[tuple[bool, bool], Delete]
    # How many entries each of ``clears`` deletes: the same conditions.
    counts: dict[tuple[bool, bool], Select[Any]]
    purge_batch: Delete
    # max_entries: the updated_at of the n-th newest entry (the oldest one to keep).
    nth_newest: Select[tuple[float]]
    # table_stats(): count, payload bytes and age range; entries per model; disk size.
    summary: Select[Any]
    per_model: Select[Any]
    table_size: TextClause | None
    table_size_params: dict[str, Any]

    def namespace_params(self) -> dict[str, Any]:
        """Parameters of the statements that only filter on the namespace."""
        return {"namespace": self.namespace}

    def nth_newest_params(self, keep: int) -> dict[str, Any]:
        """Parameters of ``nth_newest`` for keeping the ``keep`` newest entries."""
        return {"namespace": self.namespace, "offset": keep - 1}

    def lookup_params(self, keys: Sequence[str], now: float) -> dict[str, Any]:
        """Parameters of ``lookup`` for these keys (any number, duplicates allowed)."""
        params: dict[str, Any] = {"keys": list(dict.fromkeys(keys))}
        if self.ttl is not None:
            if self.clock is None:
                params["fresh_since"] = now - self.ttl
            else:
                params["ttl"] = self.ttl
        return params

    def lookup_for(
        self, keys: Sequence[str], now: float
    ) -> tuple[Select[tuple[str, bytes, float]], dict[str, Any]]:
        """The lookup statement for these keys (``lookup_one`` for one) and its parameters."""
        params = self.lookup_params(keys, now)
        unique = params["keys"]
        if len(unique) != 1:
            return self.lookup, params
        del params["keys"]
        params["key"] = unique[0]
        return self.lookup_one, params

    def clear(self, llm_key: str | None, cutoff: float | None) -> tuple[Delete, dict[str, Any]]:
        """The DELETE for ``clear()`` with these filters, and its parameters."""
        return self.clears[(llm_key is not None, cutoff is not None)], self._filters(
            llm_key, cutoff
        )

    def count(
        self, llm_key: str | None, cutoff: float | None
    ) -> tuple[Select[Any], dict[str, Any]]:
        """The SELECT of how many entries ``clear`` with these filters deletes."""
        return self.counts[(llm_key is not None, cutoff is not None)], self._filters(
            llm_key, cutoff
        )

    def _filters(self, llm_key: str | None, cutoff: float | None) -> dict[str, Any]:
        params: dict[str, Any] = {"namespace": self.namespace}
        if llm_key is not None:
            params["llm_key"] = llm_key
        if cutoff is not None:
            params["cutoff"] = cutoff
        return params

    def purge_params(self, cutoff: float) -> dict[str, Any]:
        """Parameters of ``purge_batch``: delete entries written before ``cutoff``."""
        return {"namespace": self.namespace, "cutoff": cutoff}

    def upsert_params(self, rows: Iterable[Row]) -> Params:
        """Parameters of ``upsert`` for these rows.

        Rows are de-duplicated by key (the last one wins) and sorted by key, so that
        two concurrent batches lock rows in the same order and cannot deadlock.
        """
        by_key = {row["key"]: row for row in rows}
        return rows_params(self.dialect_name, [by_key[key] for key in sorted(by_key)])


def batch_transaction(dialect_name: str, params: Params | None) -> dict[str, Any] | None:
    """Execution options that make one multi-row write one transaction, or None.

    The cache's connections autocommit, and SQLite's executemany then commits row by
    row: a process killed mid-batch would leave part of it. Elsewhere a multi-row
    write is already one statement (PostgreSQL's unnest, MySQL drivers' folded
    INSERT), atomic on its own.
    """
    if dialect_name == "sqlite" and isinstance(params, list) and len(params) > 1:
        # Leaves autocommit: sqlite3 opens a transaction before the first write.
        return {"isolation_level": "SERIALIZABLE"}
    return None


def size_chunks(rows: Sequence[Row], max_bytes: int) -> list[list[int]]:
    """Split rows (by index, in order) into runs of at most ``max_bytes`` each.

    Counted are the text and payload bytes; a row larger than the limit is a run of its
    own. One oversized entry then fails only its own statement (MySQL refuses a statement
    larger than ``max_allowed_packet``), not every write that shared its batch.
    """
    chunks: list[list[int]] = []
    size = max_bytes
    for index, row in enumerate(rows):
        row_size = sum(len(row[name] or "") for name in ("prompt", "llm_string", "payload"))
        if size + row_size > max_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(index)
        size += row_size
    return chunks


def rows_params(dialect_name: str, rows: Sequence[Row]) -> Params:
    """Parameters of a multi-row write (``upsert``, ``build_insert_absent``) of ``rows``.

    One array per column on PostgreSQL; a list of rows, for executemany, elsewhere.
    Where the server's clock writes the time, a row carries its rank instead.
    """
    if dialect_name == "postgresql":
        arrays = {f"{name}_array": [row[name] for row in rows] for name in _SENT_COLUMNS}
        return {**arrays, "seq_array": list(range(len(rows)))}
    if server_clock(dialect_name) is None:
        return [dict(row) for row in rows]
    return [
        {**{name: row[name] for name in _SENT_COLUMNS}, "seq": seq} for seq, row in enumerate(rows)
    ]


def build_statements(
    table: Table, dialect_name: str, ttl: float | None = None, namespace: str = ""
) -> Statements:
    """Build every statement the cache runs against ``table``.

    With a ``ttl``, a lookup only sees entries written at most ``ttl`` seconds ago by
    the server's clock (``server_clock``).
    Lookups need no namespace filter: the namespace is part of the key.
    """
    check_dialect(dialect_name)
    own = table.c.namespace == bindparam("namespace")
    older = table.c.updated_at < bindparam("cutoff")
    of_model = table.c.llm_key == bindparam("llm_key")
    filters = {
        (by_model, by_age): [own, *((of_model,) if by_model else ()), *((older,) if by_age else ())]
        for by_model in (False, True)
        for by_age in (False, True)
    }
    clock = server_clock(dialect_name)
    return Statements(
        dialect_name=dialect_name,
        ttl=ttl,
        clock=None if clock is None else select(clock),
        lookup=_lookup(table, dialect_name, with_ttl=ttl is not None),
        lookup_one=_lookup(table, dialect_name, with_ttl=ttl is not None, one=True),
        upsert=_upsert(table, dialect_name),
        namespace=namespace,
        clears={given: _clear(table, dialect_name, where) for given, where in filters.items()},
        counts={
            given: select(func.count()).select_from(table).where(*where)
            for given, where in filters.items()
        },
        purge_batch=_purge_batch(table, dialect_name, and_(own, older)),
        nth_newest=select(table.c.updated_at)
        .where(own)
        .order_by(desc(table.c.updated_at))
        .limit(1)
        .offset(bindparam("offset")),
        summary=select(
            func.count(),
            func.coalesce(func.sum(func.length(table.c.payload)), 0),
            func.min(table.c.updated_at),
            func.max(table.c.updated_at),
        ).where(own),
        per_model=select(table.c.llm_key, func.max(table.c.llm_string), func.count())
        .where(own)
        .group_by(table.c.llm_key)
        .order_by(desc(func.count()), table.c.llm_key),
        table_size=_table_size(dialect_name),
        table_size_params={
            "name": table.name,
            "schema": table.schema,
            "relation": _PG_PREPARER.format_table(table),
        },
    )


# Quotes a table name as PostgreSQL reads it (for to_regclass).
_PG_PREPARER = postgresql.base.PGIdentifierPreparer(
    postgresql.base.PGDialect()  # type: ignore[no-untyped-call]
)


def _table_size(dialect_name: str) -> TextClause | None:
    """The statement that reads the table's size on disk with its indexes, if any."""
    if dialect_name == "postgresql":
        # to_regclass resolves the name as the queries do (search_path included).
        return text("SELECT pg_total_relation_size(to_regclass(:relation))")
    if dialect_name in ("mysql", "mariadb"):
        return text(
            "SELECT data_length + index_length FROM information_schema.tables "
            "WHERE table_name = :name AND table_schema = COALESCE(:schema, DATABASE())"
        )
    if _sqlite_has_dbstat():
        # dbstat is an optional SQLite extension; Python's usual builds include it.
        return text(
            "SELECT SUM(pgsize) FROM dbstat WHERE name IN "
            "(SELECT name FROM sqlite_master WHERE tbl_name = :name) "
            "AND COALESCE(:schema, 'main') = 'main'"
        )
    return None


@functools.cache
def _sqlite_has_dbstat() -> bool:
    connection = sqlite3.connect(":memory:")
    try:
        connection.execute("SELECT 1 FROM dbstat LIMIT 1")
    except sqlite3.Error:
        return False
    finally:
        connection.close()
    return True


def _clear(table: Table, dialect_name: str, conditions: list[Any]) -> Delete:
    if dialect_name == "postgresql":
        # Rows locked in key order, as every upsert batch locks them: a clear beside busy
        # writers then waits its turn instead of deadlocking (seen with 4 processes).
        victims = select(table.c.key).where(*conditions).order_by(table.c.key).with_for_update()
        return delete(table).where(table.c.key.in_(victims.scalar_subquery()))
    return delete(table).where(*conditions)


def _purge_batch(table: Table, dialect_name: str, older: Any) -> Delete:
    # At most PURGE_BATCH_ROWS rows per statement. MySQL rejects LIMIT inside an IN
    # subquery but has DELETE .. LIMIT (with a literal count).
    if dialect_name in ("mysql", "mariadb"):
        return delete(table).where(older).with_dialect_options(mysql_limit=PURGE_BATCH_ROWS)
    victims = select(table.c.key).where(older).limit(PURGE_BATCH_ROWS)
    if dialect_name == "postgresql":
        # Rows an upsert holds are left for the next purge rather than waited for:
        # waiting while holding others, in age order against the upsert's key order, is
        # how the two deadlock.
        victims = victims.with_for_update(skip_locked=True)
    return delete(table).where(table.c.key.in_(victims.scalar_subquery()))


def _lookup(
    table: Table, dialect_name: str, *, with_ttl: bool, one: bool = False
) -> Select[tuple[str, bytes, float]]:
    # updated_at: the in-process tier ends an entry's life in memory where its ttl ends.
    stmt = select(table.c.key, table.c.payload, table.c.updated_at)
    clock = server_clock(dialect_name)
    if with_ttl and clock is None:
        stmt = stmt.where(table.c.updated_at >= bindparam("fresh_since"))
    elif with_ttl and clock is not None:
        stmt = stmt.where(table.c.updated_at >= clock - bindparam("ttl", type_=Double))
    if one:
        return stmt.where(table.c.key == bindparam("key", type_=String(KEY_LENGTH)))
    if dialect_name == "postgresql":
        # One array parameter: the same statement text for every batch size, which
        # asyncpg prepares once per connection.
        keys = bindparam("keys", type_=postgresql.ARRAY(String(KEY_LENGTH)))
        return stmt.where(table.c.key == any_(keys))
    return stmt.where(table.c.key.in_(bindparam("keys", expanding=True)))


def _pg_insert_rows(table: Table) -> postgresql.Insert:
    # INSERT .. SELECT FROM unnest(one array per column): one statement for a whole
    # batch, whatever its size. The write time is the server's, per row.
    arrays = [
        bindparam(f"{name}_array", type_=postgresql.ARRAY(table.c[name].type))
        for name in _SENT_COLUMNS
    ]
    arrays.append(bindparam("seq_array", type_=postgresql.ARRAY(Integer)))
    rows = func.unnest(*arrays).table_valued(*_SENT_COLUMNS, "seq").render_derived()
    values: dict[str, ColumnElement[Any]] = {name: rows.c[name] for name in _SENT_COLUMNS}
    values["updated_at"] = _row_time("postgresql", cast(rows.c.seq, Double))
    return postgresql.insert(table).from_select(
        _COLUMNS, select(*(values[name] for name in _COLUMNS))
    )


def _row_time(dialect_name: str, seq: ColumnElement[Any]) -> ColumnElement[Any]:
    clock = server_clock(dialect_name)
    if clock is None:
        raise AssertionError(f"{dialect_name} writes the client's time")
    # Literals, not parameters: the statement text stays the same for every batch.
    return clock + seq * literal_column(f"{ROW_TICK_S:f}")


def _mysql_insert(table: Table) -> mysql.Insert:
    return mysql.insert(table).values(
        updated_at=_row_time("mysql", bindparam("seq", type_=Integer))
    )


def build_insert_absent(table: Table, dialect_name: str) -> Insert:
    """A multi-row insert that leaves every key already in ``table`` alone (``migrate``).

    Parameters come from ``rows_params``; its row count is the number of rows inserted.
    """
    check_dialect(dialect_name)
    stmt: Insert
    if dialect_name == "postgresql":
        stmt = _pg_insert_rows(table).on_conflict_do_nothing(index_elements=[table.c.key])
    elif dialect_name in ("mysql", "mariadb"):
        # IGNORE would also let invalid values through with a warning; the rows are the
        # cache's own, so a duplicate key is all it can skip here.
        stmt = _mysql_insert(table).prefix_with("IGNORE")
    else:
        stmt = sqlite.insert(table).on_conflict_do_nothing(index_elements=[table.c.key])
    # SQLAlchemy keeps an INSERT's row count only when asked.
    return stmt.execution_options(preserve_rowcount=True)


def _upsert(table: Table, dialect_name: str) -> Insert:
    if dialect_name == "postgresql":
        pg_stmt = _pg_insert_rows(table)
        return pg_stmt.on_conflict_do_update(
            index_elements=[table.c.key],
            set_={name: pg_stmt.excluded[name] for name in _UPDATED_COLUMNS},
        )
    # SQLite and MySQL: a single-row upsert run with executemany (the drivers loop in
    # C; PyMySQL-style drivers fold it into one multi-row INSERT).
    if dialect_name in ("mysql", "mariadb"):
        my_stmt = _mysql_insert(table)
        return my_stmt.on_duplicate_key_update(
            {name: my_stmt.inserted[name] for name in _UPDATED_COLUMNS}
        )
    lite_stmt = sqlite.insert(table)
    return lite_stmt.on_conflict_do_update(
        index_elements=[table.c.key],
        set_={name: lite_stmt.excluded[name] for name in _UPDATED_COLUMNS},
    )
