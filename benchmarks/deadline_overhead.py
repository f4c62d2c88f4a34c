"""What the per-call deadline and the circuit breaker cost on the hot path.

Two caches on one table, one made with ``timeout=None`` and one with the default
(2 s), serve cache hits from 1 and from 100 asyncio tasks, and the sync facade from one
thread. Rounds interleave the two (their order alternates), so a drift of the shared
machine hits both alike; the figure is the median over rounds of each round's ratio.
The breaker is on in both (its default): the closed state's check is what both pay.

    python -m benchmarks.deadline_overhead [--rounds 7] [--seconds 1.5] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_sqlalchemy_cache import SQLAlchemyCache

from .measure import Budget, run_async, run_threads
from .workload import build_workload

DEFAULT_POSTGRES = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
KEYS = 200
VARIANTS = {"timeout=None": None, "timeout=2.0 (default)": 2.0}
LOADS = (("async c=1", 1), ("async c=100", 100), ("sync c=1", 0))


async def measure(
    caches: dict[str, SQLAlchemyCache], prompts: Sequence[str], llm: str, args: Any
) -> dict[str, dict[str, list[float]]]:
    """Hits/s per load and variant, one figure per round."""
    results: dict[str, dict[str, list[float]]] = {
        load: {name: [] for name in caches} for load, _ in LOADS
    }
    budget = Budget(ops=10**9, seconds=args.seconds)
    for round_ in range(args.rounds):
        order = list(caches) if round_ % 2 == 0 else list(reversed(caches))
        for load, concurrency in LOADS:
            for name in order:
                cache = caches[name]

                async def hit(index: int, cache: SQLAlchemyCache = cache) -> bool:
                    return await cache.alookup(prompts[index % len(prompts)], llm) is not None

                def sync_hit(index: int, cache: SQLAlchemyCache = cache) -> bool:
                    return cache.lookup(prompts[index % len(prompts)], llm) is not None

                if concurrency:
                    stats = await run_async(hit, concurrency, budget, lag=False)
                else:
                    stats = await asyncio.to_thread(run_threads, sync_hit, 1, budget)
                if stats.errors or stats.wrong:
                    msg = f"{name} {load}: {stats.errors} errors, {stats.wrong} misses"
                    raise RuntimeError(msg)
                results[load][name].append(stats.ops_per_s)
    return results


async def bench_backend(label: str, url: str, args: Any) -> list[str]:
    """Rows of the report for one database."""
    table = f"bench_deadline_{uuid.uuid4().hex[:8]}"
    workload = build_workload(KEYS)
    caches = {
        name: SQLAlchemyCache(url, table_name=table, timeout=timeout)
        for name, timeout in VARIANTS.items()
    }
    first = next(iter(caches.values()))
    try:
        for prompt, value in zip(workload.prompts, workload.values, strict=True):
            await first.aupdate(prompt, workload.llm_string, value)
        results = await measure(caches, workload.prompts, workload.llm_string, args)
    finally:
        await first.aclear()
        for cache in caches.values():
            await cache.aclose()
        with first.sync_engine.connect() as connection:
            first._table.drop(connection, checkfirst=True)
        first.sync_engine.dispose()
    rows = []
    base, timed = VARIANTS
    for load, _ in LOADS:
        off, on = results[load][base], results[load][timed]
        ratios = [b / a for a, b in zip(off, on, strict=True)]
        rows.append(
            f"| {label} | {load} | {statistics.median(off):,.0f} | {statistics.median(on):,.0f}"
            f" | {statistics.median(ratios):.3f} | {min(ratios):.3f}-{max(ratios):.3f} |"
        )
    return rows


async def _nothing() -> None:
    return None


async def wrapper_cost(rounds: int, calls: int = 100_000) -> list[str]:
    """Microseconds per call of the deadline machinery alone, no database: the async
    ``AsyncDeadline`` (plus one ``sleep(0)`` per call, in both columns), and the sync
    ``SyncDeadline`` plus one watchdog arm/disarm (what one sync statement pays), each
    with ``None`` and with 2 s, interleaved."""
    from langchain_sqlalchemy_cache._deadline import WATCHDOG, AsyncDeadline, SyncDeadline

    async def async_loop(seconds: float | None) -> float:
        began = time.perf_counter()
        for _ in range(calls):
            async with AsyncDeadline(seconds):
                await _nothing()
            await asyncio.sleep(0)  # let the loop drop cancelled timers, as in real use
        return (time.perf_counter() - began) / calls * 1e6

    def sync_loop(seconds: float | None) -> float:
        target = object()
        began = time.perf_counter()
        for _ in range(calls):
            with SyncDeadline(seconds):
                if seconds is not None:
                    WATCHDOG.disarm(WATCHDOG.arm(target, time.monotonic() + seconds))
        return (time.perf_counter() - began) / calls * 1e6

    figures: dict[str, list[float]] = {}
    for round_ in range(rounds):
        order: list[float | None] = [None, 2.0] if round_ % 2 == 0 else [2.0, None]
        for seconds in order:
            figures.setdefault(f"async {seconds}", []).append(await async_loop(seconds))
            figures.setdefault(f"sync {seconds}", []).append(sync_loop(seconds))
    return [
        f"| {side} | {statistics.median(figures[f'{side} None']):.2f} µs"
        f" | {statistics.median(figures[f'{side} 2.0']):.2f} µs |"
        for side in ("async", "sync")
    ]


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.deadline_overhead")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.5, help="per variant, load, round")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args(argv)
    began = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(
        f"deadline overhead, {began}: {args.rounds} interleaved rounds of {args.seconds:g} s "
        f"per variant and load, {KEYS} keys, hits only; load average {os.getloadavg()}"
    )
    print("\nper call, the deadline machinery alone (no database), median of rounds:")
    print("| side | timeout=None | timeout=2.0 |")
    print("|---|---|---|")
    for row in await wrapper_cost(args.rounds):
        print(row, flush=True)
    print()
    print("| backend | load | hits/s timeout=None | hits/s timeout=2.0 | median ratio | range |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for row in await bench_backend("SQLite", f"sqlite:///{Path(folder) / 'b.db'}", args):
            print(row, flush=True)
    if not args.no_postgres:
        for row in await bench_backend("PostgreSQL", args.postgres, args):
            print(row, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
