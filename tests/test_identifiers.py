"""Table names, schemas and namespaces: refused up front when the backend cannot hold
them, and every accepted one works, the longest included."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from langchain_core.outputs import Generation
from sqlalchemy import create_engine, inspect, text

from langchain_sqlalchemy_cache import ConfigurationError, SQLAlchemyCache
from langchain_sqlalchemy_cache._identifiers import INDEX_NAME_MAX_BYTES, index_name

from .conftest import drop_table

pytestmark = pytest.mark.timeout(120)

VALUE = [Generation(text="answer")]


def _sync_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1).replace(
        "mysql://", "mysql+pymysql://", 1
    )


def _longest_table_name(backend: str) -> str:
    """The longest name the backend holds, with a unique prefix and multi-byte text."""
    prefix = f"t{uuid.uuid4().hex[:10]}_"
    if backend == "postgresql":
        return prefix + "é" * 25 + "x"  # 12 + 50 + 1 = 63 bytes
    if backend == "mysql":
        return prefix + "é" * (64 - len(prefix))  # 64 characters, 117 bytes
    return prefix + "é" * 300  # SQLite sets no limit


def _index_columns(url: str, table_name: str, schema: str | None = None) -> set[tuple[str, ...]]:
    engine = create_engine(_sync_url(url))
    try:
        return {
            tuple(str(name) for name in index["column_names"])
            for index in inspect(engine).get_indexes(table_name, schema=schema)
        }
    finally:
        engine.dispose()


def _backend(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else url.split(":")[0]


async def test_the_longest_table_name_works_with_its_indexes(backend_url: str) -> None:
    backend = _backend(backend_url)
    name = _longest_table_name(backend)
    cache = SQLAlchemyCache(backend_url, table_name=name)
    try:
        cache.update("p", "m", VALUE)
        await cache.aupdate("q", "m", VALUE)
        assert cache.lookup("q", "m") == VALUE
        assert await cache.alookup("p", "m") == VALUE
        cache.clear(llm_string="m")
        assert cache.lookup("p", "m") is None
        assert cache.stats().errors == 0
        assert {("namespace", "updated_at"), ("namespace", "llm_key")} <= _index_columns(
            backend_url, name
        )
    finally:
        drop_table(cache, name)
        await cache.aclose()


async def test_long_names_sharing_a_prefix_get_distinct_indexes(backend_url: str) -> None:
    backend = _backend(backend_url)
    base = _longest_table_name(backend)
    names = [base[:-1] + "a", base[:-1] + "b"]
    caches = [SQLAlchemyCache(backend_url, table_name=name) for name in names]
    try:
        for cache, name in zip(caches, names, strict=True):
            await cache.aupdate("p", name, VALUE)
        for cache, name in zip(caches, names, strict=True):
            assert cache.lookup("p", name) == VALUE
            assert len(_index_columns(backend_url, name)) >= 2
    finally:
        for cache, name in zip(caches, names, strict=True):
            drop_table(cache, name)
            await cache.aclose()


def test_index_names_always_fit() -> None:
    for table_name in ("t", "x" * 44, "x" * 45, "é" * 31, "é" * 200, "😀" * 20):
        for suffix in ("namespace_updated", "namespace_llm"):
            name = index_name(table_name, suffix)
            assert len(name.encode("utf-8")) <= INDEX_NAME_MAX_BYTES
            assert name.startswith("ix_")
            assert name.endswith(suffix)
    assert index_name("short", "namespace_llm") == "ix_short_namespace_llm"
    assert index_name("x" * 60 + "a", "n") != index_name("x" * 60 + "b", "n")


_INVALID = {
    "postgresql": ["a" * 64, "é" * 32, "bad\x00name", "lone\ud800"],
    "mysql": ["a" * 65, "bad\x00name", "lone\udfff", "emoji😀", "trailing "],
    "sqlite": ["bad\x00name", "lone\ud800"],
}


def test_names_the_backend_cannot_hold_are_refused_up_front(backend_url: str) -> None:
    backend = _backend(backend_url)
    for name in _INVALID[backend]:
        with pytest.raises(ConfigurationError, match=r"table_name .* cannot be used on .*; pass a"):
            SQLAlchemyCache(backend_url, table_name=name)
    if backend != "sqlite":  # SQLite's schemas are attached databases: no length limit
        with pytest.raises(ConfigurationError, match=r"schema .* at most"):
            SQLAlchemyCache(backend_url, schema=_INVALID[backend][0])


def test_the_message_says_what_is_allowed(postgres_url: str, mysql_url: str) -> None:
    with pytest.raises(ConfigurationError, match="at most 63 bytes of UTF-8"):
        SQLAlchemyCache(postgres_url, table_name="é" * 32)
    with pytest.raises(ConfigurationError, match="at most 64 characters"):
        SQLAlchemyCache(mysql_url, table_name="a" * 65)


@pytest.mark.parametrize(
    "namespace", ["n" * 256, "with\x00nul", "lone\ud800surrogate", b"bytes", None]
)
def test_namespaces_no_backend_can_hold_are_refused(tmp_path: Path, namespace: object) -> None:
    with pytest.raises(ConfigurationError, match="namespace"):
        SQLAlchemyCache(f"sqlite:///{tmp_path / 'c.db'}", namespace=namespace)  # type: ignore[arg-type]


async def test_the_longest_namespace_works(backend_url: str) -> None:
    name = f"t_{uuid.uuid4().hex[:12]}"
    namespace = "😀é" + "n" * 253  # 255 characters, astral ones included
    cache = SQLAlchemyCache(backend_url, table_name=name, namespace=namespace)
    other = SQLAlchemyCache(backend_url, table_name=name, namespace=namespace[:-1])
    try:
        await cache.aupdate("p", "m", VALUE)
        assert cache.lookup("p", "m") == VALUE
        assert other.lookup("p", "m") is None
        assert cache.table_stats().entries == 1
        assert cache.stats().errors == 0
    finally:
        drop_table(cache, name)
        await cache.aclose()
        other.close()


async def test_the_longest_schema_name_works_on_postgresql(postgres_url: str) -> None:
    schema = f"s{uuid.uuid4().hex[:10]}_" + "ü" * 25 + "x"  # 63 bytes
    engine = create_engine(_sync_url(postgres_url), isolation_level="AUTOCOMMIT")
    quoted = engine.dialect.identifier_preparer.quote(schema)
    with engine.connect() as connection:
        connection.execute(text(f"CREATE SCHEMA {quoted}"))
    table_name = _longest_table_name("postgresql")
    cache = SQLAlchemyCache(postgres_url, table_name=table_name, schema=schema)
    try:
        await cache.aupdate("p", "m", VALUE)
        assert cache.lookup("p", "m") == VALUE
        assert cache.table_stats().entries == 1
        assert len(_index_columns(postgres_url, table_name, schema)) == 2
    finally:
        await cache.aclose()
        with engine.connect() as connection:
            connection.execute(text(f"DROP SCHEMA {quoted} CASCADE"))
        engine.dispose()
