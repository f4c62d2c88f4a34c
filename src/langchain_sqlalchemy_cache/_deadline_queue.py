"""Deadlines of one length, kept per event loop in the order they were set.

Every hot-path call of a cache has the same deadline (its ``timeout``), counted from
when the call (or its batch) started, so deadlines come due in the order they were
set: a FIFO and one timer per event loop serve them all. ``asyncio.timeout`` costs a
timer heap entry per use, set and cancelled, and a coroutine for each of its two ends;
at thousands of calls a second that was a tenth of a lone lookup's own CPU time.

Two kinds of deadline share the FIFO: a caller's future, failed with ``TimeoutError``
if still pending when due, and a ``with`` block whose task is cancelled when due and
whose cancellation then leaves the block as ``TimeoutError``, as ``asyncio.timeout``
does (a cancellation from anyone else stays a cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import deque
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from ._deadline import timeout_error
from ._loops import PerLoop


class _Cut:
    """A ``with`` block's deadline: its task is cancelled when due (``fire``)."""

    __slots__ = ("_cancelling", "_seconds", "_task", "fired")

    def __init__(self, task: asyncio.Task[Any], seconds: float) -> None:
        self._task: asyncio.Task[Any] | None = task
        self._seconds = seconds
        self.fired = False
        # Cancellations requested before the block (Python 3.11+): those stay the
        # caller's, as asyncio.timeout leaves them.
        self._cancelling = _cancelling(task)

    def done(self) -> bool:
        """Whether it no longer needs its time: the block ended, or it fired."""
        return self._task is None

    def fire(self) -> None:
        """Due: cancel the block's task."""
        task, self._task = self._task, None
        if task is not None:
            self.fired = True
            task.cancel()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._task = None
        if not self.fired:
            return
        task = asyncio.current_task()
        ours = task is not None and _uncancel(task) <= self._cancelling
        if ours and exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            raise timeout_error(self._seconds) from exc


_NO_CUT: AbstractContextManager[None] = contextlib.nullcontext()  # no deadline


@dataclass
class _Due:
    """One loop's deadlines in the order they come due, and the timer for the first."""

    entries: deque[tuple[float, asyncio.Future[Any] | _Cut]] = field(default_factory=deque)
    timer: asyncio.TimerHandle | None = None


class DeadlineQueue:
    """Deadlines ``seconds`` long (None: none), on every event loop that uses it."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._by_loop: PerLoop[_Due] = PerLoop(_Due)

    def future(self) -> asyncio.Future[Any]:
        """A new future of the running loop, failed with ``TimeoutError`` when due."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self.seconds is not None:
            self._add(loop, self.seconds, future)
        return future

    def cut(self) -> AbstractContextManager[None]:
        """A ``with`` block that raises ``TimeoutError`` if it is still running when due.

        Its task is cancelled then, so the statement it awaits ends where it stands.
        """
        if self.seconds is None:
            return _NO_CUT
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        if task is None:  # not in a task: nothing to cancel, so no deadline
            return _NO_CUT
        cut = _Cut(task, self.seconds)
        self._add(loop, self.seconds, cut)
        return cut

    def _add(
        self,
        loop: asyncio.AbstractEventLoop,
        seconds: float,
        target: asyncio.Future[Any] | _Cut,
    ) -> None:
        due = self._by_loop.get()
        entries = due.entries
        while entries and entries[0][1].done():  # ended early: no need to wait for its time
            entries.popleft()
        entries.append((loop.time() + seconds, target))
        if due.timer is None:
            due.timer = loop.call_at(entries[0][0], _expire, due, seconds)


def _expire(due: _Due, seconds: float) -> None:
    """The timer: end what is due, and wait for the next one."""
    entries = due.entries
    loop = asyncio.get_running_loop()
    now = loop.time()
    while entries and (entries[0][1].done() or entries[0][0] <= now):
        _, target = entries.popleft()
        if isinstance(target, _Cut):
            target.fire()
        elif not target.done():
            target.set_exception(timeout_error(seconds))
    due.timer = loop.call_at(entries[0][0], _expire, due, seconds) if entries else None


if sys.version_info >= (3, 11):

    def _cancelling(task: asyncio.Task[Any]) -> int:
        return task.cancelling()

    def _uncancel(task: asyncio.Task[Any]) -> int:
        return task.uncancel()

else:  # Python 3.10 counts no cancellation requests: a cancellation that meets a fired
    # deadline is taken for the deadline's, as async_timeout does there.

    def _cancelling(task: asyncio.Task[Any]) -> int:
        return 0

    def _uncancel(task: asyncio.Task[Any]) -> int:
        return 0
