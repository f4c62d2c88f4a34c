"""Single-flight misses: one caller per key fills it, the others wait for its store.

When a lookup misses, its caller is about to call the model and store the answer. With
single flight on, that caller becomes the key's *filler*; lookups of the same key
made meanwhile, from any task, event loop or thread of this process, wait for the
store and get its payload instead of a miss (and instead of a model call of their own).

The filler may never store: its model failed, it was cancelled, it chose not to
cache. Then one waiter is released as the next filler and the rest keep waiting:

* at once when the filler is an asyncio task that ends without storing (LangChain
  runs each call's lookup, model call and update in one task);
* otherwise when ``limit`` seconds have passed since the filler took the key (a sync
  caller, a task that goes on with other work).

A filler that looks its own key up again is not made to wait for itself. A waiter
that is cancelled leaves nothing behind; one cancelled just as it was made the filler
hands the role to the next waiter.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final


class _Fill:
    """Outcome of a wait: the caller is now the key's filler (its lookup is a miss)."""


FILL: Final = _Fill()
Outcome = bytes | _Fill


@dataclass
class _Waiter:
    token: object  # the asyncio task or the thread that waits
    wake: Callable[[], None]
    outcome: Outcome | None = None


@dataclass
class _Flight:
    owner: object
    deadline: float
    waiters: deque[_Waiter] = field(default_factory=deque)


def _token() -> object:
    """Who is calling: the running asyncio task, else the thread."""
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return task if task is not None else threading.get_ident()


class Flights:
    """The keys being filled in this process, and who waits for each.

    Args:
        limit: Seconds a filler has to store before a waiter is released to fill.
        clock: Monotonic seconds.
    """

    def __init__(self, limit: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}

    def __len__(self) -> int:
        """Keys being filled now."""
        return len(self._flights)

    def waiting(self) -> int:
        """Callers waiting now, over every key."""
        with self._lock:
            return sum(len(flight.waiters) for flight in self._flights.values())

    # Joining: a miss either takes the key or waits.

    def _join(self, key: str, *, lead: bool, wake: Callable[[], None]) -> _Waiter | _Fill | None:
        """Take the key (FILL), or queue a waiter on it; None: not in flight, not led."""
        token = _token()
        with self._lock:
            flight = self._flights.get(key)
            if flight is None:
                if not lead:
                    return None
                self._flights[key] = _Flight(token, self._clock() + self.limit)
                self._watch(key, token)
                return FILL
            if flight.owner == token:
                # The filler asks again (a retry): it must not wait for itself.
                flight.deadline = self._clock() + self.limit
                return FILL if lead else None
            waiter = _Waiter(token, wake)
            flight.waiters.append(waiter)
            return waiter

    async def await_key(self, key: str, *, lead: bool) -> Outcome | None:
        """Async: the stored payload, FILL (this caller fills), or None (not in flight).

        With ``lead`` a key not in flight is taken (FILL); without, None is returned.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            def resolve() -> None:
                if not future.done():
                    future.set_result(None)

            loop.call_soon_threadsafe(resolve)

        joined = self._join(key, lead=lead, wake=wake)
        if not isinstance(joined, _Waiter):
            return joined
        try:
            while True:
                remaining = self._remaining(key)
                if remaining is not None:
                    await asyncio.wait({future}, timeout=remaining)
                outcome = self._settle(key, joined)
                if outcome is not None:
                    if outcome is FILL:
                        self._watch(key, joined.token)
                    return outcome
        except BaseException:
            self._leave(key, joined)
            raise

    def wait_key(self, key: str, *, lead: bool) -> Outcome | None:
        """Sync twin of ``await_key``: blocks this thread while it waits."""
        event = threading.Event()
        joined = self._join(key, lead=lead, wake=event.set)
        if not isinstance(joined, _Waiter):
            return joined
        try:
            while True:
                remaining = self._remaining(key)
                if remaining is not None:
                    event.wait(remaining)
                outcome = self._settle(key, joined)
                if outcome is not None:
                    return outcome
        except BaseException:
            self._leave(key, joined)
            raise

    def _remaining(self, key: str) -> float | None:
        """Seconds until the key's filler runs out of time (None: the wait is over)."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is None:
                return None
            return max(0.0, flight.deadline - self._clock())

    def _settle(self, key: str, waiter: _Waiter) -> Outcome | None:
        """The waiter's outcome if it has one, taking the key if its filler ran out."""
        with self._lock:
            if waiter.outcome is not None:
                return waiter.outcome
            flight = self._flights.get(key)
            if flight is None or waiter not in flight.waiters:
                # Not reachable: a flight ends only after giving each waiter an outcome.
                # Should it happen, a miss is the safe answer.
                waiter.outcome = FILL
                return FILL
            if self._clock() < flight.deadline:
                return None
            flight.waiters.remove(waiter)
            flight.owner = waiter.token
            flight.deadline = self._clock() + self.limit
            waiter.outcome = FILL
            return FILL

    def _leave(self, key: str, waiter: _Waiter) -> None:
        """A waiter gives up (cancelled): drop it, or pass on the filling it was given."""
        with self._lock:
            flight = self._flights.get(key)
            if flight is None:
                return
            if waiter in flight.waiters:
                flight.waiters.remove(waiter)
            elif waiter.outcome is FILL and flight.owner == waiter.token:
                self._release_next(key, flight)

    # Ending a flight: the store, or the filler's end.

    def stored(self, key: str, payload: bytes) -> None:
        """The key was stored: every waiter gets ``payload``, and the key is free."""
        with self._lock:
            flight = self._flights.pop(key, None)
            if flight is None:
                return
            for waiter in flight.waiters:
                waiter.outcome = payload
        for waiter in flight.waiters:
            try:
                waiter.wake()
            except RuntimeError:  # its event loop is closed: nobody is left to wake
                continue

    def _watch(self, key: str, token: object) -> None:
        """When an asyncio filler ends without storing, release the next waiter at once."""
        if not isinstance(token, asyncio.Task):
            return  # a thread: only the limit releases its waiters

        def ended(task: asyncio.Task[object]) -> None:
            with self._lock:
                flight = self._flights.get(key)
                if flight is not None and flight.owner is task:
                    self._release_next(key, flight)

        token.add_done_callback(ended)

    def _release_next(self, key: str, flight: _Flight) -> None:
        """Make the first waiter the filler, or free the key if nobody waits (locked)."""
        while flight.waiters:
            waiter = flight.waiters.popleft()
            waiter.outcome = FILL
            flight.owner = waiter.token
            flight.deadline = self._clock() + self.limit
            try:
                waiter.wake()
            except RuntimeError:  # its event loop is closed: try the next one
                continue
            return
        del self._flights[key]
