"""single_flight: concurrent misses of one key wait for its first caller's store."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from langchain_sqlalchemy_cache import ConfigurationError, SQLAlchemyCache
from langchain_sqlalchemy_cache._single_flight import Flights

from .conftest import CacheFactory
from .freezeproxy import closed_port
from .helpers import Clock, eventually, value

LLM = "fake-llm"
PROMPTS = [f"question {i}" for i in range(20)]


class SlowModel(BaseChatModel):
    """Answers ``echo: <prompt>`` after a pause; counts calls; may fail a prompt once."""

    delay: float = 0.05
    calls: dict[str, int] = Field(default_factory=dict)
    fail_once: set[str] = Field(default_factory=set)

    @property
    def _llm_type(self) -> str:
        return "slow-echo"

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        raise NotImplementedError

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt = str(messages[-1].content)
        self.calls[prompt] = self.calls.get(prompt, 0) + 1
        await asyncio.sleep(self.delay)
        if prompt in self.fail_once:
            self.fail_once.discard(prompt)
            msg = f"the model failed on {prompt!r}"
            raise RuntimeError(msg)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(f"echo: {prompt}"))])


def flights(cache: SQLAlchemyCache) -> Flights:
    assert cache._flights is not None
    return cache._flights


@pytest.mark.parametrize("local_max_bytes", [0, 32 * 2**20], ids=["tier-off", "tier-on"])
async def test_200_concurrent_calls_over_20_prompts_call_the_model_20_times(
    make_cache: CacheFactory, local_max_bytes: int
) -> None:
    cache = make_cache(single_flight=True, local_max_bytes=local_max_bytes)
    model = SlowModel(cache=cache)
    prompts = [PROMPTS[i % 20] for i in range(200)]
    answers = await asyncio.gather(*(model.ainvoke(p) for p in prompts))
    assert [a.content for a in answers] == [f"echo: {p}" for p in prompts]
    assert model.calls == dict.fromkeys(PROMPTS, 1)
    assert cache.stats().hits == 180
    assert len(flights(cache)) == 0
    await cache.aclose()


def unreachable_cache(**settings: Any) -> SQLAlchemyCache:
    """A cache whose database refuses every connection at once."""
    return SQLAlchemyCache(
        f"postgresql://postgres@127.0.0.1:{closed_port()}/test",
        single_flight=3600,  # only a store, or a filler's end, releases a waiter
        local_max_bytes=0,
        breaker_cooldown=600,
        **settings,
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("breaker", ["closed", "open"])
async def test_lookups_the_database_cannot_answer_still_call_the_model_once_per_prompt(
    breaker: str,
) -> None:
    # Every lookup fails (or is short-circuited) and so does every store: the waiters
    # get the filler's answer all the same, from memory of the flight, not the table.
    cache = unreachable_cache(breaker_threshold=1 if breaker == "open" else 1000)
    if breaker == "open":
        # In a task of its own: it fills that key, and its end frees it.
        assert await asyncio.create_task(cache.alookup("opens the breaker", LLM)) is None
        assert cache.stats().breaker == "open"
    model = SlowModel(cache=cache)
    prompts = [PROMPTS[i % 20] for i in range(200)]
    answers = await asyncio.gather(*(model.ainvoke(p) for p in prompts))
    assert [a.content for a in answers] == [f"echo: {p}" for p in prompts]
    assert model.calls == dict.fromkeys(PROMPTS, 1)
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.writes) == (180, 0, 0)
    if breaker == "open":  # 200 lookups and 20 updates answered without a statement
        assert (stats.errors, stats.short_circuited) == (1, 220)
    else:
        assert (stats.errors, stats.short_circuited) == (220, 0)
    assert len(flights(cache)) == 0
    await cache.aclose()


@pytest.mark.timeout(60)
async def test_a_sync_lookup_the_database_cannot_answer_waits_for_the_filler() -> None:
    cache = unreachable_cache()
    assert cache.lookup("p", LLM) is None  # fails; this thread fills "p"
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(cache.lookup("p", LLM)))
    thread.start()
    await eventually(lambda: flights(cache).waiting() == 1, "the thread waiting")
    cache.update("p", LLM, value("filled"))  # fails too; the waiter gets the answer
    await asyncio.to_thread(thread.join, 30)
    assert got == [value("filled")]
    stats = cache.stats()
    # The waiter found "p" in flight before sending anything: only the filler's two
    # statements failed.
    assert (stats.hits, stats.misses, stats.errors) == (1, 0, 2)
    await cache.aclose()


async def test_without_single_flight_every_concurrent_miss_calls_the_model(
    make_cache: CacheFactory,
) -> None:
    cache = make_cache()
    model = SlowModel(cache=cache)
    await asyncio.gather(*(model.ainvoke("same") for _ in range(10)))
    assert model.calls == {"same": 10}
    await cache.aclose()


async def test_a_failing_model_releases_the_next_waiter(make_cache: CacheFactory) -> None:
    # The limit is an hour: only the end of the failed call can release a waiter here.
    cache = make_cache(single_flight=3600)
    model = SlowModel(cache=cache, fail_once={"flaky"})
    results = await asyncio.gather(
        *(model.ainvoke("flaky") for _ in range(10)), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert [str(f) for f in failures] == ["the model failed on 'flaky'"]
    assert [r.content for r in results if isinstance(r, AIMessage)] == ["echo: flaky"] * 9
    assert model.calls == {"flaky": 2}
    assert len(flights(cache)) == 0
    await cache.aclose()


async def test_cancelled_waiters_leave_nothing_behind(make_cache: CacheFactory) -> None:
    cache = make_cache(single_flight=True)
    assert await cache.alookup("p", LLM) is None  # this task fills "p"
    waiters = [asyncio.create_task(cache.alookup("p", LLM)) for _ in range(5)]
    await eventually(lambda: flights(cache).waiting() == 5, "five waiters")
    for waiter in waiters:
        waiter.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    assert all(w.cancelled() for w in waiters)
    assert flights(cache).waiting() == 0
    await cache.aupdate("p", LLM, value("filled"))
    assert len(flights(cache)) == 0
    assert await cache.alookup("p", LLM) == value("filled")
    await cache.aclose()


async def test_a_waiter_cancelled_as_it_is_made_filler_hands_on(
    make_cache: CacheFactory,
) -> None:
    cache = make_cache(single_flight=3600)
    leader_done = asyncio.Event()

    async def leader() -> None:
        assert await cache.alookup("p", LLM) is None
        await leader_done.wait()  # then ends without storing

    lead = asyncio.create_task(leader())
    await eventually(lambda: len(flights(cache)) == 1, "the leader's miss")
    first = asyncio.create_task(cache.alookup("p", LLM))
    await eventually(lambda: flights(cache).waiting() == 1, "the first waiter")
    second = asyncio.create_task(cache.alookup("p", LLM))
    await eventually(lambda: flights(cache).waiting() == 2, "the second waiter")
    # Runs right after the flight's own callback made `first` the filler, before
    # `first` could resume: it is cancelled while holding the key.
    lead.add_done_callback(lambda _: first.cancel())
    leader_done.set()
    assert await second is None  # handed on: `second` fills
    assert first.cancelled()
    await eventually(lambda: len(flights(cache)) == 0, "the flight ended with its last filler")
    await cache.aclose()


async def test_sync_and_async_waiters_get_the_store(make_cache: CacheFactory) -> None:
    cache = make_cache(single_flight=True, local_max_bytes=0)
    assert await cache.alookup("p", LLM) is None
    got: list[object] = []
    thread = threading.Thread(target=lambda: got.append(cache.lookup("p", LLM)))
    thread.start()
    waiter = asyncio.create_task(cache.alookup("p", LLM))
    await eventually(lambda: flights(cache).waiting() == 2, "a thread and a task waiting")
    await cache.aupdate("p", LLM, value("filled"))
    assert await waiter == value("filled")
    await asyncio.to_thread(thread.join, 30)
    assert got == [value("filled")]
    await cache.aclose()


async def test_a_filler_that_runs_out_of_time_releases_one_waiter(
    make_cache: CacheFactory,
) -> None:
    cache = make_cache(single_flight=0.2)
    # Time is the test's to move: on a loaded machine the released filler's own 0.2 s
    # could run out before it stores, releasing a second waiter. Waiters still look
    # at the clock every 0.2 s of real time.
    clock = Clock(0.0)
    flights(cache)._clock = clock
    assert await cache.alookup("p", LLM) is None  # this task fills, and never stores
    missed: list[int] = []
    store = asyncio.Event()

    async def caller(number: int) -> object:
        # As LangChain does: a miss calls the model (here: waits) and stores its answer.
        found = await cache.alookup("p", LLM)
        if found is None:
            missed.append(number)
            await store.wait()
            await cache.aupdate("p", LLM, value(f"from {number}"))
        return found

    callers = [asyncio.create_task(caller(n)) for n in range(3)]
    await eventually(lambda: flights(cache).waiting() == 3, "three callers waiting")
    assert not missed  # nobody is released while the filler has time
    clock.now += 0.2  # the filler's time runs out
    await eventually(lambda: bool(missed), "a waiter released to fill")
    assert len(missed) == 1
    assert flights(cache).waiting() == 2  # the others keep waiting
    store.set()
    results = await asyncio.gather(*callers)
    assert results.pop(missed[0]) is None
    assert results == [value(f"from {missed[0]}")] * 2
    await cache.aclose()


async def test_a_filler_asking_again_is_not_made_to_wait(make_cache: CacheFactory) -> None:
    cache = make_cache(single_flight=3600, local_max_bytes=0)
    assert await cache.alookup("p", LLM) is None
    assert await cache.alookup("p", LLM) is None  # the same task: no wait for itself
    assert await asyncio.to_thread(_sync_twice, cache) == [None, None]
    await cache.aclose()


def _sync_twice(cache: SQLAlchemyCache) -> list[object]:
    return [cache.lookup("q", LLM), cache.lookup("q", LLM)]


async def test_a_filler_whose_task_ended_frees_the_key(make_cache: CacheFactory) -> None:
    cache = make_cache(single_flight=3600)
    await asyncio.create_task(_miss(cache))
    await eventually(lambda: len(flights(cache)) == 0, "the key freed")
    assert await cache.alookup("p", LLM) is None


async def _miss(cache: SQLAlchemyCache) -> object:
    return await cache.alookup("p", LLM)


def test_single_flight_arguments_are_checked(backend_url: str) -> None:
    for bad in (0, -1, "yes"):
        with pytest.raises(ConfigurationError, match="single_flight must be False, True"):
            SQLAlchemyCache(backend_url, single_flight=bad)  # type: ignore[arg-type]
