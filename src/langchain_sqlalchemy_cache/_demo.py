"""The demo: a LangChain chat model answering through the cache, a miss then a hit."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.outputs import ChatResult
from sqlalchemy import MetaData

from ._cache import SQLAlchemyCache
from ._schema import cache_table

DEMO_TABLE = "langchain_sqlalchemy_cache_demo"
MODEL_LATENCY_S = 0.5


class _SlowFakeChatModel(FakeListChatModel):
    """langchain_core's fake chat model, with the latency of a real one."""

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        await asyncio.sleep(MODEL_LATENCY_S)
        return self._generate(messages, stop=stop, **kwargs)


async def _ask(cache: SQLAlchemyCache, out: Any) -> None:
    model = _SlowFakeChatModel(responses=["Paris."], cache=cache)
    question = [HumanMessage("What is the capital of France?")]
    async with cache.async_engine.begin() as connection:
        # The demo's own table: start from a miss every time, on the current layout.
        await connection.run_sync(cache_table(MetaData(), DEMO_TABLE).drop, checkfirst=True)
    for label in ("miss", "hit "):
        start = time.perf_counter()
        answer = await model.ainvoke(question)
        elapsed_ms = (time.perf_counter() - start) * 1000
        print(f"{label}  {elapsed_ms:8.1f} ms  {answer.content!r}", file=out)
    await cache.aclose()


def run_demo(url: str | None, out: Any) -> None:
    """Run the demo on ``url``, or on a SQLite file in a temporary folder."""
    with tempfile.TemporaryDirectory() as folder:
        target = url or f"sqlite:///{Path(folder) / 'demo.db'}"
        # The demo is about the cache: a database problem should show, not be a miss.
        cache = SQLAlchemyCache(target, table_name=DEMO_TABLE, on_error="raise")
        print(f"cache: {cache!r}", file=out)
        print(f"model: a fake chat model that takes {MODEL_LATENCY_S * 1000:.0f} ms", file=out)
        asyncio.run(_ask(cache, out))
