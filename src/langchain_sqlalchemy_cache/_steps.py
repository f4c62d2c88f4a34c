"""Operations of several statements written once, as generators, and their two runners.

An operation that needs more than one statement (a purge's page loop, a trim, the table
statistics) is a plain generator: it yields what to run (``Execute`` or ``Fetch``) and
is sent the reply, as psycopg's sans-I/O generators are. It does no I/O, so it cannot
know whether it runs on the sync or the async side. ``run_sync`` drives one over the
``SyncExecutor``, ``run_async`` over the ``AsyncExecutor``; whatever deadline and error
policy surround the runner apply to every statement of the run.

A runner sends each reply and closes the generator when the run ends, whether by its
return, an error or cancellation: an error is never thrown into it, so its ``finally``
blocks (and only they) see a run cut short.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from contextlib import AbstractAsyncContextManager, closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from sqlalchemy import Executable, Row

from ._statements import Params

if TYPE_CHECKING:
    from ._async_io import AsyncExecutor
    from ._sync_io import SyncExecutor

T = TypeVar("T")


@dataclass(frozen=True)
class Execute:
    """Run a statement that returns no rows; the reply is how many rows it changed."""

    statement: Executable
    params: Params | None = None


@dataclass(frozen=True)
class Fetch:
    """Run a SELECT; the reply is all its rows."""

    statement: Executable
    params: Params


Request = Execute | Fetch
Reply = int | Sequence[Row[Any]]
# An operation: yields requests, is sent their replies, returns its result.
Steps = Generator[Request, Reply, T]


def execute(statement: Executable, params: Params | None = None) -> Steps[int]:
    """One ``Execute`` step, for ``yield from``: how many rows the statement changed."""
    return cast(int, (yield Execute(statement, params)))


def fetch(statement: Executable, params: Params) -> Steps[Sequence[Row[Any]]]:
    """One ``Fetch`` step, for ``yield from``: the rows of the SELECT."""
    return cast(Sequence[Row[Any]], (yield Fetch(statement, params)))


@dataclass(frozen=True)
class _Done(Generic[T]):
    value: T


def _advance(steps: Steps[T], reply: Reply | None) -> Request | _Done[T]:
    """The next request of ``steps`` (sent ``reply``, None to start), or its result."""
    try:
        return next(steps) if reply is None else steps.send(reply)
    except StopIteration as done:
        return _Done(done.value)


def run_sync(steps: Steps[T], executor: SyncExecutor) -> T:
    """Run ``steps`` to its end on the sync side; return what it returns."""
    with closing(steps):
        step = _advance(steps, None)
        while not isinstance(step, _Done):
            if isinstance(step, Fetch):
                reply: Reply = executor.fetch(step.statement, step.params)
            else:
                reply = executor.execute(step.statement, step.params)
            step = _advance(steps, reply)
        return step.value


async def run_async(
    steps: Steps[T],
    executor: AsyncExecutor,
    slot: Callable[[], AbstractAsyncContextManager[Any]],
) -> T:
    """Run ``steps`` to its end on the async side; return what it returns.

    Each statement holds one of the loop's connection slots (``slot()``) while it runs,
    as batched lookups and updates do; between statements the slot is free for them.
    """
    with closing(steps):
        step = _advance(steps, None)
        while not isinstance(step, _Done):
            async with slot():
                if isinstance(step, Fetch):
                    reply: Reply = await executor.fetch(step.statement, step.params)
                else:
                    reply = await executor.execute(step.statement, step.params)
            step = _advance(steps, reply)
        return step.value
