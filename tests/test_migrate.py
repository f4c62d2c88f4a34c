"""migrate(): a real langchain_community cache copied into this cache, on every backend.

The source tables are written by langchain_community's own SQLAlchemyCache and
SQLAlchemyMd5Cache (plus rows inserted by hand where the test needs odd ones), and every
copied entry is compared with what langchain_community's own lookup returns.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.load import dumps
from langchain_core.messages import AIMessage
from langchain_core.outputs import Generation
from langchain_core.prompts import PromptTemplate
from sqlalchemy import (
    MetaData,
    distinct,
    func,
    select,
    text,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite

from langchain_sqlalchemy_cache import ConfigurationError, SQLAlchemyCache, cache_table
from langchain_sqlalchemy_cache._migrate import (
    FULL_LAYOUT,
    MD5_LAYOUT,
    MigrationError,
    MigrationProgress,
    UnreadableEntry,
    build_source_statements,
    convert_response,
    detect_layout,
    migrate,
    source_table,
)
from langchain_sqlalchemy_cache._statements import build_insert_absent, entry_row, rows_params

from .community import (
    CLAUDE,
    DUMPS_ESCAPES_USER_DATA,
    GPT,
    LC_SHAPED,
    VALUES,
    Community,
    open_community,
    store_values,
)
from .conftest import unique_table

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from langchain_community import cache as community_cache


@pytest.fixture
def community(backend_url: str) -> Iterator[Community]:
    with open_community(backend_url) as opened:
        yield opened


def community_lookup(cache: Any, prompt: str, llm: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loads()' pending deprecation, the fallback warning
        return cache.lookup(prompt, llm)


def assert_same_lookups(community_cache_: Any, ours: SQLAlchemyCache) -> None:
    for prompt, llm in VALUES:
        expected = community_lookup(community_cache_, prompt, llm)
        assert expected == VALUES[(prompt, llm)]  # the community cache reads it back
        assert ours.lookup(prompt, llm) == expected, prompt


def full_row(prompt: str, llm: str, idx: int, response: str | None) -> dict[str, Any]:
    return {"prompt": prompt, "llm": llm, "idx": idx, "response": response}


SECRET = {"lc": 1, "type": "secret", "id": ["OPENAI_API_KEY"]}


def constructor(path: list[str], **kwargs: Any) -> dict[str, Any]:
    return {"lc": 1, "type": "constructor", "id": path, "kwargs": kwargs}


GENERATION_PATH = ["langchain", "schema", "output", "Generation"]
CHAT_PATH = ["langchain", "schema", "output", "ChatGeneration"]

# Odd rows: (prompt, [responses]) -> what our lookup returns after migrating, or the
# unreadable reason (a prefix of it).
PLAIN_ROWS = {
    "legacy plain text": ["plain answer one", "plain answer two"],
    "truncated json": [dumps(Generation(text="abc"))[:-7]],
    "json but no lc": ['{"text": "a dict"}'],
    "a json number": ["42"],
    "empty response": [""],
}
REFUSED_ROWS: dict[str, tuple[list[str | None], str]] = {
    "a secret": ([json.dumps(SECRET)], "holds a secret"),
    "a nested secret": (
        [json.dumps(constructor(GENERATION_PATH, text=SECRET))],
        "holds a secret",
    ),
    "a prompt template": (
        [dumps(PromptTemplate.from_template("Tell me about {topic}"))],
        "holds a class outside the allowlist: langchain.prompts.prompt.PromptTemplate",
    ),
    "not implemented": (
        [json.dumps({"lc": 1, "type": "not_implemented", "id": ["x", "Y"], "repr": "Y()"})],
        "holds an unserializable object",
    ),
    "an outside namespace": (
        [json.dumps(constructor(["os", "Generation"], text="x"))],
        "holds a class outside the allowlist: os.Generation",
    ),
    "a message at the top": (
        [dumps(AIMessage(content="not a generation"))],
        "holds a class outside the allowlist",
    ),
    "a disallowed nested message": (
        [
            json.dumps(
                constructor(
                    CHAT_PATH,
                    message=constructor(
                        ["langchain", "schema", "messages", "RemoveMessage"], id="m"
                    ),
                )
            )
        ],
        "holds a class outside the allowlist: langchain.schema.messages.RemoveMessage",
    ),
    "an invalid generation": (
        [json.dumps(constructor(GENERATION_PATH, text=5))],
        "invalid Generation",
    ),
    "an unknown lc object": (['{"lc": 2, "kwargs": {}}'], "a serialized object that is not"),
    "one good row, one secret": (
        [dumps(Generation(text="fine")), json.dumps(SECRET)],
        "holds a secret",
    ),
    "a null response": ([None], "response is NULL"),
}


def insert_odd_rows(community: Community) -> None:
    rows = [
        full_row(prompt, GPT, idx, response)
        for prompt, responses in PLAIN_ROWS.items()
        for idx, response in enumerate(responses)
    ]
    rows += [
        full_row(prompt, GPT, idx, response)
        for prompt, (responses, _) in REFUSED_ROWS.items()
        for idx, response in enumerate(responses)
    ]
    community.insert_rows(FULL_LAYOUT.name, rows)


# The converter alone.


def test_convert_response_reads_what_langchain_core_dumps() -> None:
    for generations in VALUES.values():
        for generation in generations:
            assert convert_response(dumps(generation)) == generation


def test_lc_shaped_user_data_is_read_as_langchain_core_wrote_it() -> None:
    response = dumps(LC_SHAPED)
    if DUMPS_ESCAPES_USER_DATA:
        assert convert_response(response) == LC_SHAPED
    else:  # written unescaped: indistinguishable from a secret, so refused
        assert json.loads(response)["kwargs"]["generation_info"] == LC_SHAPED.generation_info
        with pytest.raises(UnreadableEntry, match="holds a secret"):
            convert_response(response)


def test_convert_response_falls_back_to_text_like_langchain_community() -> None:
    for response in ("plain", "", "42", "[1, 2]", '"quoted"', "{not json", "null", "[" * 100_000):
        assert convert_response(response) == Generation(text=response)
    assert convert_response(b"bytes are read as UTF-8 \xc3\xa9") == Generation(
        text="bytes are read as UTF-8 é"
    )


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (responses[-1], reason)
        for responses, reason in REFUSED_ROWS.values()
        if responses[-1] is not None
    ]
    + [
        (None, "response is NULL"),
        (b"\xff\xfe", "response is not valid UTF-8"),
        (json.dumps(constructor(GENERATION_PATH, text="x", **{"self": 1})), "invalid Generation"),
        (json.dumps(constructor(["langchain"], text="x")), "outside the allowlist"),
        (
            json.dumps(constructor(GENERATION_PATH, text="x", generation_info={"a": [SECRET]})),
            "secret",
        ),
        (json.dumps({**constructor(GENERATION_PATH, text="x"), "kwargs": [1]}), "kwargs are not"),
    ],
)
def test_convert_response_refuses(response: Any, reason: str) -> None:
    with pytest.raises(UnreadableEntry, match=re.escape(reason)):
        convert_response(response)


def test_deep_nesting_is_refused_not_a_crash() -> None:
    nested: Any = "x"
    for _ in range(300):
        nested = {"a": nested}
    response = json.dumps(constructor(GENERATION_PATH, text="x", generation_info=nested))
    with pytest.raises(UnreadableEntry, match="nested more than 200"):
        convert_response(response)


def test_layouts_are_told_by_their_columns() -> None:
    for layout, model in (
        (FULL_LAYOUT, community_cache.FullLLMCache),
        (MD5_LAYOUT, community_cache.FullMd5LLMCache),
    ):
        columns = [c.name for c in model.__table__.columns]
        assert sorted(columns) == sorted(layout.columns)
        assert detect_layout(columns) is layout
        assert model.__tablename__ == layout.name
    assert detect_layout(["prompt", "llm", "response"]) is None


def test_statement_builders_compile_for_every_dialect() -> None:
    destination = cache_table(MetaData(), "dest")
    postgres = postgresql.dialect()  # type: ignore[no-untyped-call]  # not annotated
    for dialect in (postgres, sqlite.dialect(), mysql.dialect()):
        for layout in (FULL_LAYOUT, MD5_LAYOUT):
            statements = build_source_statements(
                source_table(layout.name, None, layout), layout, dialect.name
            )
            page = statements.next_page.compile(dialect=dialect)
            # Keyset paging: SQLite's compiler spells out OFFSET 0, nothing skips rows.
            assert [v for k, v in page.params.items() if not k.startswith(("after_", "limit"))] in (
                [],
                [0],
            )
            assert "ORDER BY" in str(page)
            assert "> (" in str(page)
        # Compiled for the parameters rows_params sends (on MySQL the time is the server's).
        sent = rows_params(dialect.name, [entry_row("p", "m", b"x", 0.0)])
        keys = list((sent[0] if isinstance(sent, list) else sent).keys())
        insert = build_insert_absent(destination, dialect.name)
        insert_sql = str(insert.compile(dialect=dialect, column_keys=keys))
        assert "INSERT" in insert_sql
        assert "UPDATE" not in insert_sql  # never overwrites an entry


# Migrations on real databases.


def test_every_entry_reads_as_langchain_community_reads_it(community: Community) -> None:
    source = community.full()
    store_values(source)
    insert_odd_rows(community)
    before = community.snapshot(FULL_LAYOUT.name)
    destination = unique_table()

    report = migrate(
        community.url,
        FULL_LAYOUT.name,
        from_schema=community.schema,
        table_name=destination,
        schema=community.schema,
    )

    readable = len(VALUES) + len(PLAIN_ROWS)
    assert report.layout == "full_llm_cache"
    assert report.rows_read == len(before)
    assert (report.copied, report.skipped, report.unreadable) == (readable, 0, len(REFUSED_ROWS))
    assert sum(report.reasons.values()) == len(REFUSED_ROWS)
    for _, reason in REFUSED_ROWS.values():
        assert any(found.startswith(reason) for found in report.reasons), reason
    with community.ours(table_name=destination) as ours:
        assert_same_lookups(source, ours)
        for prompt, responses in PLAIN_ROWS.items():
            expected = [Generation(text=response) for response in responses]
            assert ours.lookup(prompt, GPT) == expected
            if prompt not in ("a json number", "json but no lc"):
                # Where langchain_community returns generations, they are these; for the
                # others it returns a bare int or dict, which no LangChain model accepts.
                assert community_lookup(source, prompt, GPT) == expected
        for prompt in REFUSED_ROWS:
            assert ours.lookup(prompt, GPT) is None
        stats = ours.table_stats()
        assert stats.entries == readable
    assert community.snapshot(FULL_LAYOUT.name) == before  # the old table is untouched


def test_a_second_run_copies_nothing_and_keeps_newer_entries(community: Community) -> None:
    source = community.full()
    store_values(source)
    destination = unique_table()
    options: dict[str, Any] = {
        "from_schema": community.schema,
        "table_name": destination,
        "schema": community.schema,
    }
    with community.ours(table_name=destination) as ours:
        # Written by this cache before the migration: the migration must not replace it.
        ours.update("Hello", GPT, [Generation(text="newer")])
        first = migrate(community.url, FULL_LAYOUT.name, **options)
        assert (first.copied, first.skipped, first.unreadable) == (len(VALUES) - 1, 1, 0)
        assert ours.lookup("Hello", GPT) == [Generation(text="newer")]
        second = migrate(community.url, FULL_LAYOUT.name, batch_size=1, **options)
        assert (second.copied, second.skipped, second.unreadable) == (0, len(VALUES), 0)
        assert ours.lookup("Hello", GPT) == [Generation(text="newer")]
        assert ours.lookup("Hello", CLAUDE) == VALUES[("Hello", CLAUDE)]


class Stop(Exception):
    pass


@pytest.mark.parametrize("batch_size", [1, 2, 4, 500])
def test_entries_spanning_pages_and_an_interrupted_run(
    community: Community, batch_size: int
) -> None:
    source = community.full()
    store_values(source)
    before = community.snapshot(FULL_LAYOUT.name)
    destination = unique_table()
    options: dict[str, Any] = {
        "from_schema": community.schema,
        "table_name": destination,
        "schema": community.schema,
    }
    seen: list[MigrationProgress] = []

    def stop_after_the_first_page(progress: MigrationProgress) -> None:
        seen.append(progress)
        raise Stop

    with pytest.raises(Stop):
        migrate(
            community.url,
            FULL_LAYOUT.name,
            batch_size=batch_size,
            progress=stop_after_the_first_page,
            **options,
        )
    assert seen[0].rows_read == min(batch_size, len(before))
    assert seen[0].total_rows == len(before)
    partial = seen[0].copied
    with community.ours(table_name=destination) as ours:
        assert ours.table_stats().entries == partial

    pages: list[MigrationProgress] = []
    report = migrate(
        community.url, FULL_LAYOUT.name, batch_size=batch_size, progress=pages.append, **options
    )
    assert (report.copied, report.skipped) == (len(VALUES) - partial, partial)
    # Keyset pages of batch_size rows, never the whole table at once.
    reads = [
        b.rows_read - a.rows_read
        for a, b in zip([MigrationProgress(0, 0, 0, 0, 0), *pages[:-1]], pages, strict=True)
    ]
    assert all(0 <= read <= batch_size for read in reads)
    assert len(pages) == len(before) // batch_size + 1
    assert pages[-1].rows_read == len(before)
    with community.ours(table_name=destination) as ours:
        assert_same_lookups(source, ours)
    assert community.snapshot(FULL_LAYOUT.name) == before


def test_interrupted_by_ctrl_c_then_resumed(community: Community) -> None:
    source = community.full()
    store_values(source)
    destination = unique_table()
    options: dict[str, Any] = {
        "from_schema": community.schema,
        "table_name": destination,
        "schema": community.schema,
    }

    def interrupt(progress: MigrationProgress) -> None:
        if progress.rows_read >= 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        migrate(community.url, FULL_LAYOUT.name, batch_size=3, progress=interrupt, **options)
    report = migrate(community.url, FULL_LAYOUT.name, batch_size=3, **options)
    assert report.copied + report.skipped == len(VALUES)
    assert report.skipped > 0
    with community.ours(table_name=destination) as ours:
        assert_same_lookups(source, ours)


def test_the_md5_layout(community: Community) -> None:
    source = community.md5()
    store_values(source)
    source.update("Hello", GPT, [Generation(text="replaced, as the md5 cache replaces")])
    community.insert_rows(
        MD5_LAYOUT.name,
        [
            # Never found by the md5 cache's lookup (it filters on the md5).
            {
                "id": "x1",
                "prompt_md5": "0" * 32,
                "llm": GPT,
                "idx": 0,
                "prompt": "bad md5",
                "response": dumps(Generation(text="lost")),
            },
            # Ordering columns with a NULL cannot be paged: counted, not copied.
            {
                "id": "x2",
                "prompt_md5": "1" * 32,
                "llm": GPT,
                "idx": None,
                "prompt": "null idx",
                "response": dumps(Generation(text="lost")),
            },
        ],
    )
    before = community.snapshot(MD5_LAYOUT.name)
    destination = unique_table()
    pages: list[MigrationProgress] = []
    report = migrate(
        community.url,
        MD5_LAYOUT.name,
        from_schema=community.schema,
        table_name=destination,
        schema=community.schema,
        batch_size=2,
        progress=pages.append,
    )
    assert report.layout == "full_md5_llm_cache"
    assert (report.copied, report.skipped, report.unreadable) == (len(VALUES), 0, 2)
    assert report.rows_read == len(before)
    # The row with a NULL is left out of the pages (and their total), then counted.
    assert pages[-1].rows_read == pages[-1].total_rows == len(before) - 1
    assert report.reasons == {
        "prompt_md5 does not match the prompt (never found by lookups)": 1,
        "a NULL in prompt_md5, llm, prompt, idx, id": 1,
    }
    with community.ours(table_name=destination) as ours:
        for prompt, llm in VALUES:
            expected = community_lookup(source, prompt, llm)
            assert expected
            assert ours.lookup(prompt, llm) == expected
        assert ours.lookup("Hello", GPT) == [Generation(text="replaced, as the md5 cache replaces")]
        assert ours.lookup("bad md5", GPT) is None
    assert community.snapshot(MD5_LAYOUT.name) == before


def test_namespace_and_store_prompts(community: Community) -> None:
    source = community.full()
    store_values(source)
    destination = unique_table()
    report = migrate(
        community.url,
        FULL_LAYOUT.name,
        from_schema=community.schema,
        table_name=destination,
        schema=community.schema,
        namespace="team-a",
        store_prompts=False,
    )
    assert report.copied == len(VALUES)
    with (
        community.ours(table_name=destination, namespace="team-a") as team_a,
        community.ours(table_name=destination) as default,
    ):
        assert_same_lookups(source, team_a)
        assert default.lookup("Hello", GPT) is None
        assert default.table_stats().entries == 0
        stats = team_a.table_stats()
        assert all(model.llm_string is None for model in stats.models)
        with team_a.sync_engine.connect() as connection:
            dest = cache_table(MetaData(), destination, community.schema)
            stored = connection.execute(
                select(dest.c.prompt, dest.c.llm_string, dest.c.namespace)
            ).all()
        assert {tuple(row) for row in stored} == {(None, None, "team-a")}


def test_non_utf8_bytes_in_sqlite_are_one_unreadable_entry(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'bytes.db'}"
    with open_community(url) as community:
        source = community.full()
        source.update("good", GPT, [Generation(text="ok")])
        with community.engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO full_llm_cache VALUES "
                    "('bad bytes', :llm, 0, CAST(X'FF80' AS TEXT))"
                ),
                {"llm": GPT},
            )
        report = migrate(url, table_name=unique_table(), batch_size=1)
    assert (report.copied, report.unreadable) == (1, 1)
    assert report.reasons == {"response is not valid UTF-8": 1}


def test_errors_name_the_problem(community: Community) -> None:
    community.full()  # creates both community tables (they share one MetaData)
    destination = unique_table()
    options: dict[str, Any] = {"from_schema": community.schema, "schema": community.schema}
    with pytest.raises(MigrationError, match=r"table '.*no_such_table' does not exist in "):
        migrate(community.url, "no_such_table", table_name=destination, **options)
    with community.ours(table_name=destination) as ours:
        ours.update("p", GPT, [Generation(text="x")])  # makes our table
    with pytest.raises(MigrationError, match="is not a langchain_community SQL cache"):
        migrate(community.url, destination, table_name=unique_table(), **options)
    with pytest.raises(MigrationError, match="source and destination table are both"):
        migrate(community.url, destination, table_name=destination, **options)
    with pytest.raises(ConfigurationError, match="batch_size must be a positive int"):
        migrate(community.url, table_name=destination, batch_size=0, **options)
    # A destination of another layout is reported as the cache reports it.
    with pytest.raises(ConfigurationError, match="lacks the columns"):
        migrate(community.url, table_name=FULL_LAYOUT.name, from_table=MD5_LAYOUT.name, **options)


def test_a_table_larger_than_a_page_many_times(community: Community) -> None:
    source = community.full()
    count = 1200
    rows = [
        full_row(
            f"prompt {i:05d}", GPT if i % 2 else CLAUDE, idx, dumps(Generation(text=f"{i}/{idx}"))
        )
        for i in range(count)
        for idx in range(i % 3 + 1)
    ]
    community.insert_rows(FULL_LAYOUT.name, rows)
    pages: list[MigrationProgress] = []
    destination = unique_table()
    report = migrate(
        community.url,
        from_schema=community.schema,
        table_name=destination,
        schema=community.schema,
        batch_size=250,
        progress=pages.append,
    )
    assert (report.copied, report.unreadable, report.rows_read) == (count, 0, len(rows))
    assert len(pages) == len(rows) // 250 + 1
    with community.ours(table_name=destination) as ours:
        for i in (0, 1, 2, 599, 1199):
            llm = GPT if i % 2 else CLAUDE
            assert ours.lookup(f"prompt {i:05d}", llm) == community_lookup(
                source, f"prompt {i:05d}", llm
            )
            assert len(ours.lookup(f"prompt {i:05d}", llm) or []) == i % 3 + 1
        # Each copy has its own write time, so max_entries can trim them one by one.
        dest = cache_table(MetaData(), destination, community.schema)
        with ours.sync_engine.connect() as connection:
            times = connection.execute(select(func.count(distinct(dest.c.updated_at)))).scalar()
        assert times == count


def test_a_new_row_over_an_old_plain_text_row(community: Community) -> None:
    """langchain_community's update() overwrites rows by idx and leaves the others, so an
    entry can mix a serialized row with an old plain-text one. Its lookup then falls back
    to the raw text of every row; the migration reads each row on its own."""
    source = community.full()
    community.insert_rows(
        FULL_LAYOUT.name,
        [full_row("mixed", GPT, 0, "old plain 0"), full_row("mixed", GPT, 1, "old plain 1")],
    )
    source.update("mixed", GPT, [Generation(text="new")])
    assert community_lookup(source, "mixed", GPT) == [
        Generation(text=dumps(Generation(text="new"))),
        Generation(text="old plain 1"),
    ]
    destination = unique_table()
    # An Engine works as well as a URL (here langchain_community's own).
    report = migrate(
        community.engine,
        from_schema=community.schema,
        table_name=destination,
        schema=community.schema,
    )
    assert (report.copied, report.unreadable) == (1, 0)
    with community.ours(table_name=destination) as ours:
        assert ours.lookup("mixed", GPT) == [Generation(text="new"), Generation(text="old plain 1")]
