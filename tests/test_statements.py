"""The pure statement builders: built once, no I/O; a call only builds parameters."""

from __future__ import annotations

import pytest
from sqlalchemy import MetaData

from langchain_sqlalchemy_cache._schema import cache_table
from langchain_sqlalchemy_cache._statements import build_statements, entry_row


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite", "mysql"])
def test_upsert_params_deduplicate_last_write_wins_and_sort_by_key(dialect: str) -> None:
    statements = build_statements(cache_table(MetaData()), dialect)
    rows = [
        entry_row("k2", None, None, b"first", 1.0),
        entry_row("k3", None, None, b"x", 1.0),
        entry_row("k1", None, None, b"y", 1.0),
        entry_row("k2", None, None, b"last", 2.0),
    ]
    params = statements.upsert_params(rows)
    if dialect == "postgresql":
        assert isinstance(params, dict)
        assert params["key_array"] == ["k1", "k2", "k3"]
        assert params["payload_array"] == [b"y", b"last", b"x"]
        assert params["updated_at_array"] == [1.0, 2.0, 1.0]
    else:
        assert isinstance(params, list)
        assert [p["key"] for p in params] == ["k1", "k2", "k3"]
        assert [p["payload"] for p in params] == [b"y", b"last", b"x"]


def test_lookup_params_send_each_key_once() -> None:
    statements = build_statements(cache_table(MetaData()), "sqlite")
    assert statements.lookup_params(["b", "a", "b", "c", "a"], 0.0) == {"keys": ["b", "a", "c"]}


def test_lookup_with_a_ttl_sees_only_fresh_entries() -> None:
    statements = build_statements(cache_table(MetaData()), "postgresql", ttl=60.0)
    assert statements.lookup_params(["a"], 1000.0) == {"keys": ["a"], "fresh_since": 940.0}
    assert "updated_at >=" in str(statements.lookup)
