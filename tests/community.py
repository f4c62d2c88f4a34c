"""langchain_community's caches on the test's database, and what the tests store through
them: shared by the migrate and command-line tests."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from langchain_core.load import dumps
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, GenerationChunk
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    String,
    Text,
    column,
    create_engine,
    insert,
    make_url,
    select,
    table,
    text,
)
from sqlalchemy.orm import DeclarativeBase

from langchain_sqlalchemy_cache import SQLAlchemyCache
from langchain_sqlalchemy_cache._migrate import FULL_LAYOUT, MD5_LAYOUT, source_table

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from langchain_community import cache as community_cache

GPT = '{"model": "gpt", "temperature": 0}'
CLAUDE = '{"model": "claude"}'


class _MySQLBase(DeclarativeBase):
    pass


class MySQLFullLLMCache(_MySQLBase):
    """langchain_community's FullLLMCache as a MySQL user had to declare it and pass as
    ``cache_schema``: its own columns have no length, which MySQL refuses. With utf8mb4,
    700 + 60 characters is what fits in InnoDB's 3072-byte primary key."""

    __tablename__ = "full_llm_cache"
    prompt = Column(String(700), primary_key=True)
    llm = Column(String(60), primary_key=True)
    idx = Column(Integer, primary_key=True)
    response = Column(Text)


class MySQLFullMd5LLMCache(_MySQLBase):
    """langchain_community's FullMd5LLMCache with lengths, for MySQL."""

    __tablename__ = "full_md5_llm_cache"
    id = Column(String(64), primary_key=True)
    prompt_md5 = Column(String(32), index=True)
    llm = Column(String(200), index=True)
    idx = Column(Integer, index=True)
    prompt = Column(Text)
    response = Column(Text)


@dataclass
class Community:
    """langchain_community's caches on the test's database (a private schema on PostgreSQL)."""

    url: str
    engine: Engine
    schema: str | None

    def full(self) -> Any:
        if self.engine.dialect.name == "mysql":
            # langchain_community types the schema as its own class, and takes any
            # declarative class with its columns.
            return community_cache.SQLAlchemyCache(self.engine, MySQLFullLLMCache)  # type: ignore[arg-type]
        return community_cache.SQLAlchemyCache(self.engine)

    def md5(self) -> Any:
        if self.engine.dialect.name == "mysql":
            return community_cache.SQLAlchemyMd5Cache(self.engine, MySQLFullMd5LLMCache)  # type: ignore[arg-type]
        return community_cache.SQLAlchemyMd5Cache(self.engine)

    def insert_rows(self, table_name: str, rows: Sequence[dict[str, Any]]) -> None:
        """Rows written by hand, as an old release or a hostile writer would."""
        names = list(rows[0])
        target = table(table_name, *(column(name) for name in names), schema=self.schema)
        with self.engine.begin() as connection:
            connection.execute(insert(target), list(rows))

    def snapshot(self, table_name: str) -> list[tuple[Any, ...]]:
        """Every row of a source table, in a fixed order."""
        layout = FULL_LAYOUT if table_name == FULL_LAYOUT.name else MD5_LAYOUT
        source = source_table(table_name, self.schema, layout)
        query = select(*source.c).order_by(*(source.c[name] for name in layout.order))
        with self.engine.connect() as connection:
            return [tuple(row) for row in connection.execute(query)]

    def ours(self, **options: Any) -> SQLAlchemyCache:
        return SQLAlchemyCache(self.url, schema=self.schema, **options)


@contextmanager
def open_community(backend_url: str) -> Iterator[Community]:
    """Community caches on ``backend_url``; on PostgreSQL in a schema of their own (on
    MySQL, a database), dropped afterwards, so the real table names (full_llm_cache) are
    used without clashing."""
    url = make_url(backend_url)
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url)
        yield Community(backend_url, engine, None)
        engine.dispose()
        return
    schema = f"mig_{uuid.uuid4().hex[:10]}"
    sync_driver = "mysql+pymysql" if url.get_backend_name() == "mysql" else "postgresql+psycopg"
    base = create_engine(url.set(drivername=sync_driver))
    kind, cascade = ("DATABASE", "") if sync_driver.startswith("mysql") else ("SCHEMA", " CASCADE")
    with base.begin() as connection:
        connection.execute(text(f"CREATE {kind} {schema}"))
    engine = base.execution_options(schema_translate_map={None: schema})
    try:
        yield Community(backend_url, engine, schema)
    finally:
        with base.begin() as connection:
            connection.execute(text(f"DROP {kind} {schema}{cascade}"))
        base.dispose()


# What the tests store through langchain_community.

TOOL_CALL_MESSAGE = AIMessage(
    content="Let me look that up.",
    tool_calls=[{"name": "search", "args": {"query": "weather", "n": 3}, "id": "call_1"}],
    usage_metadata={
        "input_tokens": 12,
        "output_tokens": 7,
        "total_tokens": 19,
        "input_token_details": {"cache_read": 4},
    },
    response_metadata={"model_name": "gpt", "finish_reason": "tool_calls"},
    id="run-42",
)
VALUES: dict[tuple[str, str], list[Generation]] = {
    ("Hello", GPT): [Generation(text="Hi there")],
    ("Hello", CLAUDE): [Generation(text="Hello!", generation_info={"finish_reason": "stop"})],
    ("weather?", GPT): [
        ChatGeneration(message=TOOL_CALL_MESSAGE, generation_info={"finish_reason": "tool_calls"})
    ],
    ("three answers", GPT): [
        Generation(text="one"),
        Generation(text="two", generation_info={"logprobs": [0.1, -2.5], "n": None}),
        GenerationChunk(text="three"),
    ],
    ("chat chunks", CLAUDE): [
        ChatGenerationChunk(message=AIMessageChunk(content="par", id="c-1")),
        ChatGeneration(message=AIMessage(content=[{"type": "text", "text": "blocks"}])),
        ChatGeneration(message=HumanMessage(content="echo", name="user")),
        ChatGeneration(message=ToolMessage(content="42", tool_call_id="call_1")),
    ],
    ("日本語の質問 🎉 — é\u00e9 \U0001f600", GPT): [
        Generation(text='答え 🎉 \u2028 line\nbreak \\ "quoted" \t')
    ],
    ("empty answer", GPT): [Generation(text="")],
    ("p" * 700, GPT): [Generation(text="a long prompt")],
}

# User data shaped like a serialized secret. langchain_core escapes a user dict with an "lc"
# key in dumps() from 1.3.3 on (load() unescapes it); older releases write it as it is, the
# very JSON of a real secret, which migrate then refuses (test_migrate's
# test_lc_shaped_user_data).
LC_SHAPED = Generation(text="x", generation_info={"lc": 1, "type": "secret", "id": ["HOME"]})
DUMPS_ESCAPES_USER_DATA = "__lc_escaped__" in dumps(LC_SHAPED)
if DUMPS_ESCAPES_USER_DATA:
    VALUES[("user data shaped like a serialized object", GPT)] = [LC_SHAPED]


def store_values(cache: Any) -> None:
    for (prompt, llm), generations in VALUES.items():
        cache.update(prompt, llm, generations)
