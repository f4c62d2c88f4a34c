"""The cache's own CPU per hit, with the database taken out.

``benchmarks.hot`` measures hits against PostgreSQL, where the server, the driver and a
noisy machine all move the figures. This takes them out: the cache's batch function is
replaced by a dictionary of the stored payloads, reached after one event-loop hop (as a
reply would be), and so are the connections of ``benchmarks.hot``'s batching floor. What
is left is each side's own Python: the key, the queue, the wake-up and the decode on
both; the deadline, the error policy, the statistics and the coalescer on this cache's
side. The figure is process CPU per hit, the median over rounds that alternate the two.

It reaches into private attributes of the cache and the floor on purpose: it is a
diagnostic of where the cache's time goes, not a use of its API.

    python -m benchmarks.own_cost [--concurrency 1,100,1000] [--rounds 10] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from langchain_sqlalchemy_cache import SQLAlchemyCache
from langchain_sqlalchemy_cache._codec import encode_generations
from langchain_sqlalchemy_cache._keys import cache_key

from .peers import AsyncpgBatchFloor
from .subjects import Backend
from .workload import build_workload

DEFAULT_POSTGRES = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SLOTS = 5

Lookup = Callable[[str, str], Awaitable[Any]]
Stored = dict[str, tuple[bytes, float]]


class DictConnection:
    """An asyncpg connection's ``fetch`` for the batching floor, served from a dictionary."""

    def __init__(self, stored: Stored) -> None:
        self.stored = stored

    async def fetch(self, _query: str, keys: list[str]) -> list[tuple[str, bytes]]:
        """The rows of the keys found, after one loop hop, as the floor's statement."""
        await asyncio.sleep(0)
        return [(key, self.stored[key][0]) for key in keys if key in self.stored]


async def fetch(stored: Stored, keys: Sequence[str]) -> list[tuple[bytes, float] | None]:
    """The statement's stand-in: one loop hop, then the stored rows."""
    await asyncio.sleep(0)
    return [stored.get(key) for key in keys]


async def cpu_per_hit(lookup: Lookup, prompts: Sequence[str], llm: str, c: int, s: float) -> float:
    """Process CPU per hit, in microseconds, of ``c`` tasks calling ``lookup`` for ``s``."""
    served = 0
    indexes = itertools.count()
    stop = time.perf_counter() + s

    async def worker() -> None:
        nonlocal served
        while time.perf_counter() < stop:
            if await lookup(prompts[next(indexes) % len(prompts)], llm) is None:
                raise AssertionError("a stored entry was not found")
            served += 1

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(c)))
    return (time.process_time() - started) / served * 1e6


async def run(args: argparse.Namespace) -> None:
    """Every concurrency level: this cache against the floor, rounds alternating."""
    workload = build_workload(args.keys)
    llm = workload.llm_string
    now = time.time()
    stored: Stored = {
        cache_key(prompt, llm): (encode_generations(value), now)
        for prompt, value in zip(workload.prompts, workload.values, strict=True)
    }
    # An engine is made, never connected: every lookup is served by ``fetch``.
    cache = SQLAlchemyCache(args.postgres, table_name="own_cost_never_created", local_max_bytes=0)
    lookups: Any = cache._lookups
    lookups._run_batch = lambda keys: fetch(stored, keys)
    # A lone call runs in its caller's task, as the floor's lone call does (in the
    # benchmark proper, asyncpg's driver path decides that).
    lookups._inline = lambda: True
    # benchmarks.hot's floor itself, its connections replaced; never set up or torn down.
    floor = AsyncpgBatchFloor(Backend("postgresql", pg_url=args.postgres), SLOTS)
    floor.connections.idle = [DictConnection(stored) for _ in range(SLOTS)]
    floor._select = ""
    print(f"{'c':>5} {'this cache':>12} {'floor':>8} {'ratio':>6} {'extra':>7}  (CPU us per hit)")
    try:
        for c in args.levels:
            figures: dict[str, list[float]] = {"ours": [], "floor": []}
            for round_ in range(args.rounds):
                pair = [("ours", cache.alookup), ("floor", floor.alookup)]
                for name, lookup in pair if round_ % 2 else reversed(pair):
                    figures[name].append(
                        await cpu_per_hit(lookup, workload.prompts, llm, c, args.seconds)
                    )
            ours, base = statistics.median(figures["ours"]), statistics.median(figures["floor"])
            print(f"{c:>5} {ours:>12.1f} {base:>8.1f} {base / ours:>5.2f}x {ours - base:>7.1f}")
    finally:
        await cache.aclose()


def main(argv: list[str] | None = None) -> int:
    """Print this cache's and the floor's CPU per hit at each concurrency."""
    warnings.simplefilter("ignore", DeprecationWarning)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.own_cost", description=__doc__)
    parser.add_argument("--concurrency", default="1,100,1000")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="an URL, never connected to")
    args = parser.parse_args(argv)
    args.levels = [int(c) for c in args.concurrency.split(",")]
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
