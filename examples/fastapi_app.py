"""A FastAPI app that answers prompts with a chat model, through a shared LLM cache.

Run it from the repository root (``pip install langchain uvicorn`` and the provider's
package, e.g. ``langchain-openai``):

    CHAT_MODEL=openai:gpt-4o-mini LLM_CACHE_URL=postgresql://app@db-host/app \
        uvicorn examples.fastapi_app:app

    curl -s localhost:8000/chat -H 'content-type: application/json' -d '{"prompt": "Hi"}'
    curl -s localhost:8000/health   # 200 when the cache's database answers, else 503

``LLM_CACHE_URL`` defaults to a SQLite file, ``llm-cache.db``; ``CHAT_MODEL`` is any
``provider:model`` that ``langchain.chat_models.init_chat_model`` accepts. In your own
code (and in tests) call ``create_app(url, model)`` with the model object.

Concurrent requests for one new prompt call the model once, in two layers:

- the cache is opened with ``single_flight=True``: while one call has missed a prompt and
  not yet stored its answer, every other lookup of it in this process (this route,
  other routes, background jobs, sync code) waits for that answer instead of calling the
  model; if that call fails, the next waiter calls the model. That option alone is
  enough for most apps;
- the route's own ``SingleFlight`` helper adds one thing the cache cannot do: a call
  whose client disconnects keeps running, in a task of its own, and its answer still
  reaches the requests waiting for it (the cache would hand the prompt to the next
  waiter, which would call the model again).

See docs/in-process-tier.md for both options of the cache that make hits fast and
stampedes rare: the in-process tier (on by default) and single-flight misses.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel

from langchain_sqlalchemy_cache import SQLAlchemyCache

logger = logging.getLogger(__name__)

DEFAULT_CACHE_URL = "sqlite:///llm-cache.db"

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """One call per key at a time: callers of a key already in flight share its result.

    The cache alone cannot stop a stampede: ten concurrent requests for a new prompt
    all look the prompt up before the first answer is stored, so all ten miss and call
    the model. Here the first request for a key starts the call in a task of its own
    and the others await that task. When it ends (answer or error) the key is freed, so
    the next request is a cache hit or, after an error, a fresh try. This de-duplicates
    within one process; other processes are still served by the shared cache.
    """

    def __init__(self) -> None:
        self._calls: dict[K, asyncio.Task[V]] = {}

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        """Return ``await call()``, or the result of the call already running for ``key``.

        An error of the call is raised to every caller that shares it.
        """
        task = self._calls.get(key)
        if task is None:
            task = self._calls[key] = asyncio.ensure_future(self._lead(key, call))
            # Also freed if the task is cancelled before it ever ran (at shutdown).
            task.add_done_callback(lambda done: self._forget(key, done))
        # A client that disconnects cancels its own wait, never the call the others share.
        return await asyncio.shield(task)

    async def _lead(self, key: K, call: Callable[[], Awaitable[V]]) -> V:
        try:
            return await call()
        finally:
            # Freed before the task completes, so no caller can join a finished call.
            self._forget(key, asyncio.current_task())

    def _forget(self, key: K, task: asyncio.Future[V] | None) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]

    async def wait(self) -> None:
        """Wait for the calls in flight to end (their answers are still being cached)."""
        await asyncio.gather(*self._calls.values(), return_exceptions=True)


class ChatRequest(BaseModel):
    """The body of ``POST /chat``."""

    prompt: str


class ChatResponse(BaseModel):
    """The answer of ``POST /chat``."""

    answer: str


def model_from_env() -> BaseChatModel:
    """The chat model named by ``CHAT_MODEL`` (needs ``pip install langchain``)."""
    name = os.environ.get("CHAT_MODEL")
    if not name:
        msg = "set CHAT_MODEL to a provider:model, e.g. CHAT_MODEL=openai:gpt-4o-mini"
        raise RuntimeError(msg)
    from langchain.chat_models import init_chat_model  # type: ignore[import-not-found, unused-ignore]

    model: BaseChatModel = init_chat_model(name)
    return model


def create_app(
    cache_url: str,
    model: BaseChatModel | None = None,
    *,
    table_name: str = "langchain_llm_cache",
) -> FastAPI:
    """An app whose ``POST /chat`` answers ``{"prompt": ...}`` with ``{"answer": ...}``.

    Args:
        cache_url: The cache's database URL (``postgresql://...``, ``sqlite:///file.db``).
        model: The chat model; None: the one ``CHAT_MODEL`` names, made at startup.
        table_name: The cache's table, created on first use.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        chat_model = model if model is not None else model_from_env()
        # Opened and closed here, on the event loop that serves the requests.
        # single_flight: concurrent misses of one prompt wait for the first one's answer.
        async with SQLAlchemyCache(cache_url, table_name=table_name, single_flight=True) as cache:
            app.state.cache = cache
            # The cache goes on this app's model (a copy; the caller's model is left
            # alone) rather than set_llm_cache(cache): the global cache is shared by
            # everything in the process, another app or a test included, and clearing it
            # at shutdown would pull it from under them. Models made elsewhere that
            # should use it take it the same way: model_copy(update={"cache": cache}).
            app.state.model = chat_model.model_copy(update={"cache": cache})
            # Keyed by the prompt alone: the app has one model with fixed settings. Key
            # on everything that changes the answer (model, temperature, system prompt).
            app.state.calls = SingleFlight[str, str]()
            yield
            # Calls whose clients went away still finish and store their answer: let
            # them, before the cache closes.
            await app.state.calls.wait()

    app = FastAPI(title="Chat, cached", lifespan=lifespan)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        # Readiness: 503 while the cache's database does not answer in time. The app
        # still serves /chat then (every lookup is a miss), so use it where a cacheless
        # instance should leave the load balancer, not as a liveness probe.
        report = await request.app.state.cache.ahealth()
        return JSONResponse(
            {
                "ok": report.ok,
                "latency": report.latency,
                "error": report.error,
                "breaker": report.breaker,
            },
            status_code=200 if report.ok else 503,
        )

    @app.post("/chat")
    async def chat(body: ChatRequest, request: Request) -> ChatResponse:
        state = request.app.state

        async def ask() -> str:
            try:
                message = await state.model.ainvoke(body.prompt)
            except Exception:
                logger.exception("the chat model failed")  # once, not once per waiter
                raise
            return str(message.text)

        try:
            answer = await state.calls.run(body.prompt, ask)
        except Exception:
            raise HTTPException(status_code=502, detail="the chat model failed") from None
        return ChatResponse(answer=answer)

    return app


app = create_app(os.environ.get("LLM_CACHE_URL", DEFAULT_CACHE_URL))
