"""Cache hits with 0, 1 and 2 read replicas on a local streaming-replication cluster.

    python -m benchmarks.replicas [--callers 50] [--seconds 5] [--rounds 3]

Starts a primary and two standbys from the PostgreSQL server binaries (as
tests/pgcluster.py does, on loopback ports, torn down afterwards), fills a table with
entries, waits until both standbys replayed them, then runs async hits from
``--callers`` concurrent tasks and sync hits from one thread against a cache with 0, 1
and 2 replicas, in interleaved rounds, and prints the median of each.

Read the figures for what they are: every server runs on the same machine as the
client, sharing its cores (2 on the machine this project is measured on), so a
replica adds no capacity here. What the figures show is the cost of routing (the lag
check, the turn-taking, the fallback bookkeeping) and that reads really spread, not
how far replicas scale reads on separate hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
from dataclasses import dataclass

from langchain_core.outputs import Generation

from langchain_sqlalchemy_cache import SQLAlchemyCache
from tests.pgcluster import Cluster, running_cluster

LLM = "benchmark-llm"
TABLE = "replicas_bench"
ENTRIES = 1000


@dataclass
class Round:
    replicas: int
    async_hits_per_s: float
    sync_hits_per_s: float
    lookup_p50_ms: float | None
    lookup_p99_ms: float | None
    reads_by_server: dict[str, int]


def fill(cluster: Cluster) -> None:
    writer = SQLAlchemyCache(cluster.primary.url(), table_name=TABLE, on_error="raise")
    for i in range(ENTRIES):
        writer.update(f"prompt {i}", LLM, [Generation(text=f"answer {i}")])
    writer.close()
    cluster.wait_replayed()


async def async_hits(cache: SQLAlchemyCache, callers: int, seconds: float) -> float:
    done = 0
    misses = 0
    deadline = time.perf_counter() + seconds

    async def caller(worker: int) -> None:
        nonlocal done, misses
        i = worker
        while time.perf_counter() < deadline:
            if await cache.alookup(f"prompt {i % ENTRIES}", LLM) is None:
                misses += 1
            done += 1
            i += callers
        return None

    start = time.perf_counter()
    await asyncio.gather(*(caller(w) for w in range(callers)))
    if misses:
        raise RuntimeError(f"{misses} lookups missed: the benchmark measures hits only")
    return done / (time.perf_counter() - start)


def sync_hits(cache: SQLAlchemyCache, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        if cache.lookup(f"prompt {done % ENTRIES}", LLM) is None:
            raise RuntimeError("a lookup missed: the benchmark measures hits only")
        done += 1
    return done / (time.perf_counter() - start)


def one_round(cluster: Cluster, replicas: int, callers: int, seconds: float) -> Round:
    cache = SQLAlchemyCache(
        cluster.primary.url(),
        table_name=TABLE,
        create_table=False,
        on_error="raise",
        replicas=[node.url() for node in cluster.standbys[:replicas]],
    )
    try:
        asyncio.run(async_hits(cache, callers, 0.5))  # connections and lag checks
        rate = asyncio.run(async_hits(cache, callers, seconds))
        result: dict[str, float] = {}
        thread = threading.Thread(target=lambda: result.update(rate=sync_hits(cache, seconds)))
        thread.start()
        thread.join()
        stats = cache.stats()
        return Round(
            replicas=replicas,
            async_hits_per_s=rate,
            sync_hits_per_s=result["rate"],
            lookup_p50_ms=stats.lookup_p50_ms,
            lookup_p99_ms=stats.lookup_p99_ms,
            reads_by_server=dict(stats.reads_by_server),
        )
    finally:
        cache.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=50, help="concurrent async callers")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args()

    print(f"cores: {os.cpu_count()}; every server shares them with this client")
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    with running_cluster(standbys=2) as cluster:
        fill(cluster)
        rounds: dict[int, list[Round]] = {0: [], 1: [], 2: []}
        for _ in range(args.rounds):
            for replicas in rounds:
                rounds[replicas].append(one_round(cluster, replicas, args.callers, args.seconds))
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(
        f"\nmedian of {args.rounds} rounds, {args.callers} async callers / 1 sync thread, "
        f"{args.seconds:g} s each"
    )
    print(f"{'replicas':>8} {'async hits/s':>13} {'sync hits/s':>12} {'p50 ms':>7} {'p99 ms':>7}")
    for replicas, runs in rounds.items():
        p50 = [r.lookup_p50_ms for r in runs if r.lookup_p50_ms is not None]
        p99 = [r.lookup_p99_ms for r in runs if r.lookup_p99_ms is not None]
        print(
            f"{replicas:>8} {statistics.median(r.async_hits_per_s for r in runs):>13,.0f} "
            f"{statistics.median(r.sync_hits_per_s for r in runs):>12,.0f} "
            f"{statistics.median(p50):>7.2f} {statistics.median(p99):>7.2f}"
        )
    print("\nreads per server (last round):")
    for replicas, runs in rounds.items():
        shares = ", ".join(
            f"{server.rsplit('@', 1)[-1]}: {count}"
            for server, count in runs[-1].reads_by_server.items()
        )
        print(f"  {replicas} replicas: {shares}")


if __name__ == "__main__":
    main()
