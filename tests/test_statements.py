"""The pure statement builders: no I/O, same statement for both sides."""

from __future__ import annotations

import pytest
from sqlalchemy import MetaData
from sqlalchemy.dialects import mysql, postgresql, sqlite

from langchain_sqlalchemy_cache._schema import cache_table
from langchain_sqlalchemy_cache._statements import entry_row, select_payloads, upsert

DIALECTS = {
    "postgresql": postgresql.dialect(),
    "sqlite": sqlite.dialect(),
    "mysql": mysql.dialect(),
}


@pytest.mark.parametrize("name", list(DIALECTS))
def test_upsert_deduplicates_last_write_wins_and_sorts_by_key(name: str) -> None:
    table = cache_table(MetaData())
    rows = [
        entry_row("k2", None, None, "first", 1.0),
        entry_row("k3", None, None, "x", 1.0),
        entry_row("k1", None, None, "y", 1.0),
        entry_row("k2", None, None, "last", 2.0),
    ]
    params = upsert(table, name, rows).compile(dialect=DIALECTS[name]).params
    if name == "postgresql":
        assert params["key_array"] == ["k1", "k2", "k3"]
        assert params["payload_array"] == ["y", "last", "x"]
    else:
        keys = [params[f"key_m{i}"] for i in range(3)]
        payloads = [params[f"payload_m{i}"] for i in range(3)]
        assert keys == ["k1", "k2", "k3"]
        assert payloads == ["y", "last", "x"]
        assert "key_m3" not in params


def test_postgres_statements_do_not_change_with_the_batch_size() -> None:
    # One statement text for every batch size: asyncpg prepares it once per connection.
    table = cache_table(MetaData())
    dialect = DIALECTS["postgresql"]

    def sql(statement: object) -> str:
        return str(statement.compile(dialect=dialect))  # type: ignore[attr-defined]

    rows = [entry_row(f"k{i}", None, None, "p", 1.0) for i in range(50)]
    assert sql(upsert(table, "postgresql", rows[:1])) == sql(upsert(table, "postgresql", rows))
    assert sql(select_payloads(table, "postgresql", ["a"])) == sql(
        select_payloads(table, "postgresql", ["a", "b", "c"])
    )
