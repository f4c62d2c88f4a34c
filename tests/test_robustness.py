"""No crash path: answers nested too deep for the encoder, and calls after close."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation

from langchain_sqlalchemy_cache import CacheError, SQLAlchemyCache
from langchain_sqlalchemy_cache._codec import (
    MAX_NESTING,
    UncacheableError,
    _nesting,
    encode_generations,
)

from .conftest import CacheFactory
from .helpers import queue_pool, table_of

LLM = "robustness-test-llm"


def nest(depth: int, leaf: Any, shape: str) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value] if shape == "list" else {"k": value}
    return value


@st.composite
def deep_generations(draw: st.DrawFn) -> list[Generation]:
    """Chat answers nested from shallow to far past the interpreter's recursion limit,
    in additional_kwargs, in tool-call arguments, or in generation_info."""
    depth = draw(st.sampled_from([1, 50, 900, 1_000, 1_100, 3_000, 20_000]))
    shape = draw(st.sampled_from(["list", "dict"]))
    where = draw(st.sampled_from(["additional_kwargs", "tool_args", "generation_info"]))
    deep = nest(depth, draw(st.text(max_size=5)), shape)
    if where == "generation_info":
        return [Generation(text="t", generation_info={"deep": deep})]
    if where == "tool_args":
        message = AIMessage("", tool_calls=[{"name": "f", "args": {"a": deep}, "id": "c1"}])
    else:
        message = AIMessage("t", additional_kwargs={"deep": deep})
    return [ChatGeneration(message=message)]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cache = SQLAlchemyCache(f"sqlite:///{tmp_path_factory.mktemp('deep') / 'c.db'}")
    yield cache
    cache.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(generations=deep_generations())
def test_update_never_raises_on_deep_answers(
    shared_cache: SQLAlchemyCache, generations: list[Generation]
) -> None:
    # The model's answer stands whatever the cache makes of it: stored and read back
    # whole, or skipped with a warning; never an exception out of update.
    shared_cache.update("deep", LLM, generations)
    found = shared_cache.lookup("deep", LLM)
    assert found is None or found == generations
    shared_cache.clear()


@pytest.mark.timeout(60)
async def test_async_update_skips_an_answer_too_deep_to_encode(
    make_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache()
    too_deep = [ChatGeneration(message=AIMessage("t", additional_kwargs=nest(5_000, 1, "dict")))]
    with caplog.at_level(logging.WARNING, logger="langchain_sqlalchemy_cache"):
        for _ in range(20):
            await cache.aupdate("p", LLM, too_deep)
            cache.update("p", LLM, too_deep)
    warnings = [r for r in caplog.records if "not caching" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited
    assert await cache.alookup("p", LLM) is None
    assert cache.stats().writes == 0
    with pytest.raises(TypeError, match="Generation"):
        await cache.aupdate("p", LLM, "not generations")  # type: ignore[arg-type]
    await cache.aclose()


@pytest.mark.parametrize("shape", ["list", "dict"])
def test_the_nesting_limit_is_the_same_on_every_interpreter(shape: str) -> None:
    # 3.13 encodes 5,000 levels where 3.11 stops near 1,000: without a limit of its
    # own, a row one interpreter writes could be a miss on another reading the table.
    def payload_depth(depth: int) -> int:
        generations = [Generation(text="t", generation_info={"deep": nest(depth, 1, shape)})]
        return _nesting(json.loads(encode_generations(generations)))

    # The wrappers around generation_info: the array, the entry, "fields", the info dict.
    fits = MAX_NESTING - payload_depth(0)
    assert payload_depth(fits) == MAX_NESTING
    too_deep = [Generation(text="t", generation_info={"deep": nest(fits + 1, 1, shape)})]
    with pytest.raises(UncacheableError, match=f"more than {MAX_NESTING} levels"):
        encode_generations(too_deep)
    with pytest.raises(UncacheableError, match=f"more than {MAX_NESTING} levels"):
        encode_generations([Generation(text="t", generation_info={"deep": nest(5_000, 1, shape)})])
    # Brackets inside strings are text, not nesting.
    assert encode_generations([Generation(text="[{" * 10_000)])


@pytest.mark.timeout(60)
async def test_unreadable_rows_are_reported_at_a_limited_rate(
    make_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cache = make_cache(local_max_bytes=0)  # read from the table each time
    await cache.aupdate("p", LLM, [Generation(text="x")])
    with cache.sync_engine.begin() as connection:
        connection.execute(table_of(cache).update().values(payload=b"not json"))
    with caplog.at_level(logging.WARNING, logger="langchain_sqlalchemy_cache"):
        for _ in range(50):
            assert cache.lookup("p", LLM) is None
            assert await cache.alookup("p", LLM) is None
    assert len([r for r in caplog.records if "could not be loaded" in r.getMessage()]) == 1
    await cache.aclose()


@pytest.mark.timeout(60)
async def test_every_call_after_aclose_raises(make_cache: CacheFactory) -> None:
    cache = make_cache(on_error="miss")
    await cache.aupdate("p", LLM, [Generation(text="x")])
    await cache.aclose()
    await cache.aclose()  # closing again does nothing
    cache.close()
    calls: list[Any] = [
        lambda: cache.lookup("p", LLM),
        lambda: cache.update("p", LLM, [Generation(text="y")]),
        cache.clear,
        cache.table_stats,
        cache.health,
    ]
    for call in calls:
        with pytest.raises(CacheError, match="cache is closed"):
            call()
    for coroutine in (
        cache.alookup("p", LLM),
        cache.aupdate("p", LLM, [Generation(text="y")]),
        cache.aclear(),
        cache.astats(),
        cache.ahealth(),
    ):
        with pytest.raises(CacheError, match="cache is closed"):
            await coroutine
    # Nothing was reopened behind the caller's back.
    assert queue_pool(cache.async_engine).checkedout() == 0


@pytest.mark.timeout(60)
def test_calls_after_close_raise_and_open_nothing(make_cache: CacheFactory) -> None:
    cache = make_cache(on_error="miss")
    cache.update("p", LLM, [Generation(text="x")])
    cache.close()
    with pytest.raises(CacheError, match="cache is closed"):
        cache.lookup("p", LLM)
    with pytest.raises(CacheError, match="cache is closed"):
        cache.purge_expired()
    assert queue_pool(cache.sync_engine).checkedout() == 0


@pytest.mark.timeout(60)
async def test_a_failure_is_raised_chained_to_its_cause_or_is_a_counted_miss(
    make_cache: CacheFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # The table is missing and may not be created: every call fails before its statement.
    raising = make_cache(
        create_table=False, on_error="raise", breaker_threshold=None, local_max_bytes=0
    )
    for call in (
        lambda: raising.lookup("p", LLM),
        lambda: raising.update("p", LLM, [Generation(text="x")]),
        raising.table_stats,
    ):
        with pytest.raises(CacheError, match="failed") as raised:
            call()
        assert "does not exist" in str(raised.value)
        assert raised.value.__cause__ is not None
        assert type(raised.value.__cause__).__name__ in str(raised.value)
    acalls: list[Callable[[], Awaitable[object]]] = [
        lambda: raising.alookup("p", LLM),
        lambda: raising.aupdate("p", LLM, [Generation(text="x")]),
        raising.aclear,
    ]
    for acall in acalls:
        with pytest.raises(CacheError, match="failed") as araised:
            await acall()
        assert "does not exist" in str(araised.value)
        assert araised.value.__cause__ is not None
        assert type(araised.value.__cause__).__name__ in str(araised.value)
    assert raising.stats().errors == 6

    missing = make_cache(create_table=False, breaker_threshold=None, local_max_bytes=0)
    with caplog.at_level(logging.WARNING, logger="langchain_sqlalchemy_cache"):
        for _ in range(3):
            assert missing.lookup("p", LLM) is None
            assert await missing.alookup("p", LLM) is None
            missing.update("p", LLM, [Generation(text="x")])
    assert missing.stats().errors == 9
    failed = [r.getMessage() for r in caplog.records if "served as a miss" in r.getMessage()]
    assert len(failed) == 2  # one line per operation, rate-limited
    assert all("cache lookup failed" in m or "cache update failed" in m for m in failed)
