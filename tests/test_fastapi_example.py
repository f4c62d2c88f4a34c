"""examples/fastapi_app.py driven through httpx's ASGI transport, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field
from sqlalchemy import create_engine, event, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from examples import fastapi_app
from examples.fastapi_app import create_app
from langchain_sqlalchemy_cache import SQLAlchemyCache

from .conftest import drop_table, unique_table
from .helpers import held_idle

PROMPTS = [f"question {i}" for i in range(20)]


class SlowEchoModel(BaseChatModel):
    """Answers ``echo: <prompt>`` after ``delay`` seconds; counts its calls per prompt."""

    delay: float = 0.05
    calls: dict[str, int] = Field(default_factory=dict)
    failing: set[str] = Field(default_factory=set)  # prompts it raises on
    gate: asyncio.Event | None = None  # async calls answer only once it is set

    @property
    def _llm_type(self) -> str:
        return "slow-echo"

    def _answer(self, messages: list[BaseMessage]) -> ChatResult:
        prompt = str(messages[-1].content)
        if prompt in self.failing:
            msg = f"the model is down for {prompt!r}"
            raise RuntimeError(msg)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(f"echo: {prompt}"))])

    def _count(self, messages: list[BaseMessage]) -> None:
        prompt = str(messages[-1].content)
        self.calls[prompt] = self.calls.get(prompt, 0) + 1

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._count(messages)
        time.sleep(self.delay)
        return self._answer(messages)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        self._count(messages)
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay)
        return self._answer(messages)


@pytest.fixture
def table(backend_url: str) -> Iterator[str]:
    """A table name of the test's own, dropped afterwards."""
    name = unique_table()
    yield name
    with SQLAlchemyCache(backend_url, table_name=name, create_table=False) as cache:
        drop_table(cache, name)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan (ASGITransport does not) around a client of the app."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


async def ask(client: httpx.AsyncClient, prompt: str) -> httpx.Response:
    return await client.post("/chat", json={"prompt": prompt})


async def burst(client: httpx.AsyncClient, count: int = 200) -> list[tuple[str, httpx.Response]]:
    """``count`` concurrent requests, cycling over the 20 prompts."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(count)]
    responses = await asyncio.gather(*(ask(client, prompt) for prompt in prompts))
    return list(zip(prompts, responses, strict=True))


def assert_answered(results: list[tuple[str, httpx.Response]]) -> None:
    for prompt, response in results:
        assert response.status_code == 200, response.text
        assert response.json() == {"answer": f"echo: {prompt}"}


async def count_rows(engine: AsyncEngine, table: str) -> int:
    async with engine.connect() as connection:
        quoted = connection.dialect.identifier_preparer.quote_identifier(table)
        return int((await connection.execute(text(f"SELECT count(*) FROM {quoted}"))).scalar_one())


def sync_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1).replace(
        "mysql://", "mysql+pymysql://", 1
    )


async def test_concurrent_requests_call_the_model_once_per_prompt(
    backend_url: str, table: str
) -> None:
    app = create_app(backend_url, SlowEchoModel(), table_name=table)
    async with serving(app) as client:
        model: SlowEchoModel = app.state.model
        assert_answered(await burst(client))
        assert model.calls == dict.fromkeys(PROMPTS, 1)

        assert_answered(await burst(client))
        assert sum(model.calls.values()) == 20  # all 200 from the cache
        assert await count_rows(app.state.cache.async_engine, table) == 20

    # A new app on the same database: the answers outlived the first one.
    again = create_app(backend_url, SlowEchoModel(), table_name=table)
    async with serving(again) as client:
        assert_answered(await burst(client))
        assert again.state.model.calls == {}


async def test_a_failing_call_fails_its_waiters_only_and_is_retried(
    backend_url: str, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    broken = PROMPTS[3]
    app = create_app(backend_url, SlowEchoModel(failing={broken}), table_name=table)
    async with serving(app) as client:
        model: SlowEchoModel = app.state.model
        results = await burst(client)
        assert_answered([(p, r) for p, r in results if p != broken])
        failed = [r for p, r in results if p == broken]
        assert len(failed) == 10
        for response in failed:
            assert response.status_code == 502
            assert response.json() == {"detail": "the chat model failed"}
        assert model.calls == dict.fromkeys(PROMPTS, 1)  # one call, shared by its 10 waiters
        logged = [r for r in caplog.records if r.name == fastapi_app.logger.name]
        assert [r.getMessage() for r in logged] == ["the chat model failed"]
        assert await count_rows(app.state.cache.async_engine, table) == 19

        # Nothing of the failure is kept: the next request calls the model again.
        assert (await ask(client, broken)).status_code == 502
        assert model.calls[broken] == 2
        model.failing.clear()
        assert_answered([(broken, await ask(client, broken))])
        assert model.calls[broken] == 3
        assert_answered(await burst(client))
        assert sum(model.calls.values()) == 22


async def called(model: SlowEchoModel, prompt: str) -> None:
    """Return once the model is answering ``prompt``."""
    deadline = time.monotonic() + 10
    while prompt not in model.calls:
        assert time.monotonic() < deadline, f"the model was never asked {prompt!r}"
        await asyncio.sleep(0.005)


async def test_a_client_that_goes_away_cancels_nothing_shared(
    backend_url: str, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The model answers when the test says: a loaded machine cannot let a call end
    # before the client that is to leave has left.
    gate = asyncio.Event()
    app = create_app(backend_url, SlowEchoModel(gate=gate, delay=0), table_name=table)
    async with serving(app) as client:
        model: SlowEchoModel = app.state.model
        # Told when a request has come to the shared calls (the app's SingleFlight).
        flight: fastapi_app.SingleFlight[str, str] = app.state.calls
        arrived: list[str] = []
        came = asyncio.Condition()

        async def run(key: str, call: Callable[[], Awaitable[str]]) -> str:
            async with came:
                arrived.append(key)
                came.notify_all()
            return await fastapi_app.SingleFlight.run(flight, key, call)

        monkeypatch.setattr(flight, "run", run)
        leader = asyncio.create_task(ask(client, "shared"))
        await called(model, "shared")
        follower = asyncio.create_task(ask(client, "shared"))
        async with came:  # the follower waits on the leader's call
            await came.wait_for(lambda: arrived == ["shared", "shared"])
        leader.cancel()
        await asyncio.wait({leader})
        assert leader.cancelled()
        gate.set()
        response = await follower
        assert_answered([("shared", response)])
        assert model.calls == {"shared": 1}

        # A call whose only client left still finishes and is cached before shutdown.
        gate.clear()
        alone = asyncio.create_task(ask(client, "abandoned"))
        await called(model, "abandoned")
        alone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await alone
        gate.set()
    assert model.calls == {"shared": 1, "abandoned": 1}
    again = create_app(backend_url, SlowEchoModel(), table_name=table)
    async with serving(again) as client:
        assert_answered([("abandoned", await ask(client, "abandoned"))])
        assert again.state.model.calls == {}


async def backend_pids(engine: AsyncEngine, count: int) -> set[int]:
    """The server pids of the ``count`` idle connections in the engine's pool."""
    connections = [await engine.connect() for _ in range(count)]
    try:
        return {
            int((await c.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            for c in connections
        }
    finally:
        for connection in connections:
            await connection.close()


async def test_the_lifespan_closes_the_cache(backend_url: str, table: str) -> None:
    app = create_app(backend_url, SlowEchoModel(delay=0), table_name=table)
    async with serving(app) as client:
        assert_answered(await burst(client, 40))
        cache: SQLAlchemyCache = app.state.cache
        pool = cache.async_engine.sync_engine.pool
        assert isinstance(pool, QueuePool)
        idle = pool.checkedin()
        held = held_idle(cache)  # checked out, held for the next statements
        assert idle + held >= 1
        closed: list[object] = []
        event.listen(pool, "close", lambda dbapi_connection, record: closed.append(record))
        postgres = cache.async_engine.dialect.name == "postgresql"
        pids = await backend_pids(cache.async_engine, idle) if postgres else set()
        assert pool.checkedin() == idle  # the probe opened no connection of its own
    # Shutdown closed every connection of the pool, held ones too, on the app's own loop.
    assert len(closed) == idle + held
    after = cache.async_engine.sync_engine.pool
    assert isinstance(after, QueuePool)
    assert after is not pool
    assert after.checkedin() == 0
    if postgres:
        engine = create_engine(sync_url(backend_url))
        try:
            query = text("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(:pids)")
            for _ in range(100):  # the server ends a backend shortly after its client quits
                with engine.connect() as connection:
                    alive = connection.execute(query, {"pids": list(pids)}).scalar_one()
                if alive == 0:
                    break
                await asyncio.sleep(0.05)
            assert alive == 0
        finally:
            engine.dispose()


async def test_the_module_app_needs_chat_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHAT_MODEL", raising=False)
    app = fastapi_app.app
    assert isinstance(app, FastAPI)
    with pytest.raises(RuntimeError, match="set CHAT_MODEL"):
        async with app.router.lifespan_context(app):
            pass


async def test_a_shared_call_cancelled_before_it_ran_frees_its_prompt() -> None:
    # At shutdown a shared call can be cancelled before its first step: the prompt must
    # not stay mapped to that dead task, or every later request for it would fail.
    flight = fastapi_app.SingleFlight[str, str]()

    async def answer() -> str:
        return "fresh"

    waiter = asyncio.ensure_future(flight.run("prompt", answer))
    await asyncio.sleep(0)  # the waiter made the shared task; it has not run yet
    flight._calls["prompt"].cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert "prompt" not in flight._calls
    assert await flight.run("prompt", answer) == "fresh"
