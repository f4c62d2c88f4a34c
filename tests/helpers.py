"""What several test modules share. Test modules import this (or conftest), never each
other."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from langchain_core.outputs import Generation
from sqlalchemy import Engine, MetaData, Table, update
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from langchain_sqlalchemy_cache import SQLAlchemyCache, cache_table
from langchain_sqlalchemy_cache._keys import cache_key

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_MYSQL_URL = "mysql://root@127.0.0.1:3306/test"


def postgres_url_from_env() -> str:
    """The PostgreSQL server the tests use: TEST_POSTGRES_URL, or the local default."""
    return os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)


def mysql_url_from_env() -> str:
    """The MySQL/MariaDB server the tests use: TEST_MYSQL_URL, or the local default."""
    return os.environ.get("TEST_MYSQL_URL", DEFAULT_MYSQL_URL)


def held_idle(cache: Any) -> int:
    """Connections the cache holds idle on the running loop (checked out of the pool)."""
    return int(cache._async._held.idle_count())


async def release_held(cache: Any) -> None:
    """Return the connections the cache holds idle on the running loop to the pool."""
    await cache._async._held.release_idle()


def queue_pool(engine: Engine | AsyncEngine) -> QueuePool:
    """The engine's pool, which counts its connections (every backend's default pool)."""
    pool = engine.pool
    assert isinstance(pool, QueuePool), pool
    return pool


def value(text_: str) -> list[Generation]:
    """One cached answer: a single generation with this text."""
    return [Generation(text=text_)]


# The table of a cache, as the test that made it knows it (the cache does not expose it).


@dataclass(frozen=True)
class MadeCache:
    table: Table
    namespace: str


_made: weakref.WeakKeyDictionary[SQLAlchemyCache, MadeCache] = weakref.WeakKeyDictionary()


def remember(
    cache: SQLAlchemyCache, table_name: str, schema: str | None = None, namespace: str = ""
) -> SQLAlchemyCache:
    """Record which table and namespace ``cache`` was made with; return it."""
    _made[cache] = MadeCache(cache_table(MetaData(), table_name, schema), namespace)
    return cache


def table_of(cache: SQLAlchemyCache) -> Table:
    """The table a cache made by the ``make_cache`` fixture (or ``remember``ed) uses."""
    return _made[cache].table


def key_of(cache: SQLAlchemyCache, prompt: str, llm_string: str) -> str:
    """The primary key of an entry of ``cache`` (see ``cache_table``'s ``key`` column)."""
    return cache_key(prompt, llm_string, _made[cache].namespace)


def age(cache: SQLAlchemyCache, prompt: str, seconds: float, llm_string: str = "llm") -> None:
    """Make an entry look written ``seconds`` ago (rather than sleeping in a test)."""
    table = table_of(cache)
    key = key_of(cache, prompt, llm_string)
    with cache.sync_engine.connect() as connection:
        connection.execute(
            update(table).where(table.c.key == key).values(updated_at=time.time() - seconds)
        )


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Wait until the system's own state satisfies ``condition``, looked at between turns
    of the event loop; fail if it never does (the timeout only guards against hanging)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.005)


async def cancellation_storm(
    call: Callable[[int], Awaitable[Any]], expected: Callable[[int], Any], seed: int
) -> None:
    """500 calls, each cancelled after a random 0-50 ms; those that finish are right.

    The delays only spread the cancellations over every stage of a call (queued, in a
    batch, on the wire); no outcome depends on them.
    """
    rng = random.Random(seed)

    async def call_then_cancel(i: int) -> None:
        task = asyncio.ensure_future(call(i))
        await asyncio.sleep(rng.uniform(0, 0.05))
        task.cancel()
        try:
            result = await task
        except asyncio.CancelledError:
            return
        assert result is None or result == expected(i)

    await asyncio.gather(*(call_then_cancel(i) for i in range(500)))


def run_cli(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    """Run ``python -m langchain_sqlalchemy_cache ARGS`` as a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "langchain_sqlalchemy_cache", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=stdin,
    )


# Stored payloads an attacker with write access to the table might leave there.
HOSTILE_PAYLOADS = {
    "langchain_core constructor of a prompt template": json.dumps(
        [
            {
                "lc": 1,
                "type": "constructor",
                "id": ["langchain", "prompts", "prompt", "PromptTemplate"],
                "kwargs": {"template": "{x}", "input_variables": ["x"]},
            }
        ]
    ),
    "a class outside the allowlist": json.dumps(
        [{"class": "PromptTemplate", "fields": {"template": "{x}", "input_variables": ["x"]}}]
    ),
    "a message class outside the allowlist": json.dumps(
        [
            {
                "class": "ChatGeneration",
                "fields": {},
                "message": {"class": "ChatOpenAI", "fields": {}},
            }
        ]
    ),
    "a secret placeholder": json.dumps(
        [{"class": "Generation", "fields": {"text": {"lc": 1, "type": "secret", "id": ["HOME"]}}}]
    ),
    "truncated json": '[{"class": "Generation", "fields": {"te',
    "not a list": json.dumps({"class": "Generation", "fields": {"text": "x"}}),
    "fields not an object": json.dumps([{"class": "Generation", "fields": ["text"]}]),
    "deeply nested": "[" * 100_000 + "]" * 100_000,
    "empty": "",
    "huge": "[" + '{"class": "Generation", "fields": {"text": 1}},' * 100_000 + "1]",
}
