"""Maintenance steps (``_steps``, ``_maintenance``): one generator, two runners.

Every operation here is driven once by ``run_sync`` over the ``SyncExecutor`` and once by
``run_async`` over the ``AsyncExecutor``, on a real table; both must answer alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from langchain_sqlalchemy_cache._async_io import AsyncExecutor
from langchain_sqlalchemy_cache._codec import encode_generations
from langchain_sqlalchemy_cache._engines import resolve_engines
from langchain_sqlalchemy_cache._identity import PairCheck
from langchain_sqlalchemy_cache._keys import llm_key
from langchain_sqlalchemy_cache._loops import LoopEngines
from langchain_sqlalchemy_cache._maintenance import CacheTable
from langchain_sqlalchemy_cache._options import CacheOptions
from langchain_sqlalchemy_cache._statements import PURGE_BATCH_ROWS, entry_row
from langchain_sqlalchemy_cache._steps import Fetch, Steps, execute, run_async, run_sync
from langchain_sqlalchemy_cache._sync_io import SyncExecutor

from .conftest import unique_table
from .helpers import value

GPT = "gpt"
CLAUDE = "claude"


@dataclass
class Sides:
    table: CacheTable
    sync: SyncExecutor
    async_: AsyncExecutor
    # Every statement run_async ran held a slot: entered and left once per statement.
    slots_taken: list[int]

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        self.slots_taken.append(1)
        yield

    async def run_async(self, steps: Steps[Any]) -> Any:
        return await run_async(steps, self.async_, self.slot)


@pytest.fixture
async def sides(backend_url: str) -> AsyncIterator[Sides]:
    """A fresh cache table and both executors on it, as the cache wires them."""
    engines = resolve_engines(backend_url, None)
    options = CacheOptions(table_name=unique_table(), namespace="ns")
    table = CacheTable.build(engines.dialect_name, options)
    pair = PairCheck(
        table.table, engines.sync_engine, engines.async_engine, table.readiness.loop_owner
    )
    loop_engines = LoopEngines(engines.async_engine)
    yield Sides(
        table,
        SyncExecutor(engines.sync_engine, table.table, table.readiness, pair),
        AsyncExecutor(loop_engines, table.table, table.readiness, pair),
        [],
    )
    with engines.sync_engine.connect() as connection:
        table.table.drop(connection, checkfirst=True)
    engines.sync_engine.dispose()
    for engine, _ in loop_engines.engines():  # all of this test's loop: closed politely
        await engine.dispose()


def fill(table: CacheTable, prompts: int, llm_string: str = GPT) -> Steps[int]:
    """Write ``prompts`` entries of one model in one upsert: steps like any other."""
    payload = encode_generations(value("answer"))
    rows = [
        entry_row(f"p{i}", llm_string, payload, 0.0, namespace=table.statements.namespace)
        for i in range(prompts)
    ]
    return (yield from execute(table.statements.upsert, table.statements.upsert_params(rows)))


def stocked(table: CacheTable) -> Steps[tuple[int, int, int]]:
    """Write three GPT and two Claude entries; return what ``count`` says of them."""
    yield from fill(table, 3, GPT)
    yield from fill(table, 2, CLAUDE)
    now = yield from table.now()
    gpt = yield from table.count(llm_key(GPT), None)
    claude = yield from table.count(llm_key(CLAUDE), now + 1)
    everything = yield from table.count(None, None)
    return gpt, claude, everything


async def test_both_runners_give_the_same_statistics(sides: Sides) -> None:
    counts = run_sync(stocked(sides.table), sides.sync)
    assert counts == (3, 2, 5)
    by_sync = run_sync(sides.table.table_stats(), sides.sync)
    by_async = await sides.run_async(sides.table.table_stats())
    assert by_sync == by_async
    assert by_sync.entries == 5
    assert [(m.llm_string, m.entries) for m in by_sync.models] == [(GPT, 3), (CLAUDE, 2)]
    # summary, per model, and the size where the backend tells it: one slot each.
    statements = 2 if sides.table.statements.table_size is None else 3
    assert len(sides.slots_taken) == statements


async def test_both_runners_purge_across_pages_alike(sides: Sides) -> None:
    table = sides.table
    entries = PURGE_BATCH_ROWS * 2 + 7  # three DELETEs, the last one short
    for run in ("sync", "async"):
        deleted_calls: list[int] = []
        run_sync(fill(table, entries), sides.sync)
        cutoff = run_sync(table.now(), sides.sync) + 60  # every entry is older
        steps = table.delete_older(cutoff, functools.partial(deleted_calls.append, 1))
        if run == "sync":
            deleted = run_sync(steps, sides.sync)
        else:
            sides.slots_taken.clear()
            deleted = await sides.run_async(steps)
            assert len(sides.slots_taken) == 3  # one slot per page
        assert deleted == entries, run
        assert deleted_calls == [1], run  # told once, at the end
        assert run_sync(table.count(None, None), sides.sync) == 0


async def test_a_run_cut_short_closes_the_steps_on_both_sides(sides: Sides) -> None:
    """A failed statement ends the run: the steps' ``finally`` runs, nothing is thrown in."""
    table = sides.table
    seen: list[str] = []

    def failing() -> Steps[int]:
        try:
            deleted = yield from fill(table, 4)
            seen.append("filled")
            yield Fetch(text("SELECT * FROM no_such_table_at_all"), {})
            seen.append("unreachable")
            return deleted
        except DBAPIError:  # pragma: no cover - the runners must not throw into steps
            seen.append("thrown in")
            raise
        finally:
            seen.append("closed")

    with pytest.raises(DBAPIError):
        run_sync(failing(), sides.sync)
    assert seen == ["filled", "closed"]
    seen.clear()
    with pytest.raises(DBAPIError):
        await sides.run_async(failing())
    assert seen == ["filled", "closed"]


async def test_a_cancelled_async_run_closes_its_steps(sides: Sides) -> None:
    closed = asyncio.Event()
    started = asyncio.Event()

    @contextlib.asynccontextmanager
    async def slot_that_waits() -> AsyncIterator[None]:
        started.set()
        await asyncio.Event().wait()  # held until cancelled
        yield

    def steps() -> Steps[int]:
        try:
            params = table.statements.purge_params(0.0)
            return (yield from execute(table.statements.purge_batch, params))
        finally:
            closed.set()

    table = sides.table
    task = asyncio.create_task(run_async(steps(), sides.async_, slot_that_waits))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed.is_set()
