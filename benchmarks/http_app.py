"""The FastAPI example app with a chosen cache, for uvicorn: ``benchmarks.http_app:make``.

``BENCH_CACHE`` picks the cache: ``ours`` (this cache, as the example opens it, on
``BENCH_PG_URL`` and ``BENCH_TABLE``), ``redis`` (langchain_community's AsyncRedisCache on
a blocking connection pool) or ``inmemory`` (langchain_core's InMemoryCache). The route,
the SingleFlight helper and the model call are the example's own in every case: only
the cache the example opens is swapped.
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

from fastapi import FastAPI
from langchain_community.cache import AsyncRedisCache
from langchain_core.caches import InMemoryCache
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from examples import fastapi_app

from .peers import REDIS_DB, REDIS_MAX_CONNECTIONS, REDIS_URL


class _Closing:
    """The async context manager protocol the example uses to open and close its cache."""

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Release what the cache holds."""


class RedisForExample(_Closing, AsyncRedisCache):
    """AsyncRedisCache, opened and closed the way the example opens its cache."""

    def __init__(self, *_: Any, **__: Any) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis

        pool = BlockingConnectionPool.from_url(
            f"{REDIS_URL}/{REDIS_DB}", max_connections=REDIS_MAX_CONNECTIONS, timeout=60
        )
        self.client = Redis(connection_pool=pool)
        self.written: set[str] = set()
        super().__init__(self.client)

    async def aupdate(self, prompt: str, llm_string: str, return_val: Any) -> None:
        """Store, remembering the key so that ``aclose`` can delete it."""
        self.written.add(self._key(prompt, llm_string))
        await super().aupdate(prompt, llm_string, return_val)

    async def aclose(self) -> None:
        """Delete the keys this app wrote (the server is shared), close the connections."""
        if self.written:
            await self.client.delete(*self.written)
        await self.client.aclose()


class InMemoryForExample(_Closing, InMemoryCache):
    """InMemoryCache, opened the way the example opens its cache."""

    def __init__(self, *_: Any, **__: Any) -> None:
        super().__init__()


def make() -> FastAPI:
    """The example app with the cache ``BENCH_CACHE`` names (a uvicorn factory)."""
    kind = os.environ["BENCH_CACHE"]
    if kind == "redis":
        fastapi_app.SQLAlchemyCache = RedisForExample  # type: ignore[misc, assignment]
    elif kind == "inmemory":
        fastapi_app.SQLAlchemyCache = InMemoryForExample  # type: ignore[misc, assignment]
    elif kind != "ours":
        msg = f"BENCH_CACHE must be ours, redis or inmemory, got {kind!r}"
        raise ValueError(msg)
    model = FakeListChatModel(responses=["Paris is the capital of France."])
    return fastapi_app.create_app(
        os.environ.get("BENCH_PG_URL", ""), model, table_name=os.environ["BENCH_TABLE"]
    )
