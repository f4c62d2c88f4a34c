"""Coalescing concurrent calls into batches, and bounding what is in flight.

Calls that are waiting at the same moment on one event loop become one statement:
the window is whatever is already queued when a connection slot is free, never a
timer, so a lone call is not delayed. At most ``slots`` statements are in flight per
event loop, so thousands of concurrent callers never exhaust the connection pool.

Every caller has the same deadline, counted from its call, and every batch the same,
counted from its start: one ``DeadlineQueue`` per event loop serves them all. A timer
per caller (``asyncio.timeout``) costs a heap entry each, which was most of the cache's
own time per hit at a thousand concurrent callers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ._deadline_queue import DeadlineQueue
from ._loops import PerLoop

T = TypeVar("T")
R = TypeVar("R")

# Callers woken per event-loop iteration when a batch answers.
_WAKE_SLICE = 8


@dataclass(frozen=True)
class Failed:
    """A batch function's result for an item that failed on its own.

    Its caller gets ``error``; the rest of the batch does not.
    """

    error: Exception


RunBatch = Callable[[Sequence[T]], Awaitable[Sequence[R | Failed]]]


@dataclass
class _Queue(Generic[T, R]):
    slots: asyncio.Semaphore  # the loop's statement slots, shared with other coalescers
    waiting: list[tuple[T, asyncio.Future[R]]] = field(default_factory=list)
    draining: bool = False
    running: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class Coalescer(Generic[T, R]):
    """Queues calls per event loop and runs them as batches of at most ``max_batch``.

    ``run_batch`` gets the items of one batch and returns one result per item, in order
    (a ``Failed`` for an item whose part of the batch failed alone). Every caller gets
    exactly its own result; a failing batch fails only its own callers;
    a cancelled caller is dropped from its batch and cancels nobody else.

    A caller that has no result ``deadlines.seconds`` after its call (default: no
    deadline) raises ``TimeoutError`` (its batch, if it started, goes on for the others).
    A batch still running that long after its start is cancelled where it stands and
    fails with ``TimeoutError``; its callers, queued before it started, are all past
    their own deadlines by then. A lone call run inline has only its batch's deadline,
    which starts with the call.
    """

    def __init__(
        self,
        run_batch: RunBatch[T, R],
        *,
        max_batch: int,
        slots: PerLoop[asyncio.Semaphore],
        inline: Callable[[], bool] | None = None,
        deadlines: DeadlineQueue | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._inline = inline
        self._max_batch = max_batch
        self._deadlines = DeadlineQueue(None) if deadlines is None else deadlines
        self._queues: PerLoop[_Queue[T, R]] = PerLoop(lambda: _Queue(slots.get()))

    def submit(self, item: T) -> Awaitable[R]:
        """Queue ``item``; the returned awaitable gives its result.

        A plain method: a queued caller awaits its future itself, with no coroutine
        frame of this method's around it (a measurable share of each caller's cost at
        a thousand concurrent callers).
        """
        queue = self._queues.get()
        if _alone(queue):
            return self._lone(queue, item)
        return self._queued(queue, item)

    def _queued(self, queue: _Queue[T, R], item: T) -> asyncio.Future[R]:
        future: asyncio.Future[R] = self._deadlines.future()
        queue.waiting.append((item, future))
        if not queue.draining:
            queue.draining = True
            self._spawn(queue, self._drain(queue))
        return future

    async def _lone(self, queue: _Queue[T, R], item: T) -> R:
        # Nothing queued or in flight and a connection free: a lone call. It is its own
        # batch at once; calls that arrive while it runs queue up and share the next.
        if not _alone(queue):  # not awaited at once (ensure_future), and others came
            return await self._queued(queue, item)
        slots = queue.slots
        await slots.acquire()  # free, so this returns without suspending
        if self._inline is not None and self._inline():
            # Bounded by its batch's deadline, which starts with the call.
            return await self._run_alone(queue, item, slots)
        # Skipping the drain task saves an event-loop iteration.
        future: asyncio.Future[R] = self._deadlines.future()
        self._start(queue, [(item, future)], slots)
        return await future

    async def _run_alone(self, queue: _Queue[T, R], item: T, slots: asyncio.Semaphore) -> R:
        """Run a lone call's batch in the caller's own task: no task, no future, no hop.

        Only where ``inline`` says a cancelled statement ends at once (a cancellation
        of the caller, its deadline included, lands in the statement itself, whose
        batch is the caller's alone); elsewhere the batch runs in a task of its own.
        """
        queue.running += 1
        try:
            with self._deadlines.cut():
                result = (await self._run_batch([item]))[0]
        finally:
            queue.running -= 1
            slots.release()
        if isinstance(result, Failed):
            raise result.error
        return result

    def _spawn(self, queue: _Queue[T, R], coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        # The loop keeps only weak references to tasks: hold them until they finish.
        queue.tasks.add(task)
        task.add_done_callback(queue.tasks.discard)

    async def _drain(self, queue: _Queue[T, R]) -> None:
        slots = queue.slots
        try:
            while queue.waiting:
                await slots.acquire()
                # Everything queued while we waited for the slot rides in this batch.
                batch = [(i, f) for i, f in queue.waiting[: self._max_batch] if not f.done()]
                del queue.waiting[: self._max_batch]
                if batch:
                    self._start(queue, batch, slots)
                else:
                    slots.release()
        except BaseException:
            # Cancelled (the loop is shutting down): nobody will serve the queue now.
            for _, future in queue.waiting:
                future.cancel()
            queue.waiting.clear()
            raise
        finally:
            queue.draining = False

    def _start(
        self,
        queue: _Queue[T, R],
        batch: list[tuple[T, asyncio.Future[R]]],
        slots: asyncio.Semaphore,
    ) -> None:
        queue.running += 1  # counted from now, not from when the task first runs
        self._spawn(queue, self._run(queue, batch, slots))

    async def _run(
        self,
        queue: _Queue[T, R],
        batch: list[tuple[T, asyncio.Future[R]]],
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            with self._deadlines.cut():
                results = await self._run_batch([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            queue.running -= 1
            slots.release()
        # Each woken caller decodes its answer in its own task step. Waking a whole
        # batch at once would run all those steps in one loop iteration and stall
        # timers and I/O for as long; waking a slice per iteration keeps the loop live.
        for start in range(0, len(batch), _WAKE_SLICE):
            if start:
                await asyncio.sleep(0)
            for (_, future), result in zip(
                batch[start : start + _WAKE_SLICE],
                results[start : start + _WAKE_SLICE],
                strict=True,
            ):
                if future.done():
                    continue
                if isinstance(result, Failed):
                    future.set_exception(result.error)
                else:
                    future.set_result(result)


def _alone(queue: _Queue[T, R]) -> bool:
    """Nothing queued or in flight on this loop, and a statement slot free."""
    return not queue.running and not queue.draining and not queue.slots.locked()
