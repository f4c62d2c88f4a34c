"""Timing loops: N workers (asyncio tasks or threads) share a bounded budget of operations.

Each worker takes the next operation index from a shared counter until the budget's
count is reached or its time is up, and records the latency of every operation it ran.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

AsyncOp = Callable[[int], Awaitable[bool]]
SyncOp = Callable[[int], bool]
"""An operation takes its index and returns whether its result was the expected one."""


@dataclass(frozen=True)
class Budget:
    """At most ``ops`` operations, and no new one started after ``seconds``."""

    ops: int
    seconds: float


@dataclass
class Tally:
    """What a set of workers did: latencies of successful ops, wrong results, errors."""

    latencies: list[float] = field(default_factory=list)
    wrong: int = 0
    errors: int = 0
    first_error: str | None = None

    def record_error(self, exc: BaseException) -> None:
        """Count a failed operation, keeping the first message."""
        self.errors += 1
        if self.first_error is None:
            self.first_error = f"{type(exc).__name__}: {exc}"[:300]


@dataclass(frozen=True)
class RunStats:
    """The outcome of one timed run."""

    ops: int
    errors: int
    wrong: int
    elapsed_s: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float
    time_capped: bool
    first_error: str | None
    loop_lag_p99_ms: float | None = None
    loop_lag_max_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON."""
        return dict(self.__dict__)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of ``values`` (0.0 if empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


def _stats(tally: Tally, elapsed: float, budget: Budget) -> RunStats:
    done = len(tally.latencies)
    return RunStats(
        ops=done,
        errors=tally.errors,
        wrong=tally.wrong,
        elapsed_s=elapsed,
        ops_per_s=done / elapsed if elapsed > 0 else 0.0,
        p50_ms=percentile(tally.latencies, 0.50) * 1e3,
        p99_ms=percentile(tally.latencies, 0.99) * 1e3,
        mean_ms=(sum(tally.latencies) / done * 1e3) if done else 0.0,
        time_capped=done + tally.errors < budget.ops,
        first_error=tally.first_error,
    )


class LoopLagMonitor:
    """Sleeps 1 ms in a loop on the running event loop and records each oversleep."""

    def __init__(self, interval: float = 0.001) -> None:
        self._interval = interval
        self._lags: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._stop = False

    async def _run(self) -> None:
        while not self._stop:
            start = time.perf_counter()
            await asyncio.sleep(self._interval)
            self._lags.append(time.perf_counter() - start - self._interval)

    def start(self) -> None:
        """Start sampling on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> tuple[float, float]:
        """Stop sampling; return (p99, max) oversleep in milliseconds."""
        self._stop = True
        if self._task is not None:
            await self._task
        return percentile(self._lags, 0.99) * 1e3, max(self._lags, default=0.0) * 1e3


async def idle_loop_lag(seconds: float = 0.5) -> tuple[float, float]:
    """Loop lag of an idle loop on this machine, as the floor of the figures under load."""
    monitor = LoopLagMonitor()
    monitor.start()
    await asyncio.sleep(seconds)
    return await monitor.stop()


async def run_async(op: AsyncOp, concurrency: int, budget: Budget, *, lag: bool) -> RunStats:
    """Run ``op`` from ``concurrency`` asyncio tasks on the running loop."""
    counter = itertools.count()
    tally = Tally()
    go = asyncio.Event()
    deadline = 0.0

    async def worker() -> None:
        await go.wait()
        while time.perf_counter() < deadline:
            index = next(counter)
            if index >= budget.ops:
                return
            start = time.perf_counter()
            try:
                ok = await op(index)
            except Exception as exc:
                tally.record_error(exc)
                continue
            tally.latencies.append(time.perf_counter() - start)
            tally.wrong += not ok

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(0)  # let every task reach go.wait()
    monitor = LoopLagMonitor() if lag else None
    if monitor is not None:
        monitor.start()
    began = time.perf_counter()
    deadline = began + budget.seconds
    go.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    stats = _stats(tally, elapsed, budget)
    if monitor is not None:
        lag_p99, lag_max = await monitor.stop()
        stats = replace(stats, loop_lag_p99_ms=lag_p99, loop_lag_max_ms=lag_max)
    return stats


def run_threads(op: SyncOp, concurrency: int, budget: Budget) -> RunStats:
    """Run ``op`` from ``concurrency`` threads."""
    counter = itertools.count()  # next() on itertools.count is atomic under the GIL
    tallies = [Tally() for _ in range(concurrency)]
    go = threading.Event()
    deadline = [0.0]

    def worker(tally: Tally) -> None:
        go.wait()
        while time.perf_counter() < deadline[0]:
            index = next(counter)
            if index >= budget.ops:
                return
            start = time.perf_counter()
            try:
                ok = op(index)
            except Exception as exc:
                tally.record_error(exc)
                continue
            tally.latencies.append(time.perf_counter() - start)
            tally.wrong += not ok

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in tallies]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline[0] = began + budget.seconds
    go.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    merged = Tally()
    for tally in tallies:
        merged.latencies.extend(tally.latencies)
        merged.wrong += tally.wrong
        merged.errors += tally.errors
        merged.first_error = merged.first_error or tally.first_error
    return _stats(merged, elapsed, budget)


class TracedPeak:
    """tracemalloc peak of Python allocations above the level at entry, in MiB.

    Slows the code under it down, so runs measured under it are never timed.
    """

    def __init__(self) -> None:
        self.peak_mib = 0.0
        self._base = 0

    def __enter__(self) -> TracedPeak:
        gc.collect()
        tracemalloc.start()
        self._base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        return self

    def __exit__(self, *exc: object) -> None:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        self.peak_mib = (peak - self._base) / 2**20
