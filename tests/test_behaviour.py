"""What users rely on, on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from typing import Any

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, Generation, GenerationChunk
from sqlalchemy import Column, MetaData, String, Table, Text, event, insert, select, text

from langchain_sqlalchemy_cache import SQLAlchemyCache

from .conftest import CacheFactory, start_threads
from .helpers import HOSTILE_PAYLOADS, table_of

LLM = '{"model": "fake", "temperature": 0}---[("stop", None)]'


def random_text(n_chars: int, seed: int) -> str:
    """Incompressible text: PostgreSQL would squeeze repetitive text under its limits."""
    rng = random.Random(seed)
    alphabet = [chr(c) for c in range(0x20, 0x7F)] + ["é", "ж", "中", "😀", "\n"]
    return "".join(rng.choices(alphabet, k=n_chars))


def chat_generation(content: str = "The answer is 42.") -> ChatGeneration:
    return ChatGeneration(
        message=AIMessage(
            content=content,
            id="run-abc",
            tool_calls=[
                {"name": "search", "args": {"query": "weather", "n": 3}, "id": "call_1"},
                {"name": "lookup", "args": {}, "id": "call_2"},
            ],
            usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15},
            response_metadata={"model_name": "fake-1", "finish_reason": "tool_calls"},
        ),
        generation_info={"finish_reason": "tool_calls"},
    )


def test_one_megabyte_random_prompt_and_llm_string(make_cache: CacheFactory) -> None:
    # No deadline: writing megabytes may outlast the default 2 s on a loaded machine.
    cache = make_cache(timeout=None)
    prompt = random_text(1_000_000, seed=1)
    llm_string = random_text(1_000_000, seed=2)
    value = [Generation(text=random_text(1_000_000, seed=3))]
    cache.update(prompt, llm_string, value)
    assert cache.lookup(prompt, llm_string) == value
    # A prompt differing only in its last character is another entry.
    assert cache.lookup(prompt[:-1] + "#", llm_string) is None


async def test_one_megabyte_random_prompt_async(acache: SQLAlchemyCache) -> None:
    prompt = random_text(1_000_000, seed=4)
    value = [Generation(text="ok")]
    await acache.aupdate(prompt, LLM, value)
    assert await acache.alookup(prompt, LLM) == value


def test_shorter_update_leaves_nothing_stale(cache: SQLAlchemyCache) -> None:
    cache.update("p", LLM, [Generation(text="a"), Generation(text="b")])
    cache.update("p", LLM, [Generation(text="c")])
    assert cache.lookup("p", LLM) == [Generation(text="c")]
    with cache.sync_engine.connect() as connection:
        count = connection.execute(text(f"SELECT count(*) FROM {table_of(cache).name}")).scalar()
    assert count == 1


async def test_shorter_aupdate_leaves_nothing_stale(acache: SQLAlchemyCache) -> None:
    await acache.aupdate("p", LLM, [Generation(text="a"), Generation(text="b")])
    await acache.aupdate("p", LLM, [Generation(text="c")])
    assert await acache.alookup("p", LLM) == [Generation(text="c")]


def test_hit_is_a_list_equal_to_what_was_stored(cache: SQLAlchemyCache) -> None:
    value = (chat_generation("first"), chat_generation("second"), chat_generation("third"))
    cache.update("p", LLM, value)  # a tuple in ...
    hit = cache.lookup("p", LLM)
    assert type(hit) is list  # ... a list out: LangChain treats anything else as a miss
    assert hit == list(value)
    message, stored = hit[0].message, value[0].message
    assert isinstance(message, AIMessage)
    assert isinstance(stored, AIMessage)
    assert message.tool_calls == stored.tool_calls
    assert message.usage_metadata == stored.usage_metadata
    assert message.response_metadata == value[0].message.response_metadata
    assert [g.text for g in hit] == ["first", "second", "third"]


async def test_generation_subclasses_round_trip_async(acache: SQLAlchemyCache) -> None:
    value: list[Generation] = [
        Generation(text="plain", generation_info={"logprobs": None, "n": 1}),
        GenerationChunk(text="chunk"),
        chat_generation(),
        ChatGenerationChunk(message=AIMessageChunk(content="streamed", id="run-x")),
    ]
    await acache.aupdate("p", LLM, value)
    hit = await acache.alookup("p", LLM)
    assert hit == value
    assert hit is not None
    assert [type(g) for g in hit] == [type(g) for g in value]


ODD_TEXTS = [
    "nul\x00inside",
    "lone high \ud800 surrogate",
    "lone low \udfff surrogate",
    "a high then a low surrogate, two code points: \ud800\udfff",
    "astral 😀🎉\U0001d54f and CJK 中文",
    "\x00",
    "",
    'quotes " and \\ backslashes \\u0000',
]


@pytest.mark.parametrize("odd", ODD_TEXTS)
def test_odd_characters_round_trip_sync(cache: SQLAlchemyCache, odd: str) -> None:
    value = [Generation(text=odd), chat_generation(odd)]
    cache.update(odd, odd, value)
    assert cache.lookup(odd, odd) == value


@pytest.mark.parametrize("odd", ODD_TEXTS)
async def test_odd_characters_round_trip_async(acache: SQLAlchemyCache, odd: str) -> None:
    value = [Generation(text=odd)]
    await acache.aupdate(odd, odd, value)
    assert await acache.alookup(odd, odd) == value


def test_keys_do_not_collide_across_the_prompt_llm_boundary(cache: SQLAlchemyCache) -> None:
    cache.update("ab", "c", [Generation(text="1")])
    cache.update("b", "ac", [Generation(text="2")])
    cache.update("abc", "", [Generation(text="3")])
    assert cache.lookup("ab", "c") == [Generation(text="1")]
    assert cache.lookup("b", "ac") == [Generation(text="2")]
    assert cache.lookup("abc", "") == [Generation(text="3")]
    assert cache.lookup("a", "bc") is None


def test_llm_strings_are_isolated(cache: SQLAlchemyCache) -> None:
    cache.update("p", LLM, [Generation(text="model one")])
    assert cache.lookup("p", LLM.replace("0", "1")) is None
    cache.update("p", LLM.replace("0", "1"), [Generation(text="model two")])
    assert cache.lookup("p", LLM) == [Generation(text="model one")]


def test_sync_and_async_share_one_table(cache: SQLAlchemyCache) -> None:
    async def write_then_read() -> Any:
        await cache.aupdate("p", LLM, [Generation(text="from async")])
        result = await cache.alookup("q", LLM)
        # The loop's connections go with it; aclose() would end the cache for good.
        await cache.async_engine.dispose()
        return result

    cache.update("q", LLM, [Generation(text="from sync")])
    assert asyncio.run(write_then_read()) == [Generation(text="from sync")]
    assert cache.lookup("p", LLM) == [Generation(text="from async")]


def test_concurrent_threads_writing_one_new_key(cache: SQLAlchemyCache) -> None:
    barrier = threading.Barrier(16)

    def writer(i: int) -> None:
        barrier.wait()
        for j in range(20):
            cache.update("new key", LLM, [Generation(text=f"{i}-{j}")])

    assert start_threads(writer, 16)() == []
    hit = cache.lookup("new key", LLM)
    assert hit is not None
    assert len(hit) == 1
    i, j = map(int, hit[0].text.split("-"))
    assert 0 <= i < 16
    assert 0 <= j < 20


async def test_table_created_once_on_concurrent_async_first_use(
    make_cache: CacheFactory,
) -> None:
    cache = make_cache()
    creates: list[str] = []

    def count_creates(*args: Any) -> None:
        statement = args[2]
        if statement.lstrip().upper().startswith("CREATE TABLE"):
            creates.append(statement)

    event.listen(cache.async_engine.sync_engine, "before_cursor_execute", count_creates)
    event.listen(cache.sync_engine, "before_cursor_execute", count_creates)
    results = await asyncio.gather(*(cache.alookup(f"p{i}", LLM) for i in range(50)))
    assert results == [None] * 50
    await cache.aupdate("p", LLM, [Generation(text="x")])
    cache.update("q", LLM, [Generation(text="y")])
    assert len(creates) == 1
    await cache.aclose()


def test_create_table_false_uses_an_existing_table(make_cache: CacheFactory) -> None:
    first = make_cache()
    first.update("p", LLM, [Generation(text="x")])
    second = SQLAlchemyCache(first.sync_engine, table_name=table_of(first).name, create_table=False)
    assert second.lookup("p", LLM) == [Generation(text="x")]


def test_old_langchain_community_table_is_not_read(cache: SQLAlchemyCache) -> None:
    # The layout langchain_community's SQLAlchemyCache writes, with an entry for "p"
    # (lengths added: on MySQL the community layout cannot even be created without).
    old = Table(
        "full_llm_cache",
        MetaData(),
        Column("prompt", String(200), primary_key=True),
        Column("llm", String(200), primary_key=True),
        Column("idx", String(10), primary_key=True),
        Column("response", Text),
    )
    with cache.sync_engine.connect() as connection:
        old.drop(connection, checkfirst=True)
        old.create(connection)
        connection.execute(
            insert(old).values(prompt="p", llm=LLM, idx="0", response='{"old": true}')
        )
    try:
        assert cache.lookup("p", LLM) is None
    finally:
        with cache.sync_engine.connect() as connection:
            old.drop(connection)


def write_raw_payload(cache: SQLAlchemyCache, prompt: str, payload: str) -> None:
    """Store a payload as an attacker with write access to the table would."""
    cache.update(prompt, LLM, [Generation(text="placeholder")])
    table = table_of(cache)
    with cache.sync_engine.connect() as connection:
        connection.execute(table.update().values(payload=payload.encode("utf-8", "surrogatepass")))


UNTRUSTED_PAYLOADS = {
    **HOSTILE_PAYLOADS,
    "secret from env": json.dumps(
        [
            {
                "class": "Generation",
                "fields": {"text": {"lc": 1, "type": "secret", "id": ["CACHE_TEST_SECRET"]}},
            }
        ]
    ),
}


@pytest.mark.parametrize("name", list(UNTRUSTED_PAYLOADS))
def test_untrusted_rows_are_misses_with_a_warning(
    make_cache: CacheFactory,
    name: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = make_cache(local_max_bytes=0)  # the row is changed behind the cache's back
    monkeypatch.setenv("CACHE_TEST_SECRET", "hunter2")
    write_raw_payload(cache, "p", UNTRUSTED_PAYLOADS[name])
    with caplog.at_level(logging.WARNING, logger="langchain_sqlalchemy_cache"):
        assert cache.lookup("p", LLM) is None
    assert any("miss" in r.getMessage() for r in caplog.records)
    assert "hunter2" not in caplog.text
    # Nothing was built from the row: a good write afterwards is served normally.
    cache.update("p", LLM, [Generation(text="good")])
    assert cache.lookup("p", LLM) == [Generation(text="good")]


async def test_untrusted_row_is_a_miss_async(
    make_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    acache = make_cache(local_max_bytes=0)  # the row is changed behind the cache's back
    write_raw_payload(acache, "p", UNTRUSTED_PAYLOADS["a class outside the allowlist"])
    with caplog.at_level(logging.WARNING, logger="langchain_sqlalchemy_cache"):
        assert await acache.alookup("p", LLM) is None
    assert "PromptTemplate" in caplog.text
    await acache.aclose()


@pytest.mark.parametrize(
    "bad",
    ["a string", [Generation(text="ok"), "not a generation"], None, 42, [{"text": "dict"}]],
)
def test_wrong_return_val_types_raise_before_any_io(cache: SQLAlchemyCache, bad: Any) -> None:
    statements: list[str] = []
    event.listen(cache.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with pytest.raises(TypeError, match="Generation"):
        cache.update("p", LLM, bad)
    assert statements == []


async def test_wrong_types_raise_before_any_io_async(acache: SQLAlchemyCache) -> None:
    with pytest.raises(TypeError, match="Generation"):
        await acache.aupdate("p", LLM, "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prompt must be a str"):
        await acache.alookup(b"bytes", LLM)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="llm_string must be a str"):
        await acache.alookup("p", None)  # type: ignore[arg-type]


def test_clear_removes_everything_and_rejects_unknown_arguments(cache: SQLAlchemyCache) -> None:
    for i in range(5):
        cache.update(f"p{i}", LLM, [Generation(text=str(i))])
    with pytest.raises(TypeError, match="unexpected keyword"):
        cache.clear(nonsense=True)
    assert cache.lookup("p0", LLM) is not None
    cache.clear()
    assert all(cache.lookup(f"p{i}", LLM) is None for i in range(5))


def test_an_answer_json_cannot_hold_is_not_cached_and_does_not_raise(
    cache: SQLAlchemyCache, caplog: pytest.LogCaptureFixture
) -> None:
    odd = [Generation(text="t", generation_info={"created": object()})]
    with caplog.at_level(logging.WARNING, logger="langchain_sqlalchemy_cache"):
        cache.update("p", LLM, odd)
    assert "not caching" in caplog.text
    assert cache.lookup("p", LLM) is None


async def test_store_prompts_false_keeps_only_hashes(make_cache: CacheFactory) -> None:
    cache = make_cache(store_prompts=False)
    secret_prompt = "my card number is 4111 1111 1111 1111"
    await cache.aupdate(secret_prompt, LLM, [Generation(text="noted")])
    cache.update("another", LLM, [Generation(text="x")])
    assert await cache.alookup(secret_prompt, LLM) == [Generation(text="noted")]
    assert cache.lookup("another", LLM) == [Generation(text="x")]
    table = table_of(cache)
    with cache.sync_engine.connect() as connection:
        rows = connection.execute(select(table.c.prompt, table.c.llm_string)).all()
    assert [tuple(row) for row in rows] == [(None, None), (None, None)]
    await cache.aclose()


def test_prompts_are_stored_by_default_for_inspection(cache: SQLAlchemyCache) -> None:
    cache.update("what is 2+2?", LLM, [Generation(text="4")])
    with cache.sync_engine.connect() as connection:
        prompt = connection.execute(select(table_of(cache).c.prompt)).scalar_one()
    assert json.loads(prompt) == "what is 2+2?"
