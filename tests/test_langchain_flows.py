"""Real LangChain calls answered through the cache: set_llm_cache and a model's cache=."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from langchain_core.globals import set_llm_cache
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langchain_sqlalchemy_cache import SQLAlchemyCache

from .fake_models import CountingChatModel

MESSAGES = [SystemMessage("You are terse."), HumanMessage("What is the capital of France?")]


@pytest.fixture
def global_cache(cache: SQLAlchemyCache) -> Iterator[SQLAlchemyCache]:
    set_llm_cache(cache)
    yield cache
    set_llm_cache(None)


async def test_ainvoke_twice_calls_the_model_once(global_cache: SQLAlchemyCache) -> None:
    model = CountingChatModel()
    first = await model.ainvoke(MESSAGES)
    second = await model.ainvoke(MESSAGES)
    assert model.calls == 1
    assert isinstance(second, AIMessage)
    assert second.content == first.content
    assert second.tool_calls == first.tool_calls
    # LangChain zeroes the cost of a cache hit; the token counts come from the cache.
    assert second.usage_metadata == {**(first.usage_metadata or {}), "total_cost": 0}
    await global_cache.aclose()


def test_invoke_twice_calls_the_model_once(global_cache: SQLAlchemyCache) -> None:
    model = CountingChatModel()
    first = model.invoke(MESSAGES)
    second = model.invoke(MESSAGES)
    assert model.calls == 1
    assert second.content == first.content
    assert second.tool_calls == first.tool_calls


async def test_sync_and_async_calls_share_entries(global_cache: SQLAlchemyCache) -> None:
    model = CountingChatModel()
    model.invoke(MESSAGES)
    await model.ainvoke(MESSAGES)
    assert model.calls == 1
    await global_cache.aclose()


async def test_different_messages_or_settings_miss(global_cache: SQLAlchemyCache) -> None:
    model = CountingChatModel()
    await model.ainvoke(MESSAGES)
    await model.ainvoke([*MESSAGES[:1], HumanMessage("And of Spain?")])
    assert model.calls == 2
    warmer = CountingChatModel(temperature=0.7)
    await warmer.ainvoke(MESSAGES)
    assert warmer.calls == 1
    await warmer.ainvoke(MESSAGES)
    assert warmer.calls == 1
    # A call with another stop sequence is another llm_string.
    await model.ainvoke(MESSAGES, stop=["\n"])
    assert model.calls == 3
    await global_cache.aclose()


async def test_abatch_answers_repeats_from_the_cache(global_cache: SQLAlchemyCache) -> None:
    model = CountingChatModel()
    prompts = [[HumanMessage(f"question {i % 5}")] for i in range(20)]
    await model.abatch(prompts[:5])
    assert model.calls == 5
    answers = await model.abatch(prompts)
    assert model.calls == 5
    assert [a.content for a in answers[:5]] == [a.content for a in answers[5:10]]
    await global_cache.aclose()


async def test_model_cache_field_overrides_the_global_cache(cache: SQLAlchemyCache) -> None:
    set_llm_cache(None)
    model = CountingChatModel(cache=cache)
    await model.ainvoke(MESSAGES)
    model.invoke(MESSAGES)
    await model.ainvoke(MESSAGES)
    assert model.calls == 1
    uncached = CountingChatModel(cache=False)
    await uncached.ainvoke(MESSAGES)
    await uncached.ainvoke(MESSAGES)
    assert uncached.calls == 2
    await cache.aclose()
