"""The per-loop FIFO of deadlines: futures failed, blocks cut off, others left alone."""

from __future__ import annotations

import asyncio
import sys

import pytest

from langchain_sqlalchemy_cache._deadline_queue import DeadlineQueue


async def test_a_block_still_running_when_due_is_cancelled_and_raises_timeout() -> None:
    deadlines = DeadlineQueue(0.05)
    never = asyncio.Event()
    cancelled = asyncio.Event()

    async def statement() -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError, match=r"within 0\.05s"), deadlines.cut():
        await statement()
    assert cancelled.is_set()  # the awaited statement itself was ended
    task = asyncio.current_task()
    assert task is not None
    if sys.version_info >= (3, 11):
        assert task.cancelling() == 0  # the deadline's own request is taken back


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    deadlines = DeadlineQueue(30)
    entered = asyncio.Event()

    async def caller() -> None:
        with deadlines.cut():
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.ensure_future(caller())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def resumed_by_the_loop() -> None:
    """Suspend until the loop's next step resumes this task (well within any deadline)."""
    loop = asyncio.get_running_loop()
    step: asyncio.Future[None] = loop.create_future()
    loop.call_soon(step.set_result, None)
    await step


async def test_blocks_and_futures_that_end_in_time_are_passed_over() -> None:
    # Half a second: room for a loaded machine to come back to the loop in time.
    deadlines = DeadlineQueue(0.5)
    for _ in range(3):
        with deadlines.cut():
            await resumed_by_the_loop()
    answered = deadlines.future()
    answered.set_result("answer")
    late = deadlines.future()
    # The timer fires for the first entry, passes over everything that ended, and
    # fails only the one future still pending.
    with pytest.raises(TimeoutError):
        await late
    assert answered.result() == "answer"


async def test_a_future_fails_at_its_deadline_not_before() -> None:
    deadlines = DeadlineQueue(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await deadlines.future()
    # asyncio may run a timer up to its clock resolution (well under 1 ms) early.
    assert loop.time() - started >= 0.05 - 0.001


async def test_no_seconds_means_no_deadline() -> None:
    deadlines = DeadlineQueue(None)
    future = deadlines.future()
    with deadlines.cut():
        await resumed_by_the_loop()
    # Nothing was queued for this loop, so no timer can ever fail or cut anything.
    assert deadlines._by_loop.find(asyncio.get_running_loop()) is None
    assert not future.done()
    future.cancel()
