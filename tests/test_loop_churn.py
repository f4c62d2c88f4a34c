"""Event loops that end with calls in flight: nothing printed from the cache's own
engines (no thread tracebacks, no unraisable exceptions, no ResourceWarning)."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from langchain_core.outputs import Generation
from sqlalchemy.ext.asyncio import create_async_engine

from langchain_sqlalchemy_cache import SQLAlchemyCache
from langchain_sqlalchemy_cache._loops import PerLoop

from .conftest import CacheFactory

pytestmark = pytest.mark.timeout(240)

RUNS = 200
THREADS = 4
RUNS_PER_THREAD = 25
CALLS = 5


@dataclass
class Reports:
    """What Python would have printed: thread failures, unraisables, warnings."""

    threads: list[str] = field(default_factory=list)
    unraisable: list[str] = field(default_factory=list)
    # Every warning since the fixture started, recorded as it is raised.
    caught: list[warnings.WarningMessage] = field(default_factory=list)

    def all(self) -> list[str]:
        gc.collect()  # connections dropped unclosed warn when collected
        found = [
            f"{w.category.__name__}: {w.message}"
            for w in self.caught
            if issubclass(w.category, (ResourceWarning, RuntimeWarning))
        ]
        return [*self.threads, *self.unraisable, *found]


@pytest.fixture
def reports(monkeypatch: pytest.MonkeyPatch) -> Iterator[Reports]:
    found = Reports()

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        found.threads.append(f"{args.thread}: {args.exc_type.__name__}: {args.exc_value}")

    def unraisable_hook(args: Any) -> None:
        found.unraisable.append(f"{args.exc_type.__name__}: {args.exc_value} in {args.object}")

    monkeypatch.setattr(threading, "excepthook", thread_hook)
    monkeypatch.setattr(sys, "unraisablehook", unraisable_hook)
    # The test asserts reports.all() before this fixture's teardown: the warnings are read
    # there, from the live record (read after the yield, they were never asserted).
    gc.collect()  # what earlier tests left to the collector warns now, not in this test
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found.caught = caught
        yield found


def _run_with_calls_in_flight(cache: SQLAlchemyCache, run: int) -> None:
    async def main() -> None:
        value = [Generation(text=str(run))]
        in_flight = [
            asyncio.ensure_future(call)
            for j in range(CALLS)
            for call in (cache.aupdate(f"p{run}-{j}", "m", value), cache.alookup(f"p{j}", "m"))
        ]
        # Let the calls reach the driver (connecting, or a statement under way), then
        # return: asyncio.run cancels them and closes the loop.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not all(call.done() for call in in_flight)

    asyncio.run(main())


def _churn(cache: SQLAlchemyCache, runs: range) -> None:
    for run in runs:
        _run_with_calls_in_flight(cache, run)


def _in_threads(target: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=target, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_asyncio_run_ending_with_calls_in_flight_prints_nothing(
    make_cache: CacheFactory, reports: Reports
) -> None:
    cache = make_cache()
    _churn(cache, range(RUNS))
    cache.update("last", "m", [Generation(text="x")])
    assert cache.lookup("last", "m") == [Generation(text="x")]
    cache.close()
    assert reports.all() == []


def test_threads_each_running_loops_print_nothing(
    make_cache: CacheFactory, reports: Reports
) -> None:
    cache = make_cache()
    _in_threads(lambda t: _churn(cache, range(t * 1000, t * 1000 + RUNS_PER_THREAD)))
    cache.update("last", "m", [Generation(text="x")])
    assert cache.lookup("last", "m") == [Generation(text="x")]
    cache.close()
    assert reports.all() == []


def test_a_callers_sqlite_engine_closes_each_finished_loops_connections(
    tmp_path: Path, reports: Reports
) -> None:
    # The caller's own AsyncEngine gets no loop-end clean-up from the cache, which leaves
    # it alone; each asyncio.run finds the last one's loop closed and terminates its idle
    # connections then. For aiosqlite that closes the file and ends the worker thread
    # (aiosqlite's Connection.stop(), new in 0.22.1) rather than leaving the connections
    # to the garbage collector, which warns that each was deleted before being closed.
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}")
    cache = SQLAlchemyCache(engine, local_max_bytes=0)  # each lookup reaches the table
    for run in range(5):
        value = [Generation(text=str(run))]
        asyncio.run(cache.aupdate(f"p{run}", "m", value))
        assert asyncio.run(cache.alookup(f"p{run}", "m")) == value

    async def last_run() -> None:
        assert await cache.alookup("p4", "m") == [Generation(text="4")]
        await cache.aclose()
        await engine.dispose()  # the caller's engine: the caller closes it

    asyncio.run(last_run())
    cache.close()
    assert reports.all() == []


def test_loops_that_ended_are_not_kept_alive_by_the_cache(make_cache: CacheFactory) -> None:
    # Every per-loop registry holds values that refer to their loop (a closer's finalizer
    # hook, futures, timers), so a weak key alone never let a closed loop go: each
    # asyncio.run left its loop behind for the cache's lifetime. Now a new loop's first
    # call drops what the closed ones left; at most the last loop is still known.
    cache = make_cache(single_flight=True)
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def calls(run: int) -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        await cache.aupdate(f"p{run}", "m", [Generation(text=str(run))])
        found = await asyncio.gather(*(cache.alookup(f"p{run}", "m") for _ in range(20)))
        assert found == [[Generation(text=str(run))]] * 20

    for run in range(5):
        asyncio.run(calls(run))
    gc.collect()
    alive = [ref() is not None for ref in loops]
    assert alive[:-1] == [False] * 4, alive
    cache.close()


class _Value:
    """A per-loop value that can be watched with a weak reference."""


def test_per_loop_values_stay_with_their_loop_when_loops_take_turns() -> None:
    # PerLoop remembers the last loop it served (its fast path): a loop that asks after
    # another one must still get its own value, and a closed loop's value must go.
    values: PerLoop[_Value] = PerLoop(_Value)
    first = asyncio.new_event_loop()
    second = asyncio.new_event_loop()

    async def get() -> _Value:
        return values.get()

    try:
        a = first.run_until_complete(get())
        b = second.run_until_complete(get())
        assert a is not b
        assert first.run_until_complete(get()) is a
        assert second.run_until_complete(get()) is b
        # Loops made and ended in between get values of their own.
        other = [asyncio.run(get()) for _ in range(2)]
        assert other[0] is not other[1], "each asyncio.run is a loop of its own"
        assert {id(v) for v in other}.isdisjoint({id(a), id(b)})
        assert first.run_until_complete(get()) is a
    finally:
        first.close()
        second.close()
    gone = weakref.ref(a)
    del a, b, other
    values.drop_closed()
    gc.collect()
    assert gone() is None, "a closed loop's value is still held"
