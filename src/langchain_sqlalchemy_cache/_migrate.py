"""Copying a ``langchain_community`` SQL cache into this cache's table.

``langchain_community.cache.SQLAlchemyCache`` keeps one row per generation in
``full_llm_cache`` (primary key ``prompt, llm, idx``); ``SQLAlchemyMd5Cache`` does the
same in ``full_md5_llm_cache`` with a random ``id`` as primary key and the prompt's MD5.
Either way ``response`` is ``langchain_core.load.dumps(generation)``, or plain text in
rows written by very old releases.

The rows are read in pages by keyset on the table's ordering (never OFFSET, never the
whole table in memory), grouped per (prompt, llm) in ``idx`` order into one entry, and
written under this cache's key with an insert-if-absent: entries already in the
destination (a previous run, or this cache since) are left alone and counted as
skipped, so a rerun copies nothing twice and an interrupted run is resumed by running
it again. The source table is only read.

``response`` is never passed to ``langchain_core.load``: a converter with the codec's
allowlists builds generation and message classes from their serialized kwargs, and an
entry holding anything else (a secret, an unserializable placeholder, any other class)
is counted as unreadable, with a short reason. A response that is not a serialized
object at all becomes ``Generation(text=response)``, as ``langchain_community`` reads it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from langchain_core.outputs import Generation
from sqlalchemy import (
    URL,
    Connection,
    Engine,
    Integer,
    LargeBinary,
    Select,
    String,
    TableClause,
    and_,
    bindparam,
    cast,
    column,
    func,
    inspect,
    make_url,
    or_,
    select,
    table,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from ._codec import (
    GENERATION_CLASSES,
    MESSAGE_CLASSES,
    UncacheableError,
    encode_generations,
)
from ._deadline import DEFAULT_TIMEOUT, SyncDeadline, watch_sync_engine
from ._engines import EnginePair, resolve_engines
from ._errors import CacheError, positive_int
from ._loops import drop_pool
from ._maintenance import CacheTable
from ._options import CacheOptions, qualified_name
from ._schema import DEFAULT_TABLE_NAME
from ._secrets import safe_url
from ._statements import Row, build_insert_absent, entry_row, rows_params
from ._steps import Steps, execute, fetch, run_sync
from ._sync_io import SyncExecutor

# langchain_core.load refuses deeper nesting too.
_MAX_DEPTH = 200
# The namespaces langchain_core's dumps() writes class paths under.
_LC_NAMESPACES = ("langchain", "langchain_core")
_ESCAPED_KEY = "__lc_escaped__"
# A hostile table could give every row its own reason; the report stays small.
_MAX_REASONS = 50
_OTHER_REASONS = "other reasons"


class MigrationError(CacheError):
    """The source table cannot be migrated (missing, of an unknown layout, ...)."""


# Layouts of the source table.


@dataclass(frozen=True)
class SourceLayout:
    """One ``langchain_community`` table layout.

    Attributes:
        name: The table name ``langchain_community`` gives it.
        cache_class: The ``langchain_community`` cache class that writes it.
        columns: The columns it has.
        order: The columns the rows are paged by: the group columns first, so the
            rows of one entry are adjacent, then ``idx`` and a tie-breaker.
        group: How many of ``order`` identify one entry.
    """

    name: str
    cache_class: str
    columns: tuple[str, ...]
    order: tuple[str, ...]
    group: int


FULL_LAYOUT = SourceLayout(
    name="full_llm_cache",
    cache_class="SQLAlchemyCache",
    columns=("prompt", "llm", "idx", "response"),
    # The primary key: the keyset condition is an index range.
    order=("prompt", "llm", "idx"),
    group=2,
)
MD5_LAYOUT = SourceLayout(
    name="full_md5_llm_cache",
    cache_class="SQLAlchemyMd5Cache",
    columns=("id", "prompt_md5", "llm", "idx", "prompt", "response"),
    # prompt_md5 is indexed; the md5 is part of the group because the community
    # cache finds an entry by it: a row whose md5 does not match is never read.
    order=("prompt_md5", "llm", "prompt", "idx", "id"),
    group=3,
)
LAYOUTS = (MD5_LAYOUT, FULL_LAYOUT)  # the md5 layout's columns include the other's


def detect_layout(columns: Sequence[str]) -> SourceLayout | None:
    """The layout a table with these columns has, or None."""
    found = set(columns)
    return next((layout for layout in LAYOUTS if found.issuperset(layout.columns)), None)


# Pure statement builders.


@dataclass(frozen=True)
class SourceStatements:
    """The statements that read a source table; no I/O here."""

    layout: SourceLayout
    first_page: Select[Any]
    next_page: Select[Any]
    count_rows: Select[Any]
    count_null_keys: Select[Any]

    def page_params(self, limit: int, after: Sequence[Any] | None) -> dict[str, Any]:
        """Parameters of ``first_page`` (``after`` None) or ``next_page``."""
        params: dict[str, Any] = {"limit": limit}
        for index, value in enumerate(after or ()):
            params[f"after_{index}"] = value
        return params

    def page(self, after: Sequence[Any] | None) -> Select[Any]:
        """The statement of the page after the row whose ordering values are ``after``."""
        return self.first_page if after is None else self.next_page


def source_table(name: str, schema: str | None, layout: SourceLayout) -> TableClause:
    """A lightweight description of the source table (no reflection)."""
    types = {"idx": Integer()}
    return table(name, *(column(c, types.get(c, String())) for c in layout.columns), schema=schema)


def build_source_statements(
    source: TableClause, layout: SourceLayout, dialect_name: str
) -> SourceStatements:
    """Build the statements that page through ``source``.

    A page is ``LIMIT :limit`` rows ordered by ``layout.order``; the next page starts
    after the last row read (``(a, b, c) > (:after_0, :after_1, :after_2)``), which an
    index serves without reading the rows before. Rows with a NULL in an ordering
    column cannot be paged by keyset (NULL compares as unknown); they are left out and
    counted by ``count_null_keys``.
    """
    order = [source.c[name] for name in layout.order]
    response: Any = source.c.response
    if dialect_name == "sqlite":
        # SQLite may hold bytes that are not UTF-8 in a TEXT column; read them as bytes
        # so that such a row is one unreadable entry instead of a failed page.
        response = cast(response, LargeBinary).label("response")
    keys_present = and_(*(c.is_not(None) for c in order))
    base = select(*order, response).where(keys_present).order_by(*order).limit(bindparam("limit"))
    after = [bindparam(f"after_{i}", type_=c.type) for i, c in enumerate(order)]
    # The first column's range is spelled out too: in the md5 layout only it is indexed.
    later = and_(order[0] >= after[0], tuple_(*order) > tuple_(*after))
    return SourceStatements(
        layout=layout,
        first_page=base,
        next_page=base.where(later),
        count_rows=select(func.count()).select_from(source).where(keys_present),
        count_null_keys=select(func.count())
        .select_from(source)
        .where(or_(*(c.is_(None) for c in order))),
    )


# Converting langchain_community responses, without langchain_core.load.


class UnreadableEntry(ValueError):
    """A source entry that cannot be converted; the message is the short reason."""


def _class_path(node: Mapping[str, Any]) -> str:
    path = node.get("id")
    if isinstance(path, list) and all(isinstance(part, str) for part in path):
        return ".".join(path)[:120]
    return repr(path)[:120]


def _allowed_class(node: Mapping[str, Any], allowlist: Mapping[str, type[Any]]) -> type[Any]:
    path = node.get("id")
    if (
        isinstance(path, list)
        and len(path) >= 2
        and all(isinstance(part, str) for part in path)
        and path[0] in _LC_NAMESPACES
        and path[-1] in allowlist
    ):
        return allowlist[path[-1]]
    raise UnreadableEntry(f"holds a class outside the allowlist: {_class_path(node)}")


def _is_special(node: Mapping[str, Any]) -> bool:
    # Exactly the nodes langchain_core.load would act on; any other dict is data.
    return (
        node.get("lc") == 1
        and node.get("type") in ("constructor", "secret", "not_implemented")
        and node.get("id") is not None
    )


def _construct(node: Mapping[str, Any], allowlist: Mapping[str, type[Any]], depth: int) -> Any:
    if node.get("type") == "secret":
        raise UnreadableEntry("holds a secret (never read from the environment)")
    if node.get("type") == "not_implemented":
        raise UnreadableEntry(f"holds an unserializable object: {_class_path(node)}")
    cls = _allowed_class(node, allowlist)
    kwargs = node.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise UnreadableEntry(f"{cls.__name__} kwargs are not an object")
    revived = {name: _revive(value, depth + 1) for name, value in kwargs.items()}
    try:
        # The same call langchain_core.load makes, on an allowlisted pydantic class.
        return cls(**revived)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UnreadableEntry(f"invalid {cls.__name__}: {first[:120]}") from None


def _revive(value: Any, depth: int) -> Any:
    """A kwargs value, with nested serialized messages built and escapes removed."""
    if depth > _MAX_DEPTH:
        raise UnreadableEntry(f"nested more than {_MAX_DEPTH} levels deep")
    if isinstance(value, list):
        return [_revive(item, depth + 1) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and _ESCAPED_KEY in value:
        return value[_ESCAPED_KEY]  # user data that had an "lc" key: as it was
    if _is_special(value):
        return _construct(value, MESSAGE_CLASSES, depth)
    return {name: _revive(item, depth + 1) for name, item in value.items()}


def convert_response(response: str | bytes | None) -> Generation:
    """One ``response`` of a ``langchain_community`` row as a generation.

    Raises:
        UnreadableEntry: The response is a serialized object this cache does not build
            (the message says why), or is NULL or not text.
    """
    if response is None:
        raise UnreadableEntry("response is NULL")
    if isinstance(response, (bytes, bytearray, memoryview)):
        try:
            response = bytes(response).decode("utf-8")
        except UnicodeDecodeError:
            raise UnreadableEntry("response is not valid UTF-8") from None
    if not isinstance(response, str):
        raise UnreadableEntry(f"response is a {type(response).__name__}, not text")
    try:
        parsed = json.loads(response)
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict) or "lc" not in parsed:
        # Old releases stored the text itself; langchain_community reads it back so.
        return Generation(text=response)
    if not _is_special(parsed):
        raise UnreadableEntry("a serialized object that is not a generation")
    generation = _construct(parsed, GENERATION_CLASSES, 0)
    if not isinstance(generation, Generation):  # pragma: no cover - the allowlist says so
        raise UnreadableEntry("a serialized object that is not a generation")
    return generation


def md5_matches(prompt: str, prompt_md5: str) -> bool:
    """Whether ``SQLAlchemyMd5Cache`` would find a row: its lookup filters on the md5."""
    try:
        digest = hashlib.md5(prompt.encode(), usedforsecurity=False).hexdigest()
    except UnicodeEncodeError:
        return False
    return digest == prompt_md5


# The migration.


@dataclass(frozen=True)
class MigrationProgress:
    """Where a migration is, passed to the ``progress`` callback after every batch.

    Attributes:
        rows_read: Source rows read so far.
        total_rows: Rows the source table had when the migration started (leaving out
            rows with a NULL in an ordering column, which are only counted at the end).
        copied: Entries written so far.
        skipped: Entries already in the destination so far.
        unreadable: Entries that could not be converted so far.
    """

    rows_read: int
    total_rows: int
    copied: int
    skipped: int
    unreadable: int


@dataclass(frozen=True)
class MigrationReport:
    """What a migration did.

    Attributes:
        layout: The source table's layout (``full_llm_cache`` or ``full_md5_llm_cache``).
        rows_read: Source rows read.
        copied: Entries (one per prompt and model) written to the destination.
        skipped: Entries already in the destination, left as they were.
        unreadable: Entries that could not be converted, not written.
        reasons: Why entries were unreadable: a short reason and how many.
    """

    layout: str
    rows_read: int
    copied: int
    skipped: int
    unreadable: int
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class _Group:
    """The rows of one source entry, in ``idx`` order."""

    ident: tuple[Any, ...]
    prompt: str
    llm: str
    prompt_md5: str | None
    responses: list[Any]


@dataclass
class _Tally:
    rows_read: int = 0
    copied: int = 0
    skipped: int = 0
    unreadable: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def refuse(self, reason: str, entries: int = 1) -> None:
        self.unreadable += entries
        if reason not in self.reasons and len(self.reasons) >= _MAX_REASONS:
            reason = _OTHER_REASONS
        self.reasons[reason] = self.reasons.get(reason, 0) + entries


def _group_of(layout: SourceLayout, row: Any) -> _Group:
    if layout is MD5_LAYOUT:
        return _Group(
            ident=(row.prompt_md5, row.llm, row.prompt),
            prompt=row.prompt,
            llm=row.llm,
            prompt_md5=row.prompt_md5,
            responses=[],
        )
    return _Group(
        ident=(row.prompt, row.llm), prompt=row.prompt, llm=row.llm, prompt_md5=None, responses=[]
    )


@dataclass
class _Pages:
    """Where paging through the source is: after which row, and the entry held back."""

    after: tuple[Any, ...] | None = None
    pending: _Group | None = None
    done: bool = False


def _next_page(
    statements: SourceStatements, batch_size: int, pages: _Pages
) -> Steps[tuple[list[_Group], int]]:
    """Read the next page: the entries it completed and how many rows it had.

    An entry whose rows continue on the next page is held back until it is complete.
    """
    layout = statements.layout
    rows = yield from fetch(
        statements.page(pages.after), statements.page_params(batch_size, pages.after)
    )
    complete: list[_Group] = []
    for row in rows:
        ident = tuple(row[: layout.group])
        if pages.pending is None or pages.pending.ident != ident:
            if pages.pending is not None:
                complete.append(pages.pending)
            pages.pending = _group_of(layout, row)
        pages.pending.responses.append(row.response)
    pages.done = len(rows) < batch_size
    if pages.done and pages.pending is not None:
        complete.append(pages.pending)
    if rows:
        pages.after = tuple(rows[-1][: len(layout.order)])
    return complete, len(rows)


def _entry(group: _Group, *, namespace: str, store_prompts: bool, now: float) -> Row:
    """The destination row of one source entry.

    Raises:
        UnreadableEntry: It cannot be converted.
    """
    if not isinstance(group.prompt, str) or not isinstance(group.llm, str):
        raise UnreadableEntry("prompt or llm is not text")
    if group.prompt_md5 is not None and not md5_matches(group.prompt, group.prompt_md5):
        raise UnreadableEntry("prompt_md5 does not match the prompt (never found by lookups)")
    generations = [convert_response(response) for response in group.responses]
    try:
        payload = encode_generations(generations)
    except UncacheableError as exc:
        raise UnreadableEntry(str(exc)[:160]) from None
    return entry_row(
        group.prompt, group.llm, payload, now, namespace=namespace, store_prompts=store_prompts
    )


def _source_layout(
    connection: Connection, from_table: str, from_schema: str | None, where: str
) -> SourceLayout:
    inspector = inspect(connection)
    qualified = qualified_name(from_table, from_schema)
    if not inspector.has_table(from_table, schema=from_schema):
        msg = f"table {qualified!r} does not exist in {where}"
        raise MigrationError(msg)
    columns = [c["name"] for c in inspector.get_columns(from_table, schema=from_schema)]
    layout = detect_layout(columns)
    if layout is None:
        msg = (
            f"table {qualified!r} in {where} is not a langchain_community SQL cache: it has "
            f"the columns {sorted(columns)}, and full_llm_cache has "
            f"{list(FULL_LAYOUT.columns)}, full_md5_llm_cache {list(MD5_LAYOUT.columns)}"
        )
        raise MigrationError(msg)
    return layout


def migrate(
    engine: str | URL | Engine | AsyncEngine,
    from_table: str = FULL_LAYOUT.name,
    *,
    from_schema: str | None = None,
    table_name: str = DEFAULT_TABLE_NAME,
    schema: str | None = None,
    namespace: str = "",
    store_prompts: bool = True,
    batch_size: int = 500,
    progress: Callable[[MigrationProgress], None] | None = None,
    timeout: float | timedelta | None = None,
) -> MigrationReport:
    """Copy a ``langchain_community`` SQL cache table into this cache's table.

    Both tables are in the database ``engine`` points at. The source is only read; the
    destination table is created if it is missing. Entries already in the destination
    are left alone and counted as skipped, so running it again copies nothing twice, and
    an interrupted run (an exception in ``progress``, Ctrl-C, a lost connection) is
    finished by running it again.

    Args:
        engine: The database: a URL, or a sync or async engine, as ``SQLAlchemyCache``
            takes it.
        from_table: The ``langchain_community`` table: ``full_llm_cache``
            (``SQLAlchemyCache``) or ``full_md5_llm_cache`` (``SQLAlchemyMd5Cache``), or
            the same layout under another name; the layout is told by its columns.
        from_schema: The source table's schema, None for the default.
        table_name: This cache's table to copy into.
        schema: That table's schema, None for the default.
        namespace: The namespace the entries are written under.
        store_prompts: Keep the prompt and llm_string text (as ``SQLAlchemyCache``).
        batch_size: Source rows read per page; each page's entries are written in one
            statement (PostgreSQL) or one executemany.
        progress: Called after each page with a ``MigrationProgress``. An exception it
            raises stops the migration, with every page before it written.
        timeout: Deadline of the whole run in seconds or a ``timedelta``; None (the
            default): none. When it passes, the statement in flight is cut off and
            ``TimeoutError`` is raised, with every page before it written.

    Returns:
        What was copied, skipped and unreadable, with the reasons.

    Raises:
        MigrationError: The source table is missing, of another layout, or the same
            table as the destination.
        ConfigurationError: The engine, ``batch_size`` or the destination options
            cannot be used (the message says what to pass), or the destination table
            exists with another layout.
    """
    options = CacheOptions(
        table_name=table_name,
        schema=schema,
        namespace=namespace,
        store_prompts=store_prompts,
        timeout=timeout,
    )
    return run_migration(
        engine,
        options,
        from_table,
        from_schema=from_schema,
        batch_size=batch_size,
        progress=progress,
    )


def run_migration(
    engine: str | URL | Engine | AsyncEngine,
    options: CacheOptions,
    from_table: str,
    *,
    from_schema: str | None,
    batch_size: int,
    progress: Callable[[MigrationProgress], None] | None,
) -> MigrationReport:
    """``migrate`` into the table of ``options``, whose ``timeout`` bounds the whole run.

    Raises:
        MigrationError: As ``migrate``.
        ConfigurationError: As ``migrate``.
    """
    batch_size = positive_int("batch_size", batch_size)
    if (from_table, from_schema) == (options.table_name, options.schema):
        msg = f"the source and destination table are both {options.table_name!r}"
        raise MigrationError(msg)
    seconds = options.timeout
    # The cache's engines: the sync one (derived as the cache derives it) is all a
    # migration uses. The timeout bounds connecting even when the run has no deadline.
    engines = resolve_engines(engine, None, DEFAULT_TIMEOUT if seconds is None else seconds)
    try:
        watch_sync_engine(engines.sync_engine)
        with SyncDeadline(seconds):
            return _migrate(
                engine,
                engines.sync_engine,
                CacheTable.build(engines.dialect_name, options),
                from_table,
                from_schema,
                batch_size=batch_size,
                store_prompts=options.store_prompts,
                progress=progress,
            )
    finally:
        _dispose(engines)


def _dispose(engines: EnginePair) -> None:
    for owned in engines.owned:
        if isinstance(owned, Engine):
            owned.dispose()
        else:
            drop_pool(owned, None)  # never connected: nothing to close politely


def _migrate(
    given: str | URL | Engine | AsyncEngine,
    sync_engine: Engine,
    destination: CacheTable,
    from_table: str,
    from_schema: str | None,
    *,
    batch_size: int,
    store_prompts: bool,
    progress: Callable[[MigrationProgress], None] | None,
) -> MigrationReport:
    dialect_name = sync_engine.dialect.name
    # Errors name the database as the caller did (not with the derived sync driver).
    named = make_url(given) if isinstance(given, (str, URL)) else sync_engine.url
    where = safe_url(named)
    with sync_engine.connect() as connection:
        layout = _source_layout(connection, from_table, from_schema, where)
    statements = build_source_statements(
        source_table(from_table, from_schema, layout), layout, dialect_name
    )
    # The cache's own executor: it creates (or heals) the destination before the first
    # statement, and writes each page's entries in one transaction, even on SQLite.
    executor = SyncExecutor(sync_engine, destination.table, destination.readiness)
    steps = _copy(
        statements,
        destination,
        batch_size=batch_size,
        store_prompts=store_prompts,
        progress=progress,
    )
    return run_sync(steps, executor)


def _copy(
    statements: SourceStatements,
    destination: CacheTable,
    *,
    batch_size: int,
    store_prompts: bool,
    progress: Callable[[MigrationProgress], None] | None,
) -> Steps[MigrationReport]:
    dialect_name = destination.statements.dialect_name
    namespace = destination.statements.namespace
    total = int((yield from fetch(statements.count_rows, {}))[0][0])
    tally = _Tally()
    insert = build_insert_absent(destination.table, dialect_name)
    pages = _Pages()
    while not pages.done:
        groups, rows_read = yield from _next_page(statements, batch_size, pages)
        tally.rows_read += rows_read
        rows: list[Row] = []
        for group in groups:
            try:
                rows.append(
                    # Its own write time (the source has none): max_entries trims the
                    # copies one by one rather than a page of equal times at once.
                    _entry(group, namespace=namespace, store_prompts=store_prompts, now=time.time())
                )
            except UnreadableEntry as exc:
                tally.refuse(str(exc))
        if rows:
            inserted = yield from execute(insert, rows_params(dialect_name, rows))
            tally.copied += inserted
            tally.skipped += len(rows) - inserted
        if progress is not None:
            progress(
                MigrationProgress(
                    tally.rows_read, total, tally.copied, tally.skipped, tally.unreadable
                )
            )
    null_keys = int((yield from fetch(statements.count_null_keys, {}))[0][0])
    if null_keys:
        names = ", ".join(statements.layout.order)
        tally.refuse(f"a NULL in {names}", null_keys)
        tally.rows_read += null_keys
    return MigrationReport(
        layout=statements.layout.name,
        rows_read=tally.rows_read,
        copied=tally.copied,
        skipped=tally.skipped,
        unreadable=tally.unreadable,
        reasons=dict(tally.reasons),
    )
