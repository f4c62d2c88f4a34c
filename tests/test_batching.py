"""The coalescing machinery on its own: batch composition, failures, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Literal

import pytest

from langchain_sqlalchemy_cache._batching import Coalescer
from langchain_sqlalchemy_cache._deadline_queue import DeadlineQueue
from langchain_sqlalchemy_cache._loops import PerLoop


class WatchedSemaphore(asyncio.Semaphore):
    """A semaphore that tells when a caller has to wait for it."""

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.waited = asyncio.Event()

    async def acquire(self) -> Literal[True]:
        if self.locked():
            self.waited.set()
        return await super().acquire()


class Recorder:
    """A batch function that records its batches and holds each one until released."""

    def __init__(self, slots: int = 1, max_batch: int = 100) -> None:
        self.batches: list[list[str]] = []
        self.released = 1_000_000  # batches allowed to finish; hold() sets it to 0
        self.changed = asyncio.Condition()
        self.slots = WatchedSemaphore(slots)
        self.coalescer: Coalescer[str, str] = Coalescer(
            self.run, max_batch=max_batch, slots=PerLoop(lambda: self.slots)
        )

    async def run(self, items: Sequence[str]) -> list[str]:
        async with self.changed:
            self.batches.append(list(items))
            number = len(self.batches)
            self.changed.notify_all()
            await self.changed.wait_for(lambda: self.released >= number)
        if "bad" in items:
            raise RuntimeError("batch failed")
        return [item.upper() for item in items]

    def hold(self) -> None:
        """Hold every batch from now on in flight until ``release``."""
        self.released = len(self.batches)

    async def release(self, batches: int = 1_000_000) -> None:
        """Let the first ``batches`` batches finish (all by default)."""
        async with self.changed:
            self.released = batches
            self.changed.notify_all()

    async def started(self, batches: int) -> None:
        """Wait until ``batches`` batches have started."""
        async with self.changed:
            await self.changed.wait_for(lambda: len(self.batches) >= batches)


async def test_a_lone_call_runs_alone_without_waiting_for_company() -> None:
    recorder = Recorder()
    assert await recorder.coalescer.submit("a") == "A"
    assert recorder.batches == [["a"]]


async def test_what_is_queued_together_runs_together() -> None:
    recorder = Recorder(slots=5)
    results = await asyncio.gather(*(recorder.coalescer.submit(x) for x in "abcdef"))
    assert results == ["A", "B", "C", "D", "E", "F"]
    # The first call found the loop idle and went at once; the rest arrived while it
    # was in flight and share one batch, although free slots were left.
    assert recorder.batches == [["a"], ["b", "c", "d", "e", "f"]]


async def test_calls_queued_while_the_slot_is_busy_form_the_next_batch() -> None:
    recorder = Recorder(slots=1)
    recorder.hold()
    first = asyncio.ensure_future(recorder.coalescer.submit("a"))
    await recorder.started(1)
    later = [asyncio.ensure_future(recorder.coalescer.submit(x)) for x in "bcd"]
    await recorder.slots.waited.wait()  # b, c, d are queued; their batch waits for the slot
    assert recorder.batches == [["a"]]  # the slot is taken: b, c, d wait together
    await recorder.release()
    assert await first == "A"
    assert [await t for t in later] == ["B", "C", "D"]
    assert recorder.batches == [["a"], ["b", "c", "d"]]


async def test_a_failing_batch_fails_only_its_own_callers() -> None:
    recorder = Recorder(slots=2, max_batch=2)
    results = await asyncio.gather(
        *(recorder.coalescer.submit(x) for x in ["a", "b", "bad", "c", "d"]),
        return_exceptions=True,
    )
    assert recorder.batches == [["a"], ["b", "bad"], ["c", "d"]]
    assert results[0] == "A"
    assert isinstance(results[1], RuntimeError)
    assert isinstance(results[2], RuntimeError)
    assert results[3:] == ["C", "D"]


async def test_a_cancelled_caller_is_dropped_and_cancels_nobody_else() -> None:
    recorder = Recorder(slots=1)
    recorder.hold()
    blocker = asyncio.ensure_future(recorder.coalescer.submit("a"))
    await recorder.started(1)
    waiting = {x: asyncio.ensure_future(recorder.coalescer.submit(x)) for x in "bcd"}
    await recorder.slots.waited.wait()  # b, c, d are queued behind a
    waiting["c"].cancel()  # cancelled before its batch formed: not sent at all
    await recorder.release()
    assert await blocker == "A"
    assert await waiting["b"] == "B"
    assert await waiting["d"] == "D"
    with pytest.raises(asyncio.CancelledError):
        await waiting["c"]
    assert recorder.batches == [["a"], ["b", "d"]]


async def test_a_caller_cancelled_mid_batch_leaves_the_batch_running() -> None:
    recorder = Recorder(slots=1)
    recorder.hold()
    blocker = asyncio.ensure_future(recorder.coalescer.submit("x"))
    await recorder.started(1)
    tasks = [asyncio.ensure_future(recorder.coalescer.submit(x)) for x in "abc"]
    await recorder.release(1)  # x's batch finishes; a, b, c go as the next one, held
    await recorder.started(2)
    tasks[1].cancel()
    await recorder.release()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert await blocker == "X"
    assert results[0] == "A"
    assert isinstance(results[1], asyncio.CancelledError)
    assert results[2] == "C"
    assert recorder.batches == [["x"], ["a", "b", "c"]]  # b's place was still sent


def test_each_event_loop_gets_its_own_queue_and_slots() -> None:
    recorder_holder: list[Recorder] = []

    async def use() -> str:
        if not recorder_holder:
            recorder_holder.append(Recorder())
        return await recorder_holder[0].coalescer.submit("x")

    assert asyncio.run(use()) == "X"
    assert asyncio.run(use()) == "X"  # a second loop: no "attached to a different loop"


async def test_a_lone_call_runs_its_batch_in_its_own_task_where_inline() -> None:
    tasks: list[asyncio.Task[object] | None] = []

    async def run(items: Sequence[str]) -> list[str]:
        tasks.append(asyncio.current_task())
        return [item.upper() for item in items]

    slots = asyncio.Semaphore(1)
    inline: Coalescer[str, str] = Coalescer(
        run, max_batch=10, slots=PerLoop(lambda: slots), inline=lambda: True
    )
    assert await inline.submit("a") == "A"
    assert tasks == [asyncio.current_task()]  # no task of its own, no hop
    spawning: Coalescer[str, str] = Coalescer(run, max_batch=10, slots=PerLoop(lambda: slots))
    assert await spawning.submit("b") == "B"
    assert tasks[1] is not asyncio.current_task()
    assert not slots.locked()


async def test_cancelling_an_inline_lone_call_cancels_its_batch_and_frees_the_slot() -> None:
    started = asyncio.Event()
    cancelled: list[str] = []

    async def run(items: Sequence[str]) -> list[str]:
        started.set()
        try:
            await asyncio.Event().wait()  # a statement that never gets its reply
        except asyncio.CancelledError:
            cancelled.extend(items)
            raise
        return list(items)

    slots = asyncio.Semaphore(1)
    coalescer: Coalescer[str, str] = Coalescer(
        run, max_batch=10, slots=PerLoop(lambda: slots), inline=lambda: True
    )
    call = asyncio.ensure_future(coalescer.submit("a"))
    await started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert cancelled == ["a"]
    assert not slots.locked()


async def test_callers_past_their_deadline_time_out_and_their_batch_goes_on() -> None:
    # One timer serves every caller of a loop: each fails at its own deadline (the
    # loop's clock, no sleep here), while the batch it rode in finishes for the rest.
    recorder = Recorder(slots=1)
    recorder.coalescer = Coalescer(
        recorder.run,
        max_batch=100,
        slots=PerLoop(lambda: recorder.slots),
        deadlines=DeadlineQueue(0.2),
    )
    recorder.hold()
    first = asyncio.ensure_future(recorder.coalescer.submit("a"))
    await recorder.started(1)
    queued = [asyncio.ensure_future(recorder.coalescer.submit(x)) for x in "bcd"]
    results = await asyncio.gather(first, *queued, return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results), results
    assert {str(r) for r in results} == {"no answer from the database within 0.2s"}
    late = asyncio.ensure_future(recorder.coalescer.submit("e"))  # queued behind "a"
    await recorder.release()
    assert await late == "E"
    assert recorder.batches == [["a"], ["e"]]  # the timed-out "b", "c", "d" never ran


async def test_callers_answered_in_time_leave_the_timer_to_the_next_one() -> None:
    recorder = Recorder(slots=1)
    recorder.coalescer = Coalescer(
        recorder.run,
        max_batch=100,
        slots=PerLoop(lambda: recorder.slots),
        deadlines=DeadlineQueue(0.2),
    )
    answers = await asyncio.gather(*(recorder.coalescer.submit(x) for x in "abc"))
    assert answers == ["A", "B", "C"]
    # Their deadlines come first: the timer finds them answered, passes over them
    # and fails the slow caller at its own deadline, not at theirs.
    recorder.hold()
    slow = asyncio.ensure_future(recorder.coalescer.submit("d"))
    await recorder.started(3)
    with pytest.raises(TimeoutError):
        await slow
    await recorder.release()
