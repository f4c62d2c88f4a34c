"""The pure statement builders: built once, no I/O; a call only builds parameters."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import MetaData
from sqlalchemy.dialects import postgresql

from langchain_sqlalchemy_cache import cache_table
from langchain_sqlalchemy_cache._keys import cache_key, llm_key
from langchain_sqlalchemy_cache._statements import build_statements, entry_row


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite", "mysql"])
def test_upsert_params_deduplicate_last_write_wins_and_sort_by_key(dialect: str) -> None:
    statements = build_statements(cache_table(MetaData()), dialect)
    rows = [
        entry_row("p2", "m", b"first", 1.0),
        entry_row("p3", "m", b"x", 1.0),
        entry_row("p1", "m", b"y", 1.0),
        entry_row("p2", "m", b"last", 2.0),
    ]
    # Sorted by key (a hash, so not in prompt order); p2's last write wins. SQLite
    # sends the client's write time; the servers send each row's rank in the batch,
    # and the statement adds it (in microseconds) to the server's clock.
    last = sorted(
        [(rows[3]["key"], b"last", 2.0), *((r["key"], r["payload"], 1.0) for r in rows[1:3])]
    )
    params = statements.upsert_params(rows)
    got: list[Any]
    expected: list[tuple[Any, Any, float]]
    if dialect == "postgresql":
        assert isinstance(params, dict)
        assert "updated_at_array" not in params
        columns = ("key_array", "payload_array", "seq_array")
        got = list(zip(*(params[name] for name in columns), strict=True))
        expected = [(key, payload, seq) for seq, (key, payload, _) in enumerate(last)]
    elif dialect == "mysql":
        assert isinstance(params, list)
        got = [(p["key"], p["payload"], p["seq"]) for p in params]
        expected = [(key, payload, seq) for seq, (key, payload, _) in enumerate(last)]
    else:
        assert isinstance(params, list)
        got = [(p["key"], p["payload"], p["updated_at"]) for p in params]
        expected = last
    assert got == expected


def test_entry_rows_hash_the_inputs_and_keep_their_text_unless_told_not_to() -> None:
    kept = entry_row("prompt", "model", b"x", 5.0, namespace="ns")
    hashed = entry_row("prompt", "model", b"x", 5.0, namespace="ns", store_prompts=False)
    assert kept["key"] == hashed["key"] == cache_key("prompt", "model", "ns")
    assert kept["llm_key"] == hashed["llm_key"] == llm_key("model")
    assert (kept["prompt"], kept["llm_string"]) == ('"prompt"', '"model"')
    assert (hashed["prompt"], hashed["llm_string"]) == (None, None)
    assert entry_row("prompt", "model", b"x", 5.0)["key"] != kept["key"]  # other namespace


def test_lookup_params_send_each_key_once() -> None:
    statements = build_statements(cache_table(MetaData()), "sqlite")
    assert statements.lookup_params(["b", "a", "b", "c", "a"], 0.0) == {"keys": ["b", "a", "c"]}


def test_lookup_with_a_ttl_sees_only_fresh_entries() -> None:
    statements = build_statements(cache_table(MetaData()), "sqlite", ttl=60.0)
    assert statements.lookup_params(["a"], 1000.0) == {"keys": ["a"], "fresh_since": 940.0}
    assert "updated_at >=" in str(statements.lookup)
    # The servers compare with their own clock: the client's time is not sent.
    statements = build_statements(cache_table(MetaData()), "postgresql", ttl=60.0)
    assert statements.lookup_params(["a"], 1000.0) == {"keys": ["a"], "ttl": 60.0}
    assert "statement_timestamp()" in str(statements.lookup.compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]
