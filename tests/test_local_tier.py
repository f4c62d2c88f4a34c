"""The in-process tier: hits without statements, its bounds, and coherence with the table."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation
from sqlalchemy import event

from langchain_sqlalchemy_cache import ConfigurationError, SQLAlchemyCache
from langchain_sqlalchemy_cache._local_tier import ENTRY_OVERHEAD, LocalTier

from .conftest import CacheFactory
from .helpers import Clock, age, table_of, value

LLM = "fake-llm"
CLI = (sys.executable, "-m", "langchain_sqlalchemy_cache")


class Statements:
    """Records the statements both engines of a cache send."""

    def __init__(self, cache: SQLAlchemyCache) -> None:
        self.sent: list[str] = []
        for engine in (cache.async_engine.sync_engine, cache.sync_engine):
            event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.sent.append(statement)

    @property
    def selects(self) -> int:
        """Lookups sent (a first use also inspects the table: not counted)."""
        return sum("payload" in s and "updated_at" in s for s in self.sent)


def hold_clock(cache: SQLAlchemyCache) -> Clock:
    """Put the tier's staleness clock of ``cache`` under the test's control.

    Tests that expect hits from memory hold it, so that a loaded machine taking a
    second between a write and its lookup cannot turn them into reads of the table.
    """
    tier = cache._tier
    assert tier is not None
    clock = Clock(time.monotonic())
    tier.clock = clock
    return clock


@pytest.fixture
def clock(cache: SQLAlchemyCache) -> Clock:
    """The tier's staleness clock of ``cache``, under the test's control."""
    return hold_clock(cache)


@pytest.mark.usefixtures("clock")
def test_a_written_entry_is_served_from_memory_without_a_statement(
    cache: SQLAlchemyCache,
) -> None:
    cache.update("p", LLM, value("a"))
    sent = Statements(cache)
    assert cache.lookup("p", LLM) == value("a")
    assert cache.lookup("p", LLM) == value("a")
    assert sent.sent == []
    stats = cache.stats()
    assert (stats.hits, stats.memory_hits, stats.misses) == (2, 2, 0)


async def test_sync_and_async_share_the_tier(acache: SQLAlchemyCache) -> None:
    hold_clock(acache)
    await acache.aupdate("p", LLM, value("async"))
    acache.update("q", LLM, value("sync"))
    sent = Statements(acache)
    assert acache.lookup("p", LLM) == value("async")
    assert await acache.alookup("q", LLM) == value("sync")
    assert sent.sent == []
    assert acache.stats().memory_hits == 2


def test_an_entry_read_from_the_table_is_kept(make_cache: CacheFactory) -> None:
    writer = make_cache(local_max_bytes=0)
    reader = make_cache(table_name=table_of(writer).name)
    hold_clock(reader)
    writer.update("p", LLM, value("a"))
    sent = Statements(reader)
    assert reader.lookup("p", LLM) == value("a")
    assert reader.lookup("p", LLM) == value("a")
    assert sent.selects == 1
    assert reader.stats().memory_hits == 1


@pytest.mark.usefixtures("clock")
def test_a_hit_changed_by_its_caller_does_not_change_the_next(cache: SQLAlchemyCache) -> None:
    answer = [ChatGeneration(message=AIMessage("original", tool_calls=[]))]
    cache.update("p", LLM, answer)
    tier = cache._tier
    assert tier is not None
    # The first hit decodes the payload; later ones read the tier's snapshot.
    for snapshot_before in (False, True, True):
        held = tier.get(cache._key("p", LLM))
        assert held is not None
        assert held.snapshot is snapshot_before
        got = cache.lookup("p", LLM)
        assert got == answer
        assert isinstance(got, list)
        message = got[0].message
        assert isinstance(message, AIMessage)
        message.content = "changed"
        message.tool_calls.append({"name": "f", "args": {}, "id": "1"})
        got.append(Generation(text="extra"))
    assert cache.stats().memory_hits == 3


def test_off_with_local_max_bytes_zero(make_cache: CacheFactory) -> None:
    cache = make_cache(local_max_bytes=0)
    cache.update("p", LLM, value("a"))
    sent = Statements(cache)
    assert cache.lookup("p", LLM) == value("a")
    assert cache.lookup("p", LLM) == value("a")
    assert sent.selects == 2
    assert cache.stats().memory_hits == 0


def test_an_entry_past_the_staleness_bound_is_read_again(
    cache: SQLAlchemyCache, clock: Clock
) -> None:
    cache.update("p", LLM, value("a"))
    sent = Statements(cache)
    clock.now += 0.999
    assert cache.lookup("p", LLM) == value("a")
    assert sent.selects == 0
    clock.now += 0.001  # exactly local_max_staleness (1.0 s) after the write
    assert cache.lookup("p", LLM) == value("a")
    assert sent.selects == 1
    assert cache.lookup("p", LLM) == value("a")  # read again: fresh for another second
    assert sent.selects == 1


def test_ttl_ends_an_entry_in_memory(
    make_cache: CacheFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = make_cache(ttl=60)
    cache.update("p", LLM, value("a"))
    assert cache.lookup("p", LLM) == value("a")
    assert cache.stats().memory_hits == 1
    tier = cache._tier
    assert tier is not None
    # The row is past its ttl by the server's clock (PostgreSQL, MySQL) and, with time
    # moved on, by the client's (SQLite).
    age(cache, "p", 61, LLM)
    later = time.time() + 60
    tier.wall_clock = lambda: later  # the staleness clock still says "fresh"
    monkeypatch.setattr(time, "time", lambda: later)  # and the table's ttl agrees
    sent = Statements(cache)
    assert cache.lookup("p", LLM) is None
    assert sent.selects == 1
    assert cache.stats().memory_hits == 1


async def test_own_clear_applies_to_memory_at_once(cache: SQLAlchemyCache) -> None:
    for name in ("a", "b"):
        await cache.aupdate(name, LLM, value(name))
        await cache.aupdate(name, "other-llm", value(name))
    cache.clear(llm_string="other-llm")
    assert cache.lookup("a", "other-llm") is None
    assert await cache.alookup("b", LLM) == value("b")  # read again after the flush
    await cache.aclear()
    assert await cache.alookup("a", LLM) is None
    assert cache.lookup("b", LLM) is None


def test_own_purge_applies_to_memory_at_once(
    make_cache: CacheFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = make_cache(ttl=3600)
    cache.update("old", LLM, value("old"))
    tier = cache._tier
    assert tier is not None
    assert len(tier) == 1
    age(cache, "old", 3601, LLM)  # past its ttl by the server's clock
    later = time.time() + 3601
    monkeypatch.setattr(time, "time", lambda: later)  # and by the client's (SQLite)
    assert cache.purge_expired() == 1
    assert len(tier) == 0


async def test_own_trim_applies_to_memory_at_once(make_cache: CacheFactory) -> None:
    cache = make_cache(max_entries=1)  # every write trims
    for index in range(3):
        await cache.aupdate(f"p{index}", LLM, value(str(index)))
    assert cache.table_stats().entries == 1
    assert await cache.alookup("p0", LLM) is None
    assert cache.lookup("p1", LLM) is None
    assert await cache.alookup("p2", LLM) == value("2")
    assert cache.stats().memory_hits == 0  # each trim flushed the tier


def run_elsewhere(code: str, *args: str) -> None:
    """Run ``code`` in another Python process with ``args``; fail on a non-zero exit."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


OTHER_PROCESS = """
import sys
from langchain_core.outputs import Generation
from langchain_sqlalchemy_cache import SQLAlchemyCache
url, table, action = sys.argv[1:]
with SQLAlchemyCache(url, table_name=table, local_max_bytes=0) as cache:
    if action == "clear":
        cache.clear()
    else:
        cache.update("p", "fake-llm", [Generation(text=action)])
"""


@pytest.mark.parametrize("how", ["clear", "cli clear", "write"])
def test_another_process_is_seen_within_the_bound(
    backend_url: str, cache: SQLAlchemyCache, clock: Clock, how: str
) -> None:
    table = table_of(cache).name
    cache.update("p", LLM, value("mine"))
    assert cache.lookup("p", LLM) == value("mine")
    if how == "cli clear":
        done = subprocess.run(
            [*CLI, "clear", backend_url, "--table", table, "--yes"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    else:
        run_elsewhere(OTHER_PROCESS, backend_url, table, "clear" if how == "clear" else "theirs")
    expected = None if "clear" in how else value("theirs")
    sent = Statements(cache)
    # Within the bound the entry may still come from memory (it is at most 1 s old)...
    clock.now += 0.5
    assert cache.lookup("p", LLM) == value("mine")
    assert sent.selects == 0
    # ...and once the bound has passed it is read again: the other process is seen.
    clock.now += 0.5
    assert cache.lookup("p", LLM) == expected
    assert sent.selects == 1


def test_another_process_is_seen_on_the_real_clock(
    backend_url: str, cache: SQLAlchemyCache
) -> None:
    cache.update("p", LLM, value("mine"))
    assert cache.lookup("p", LLM) == value("mine")
    run_elsewhere(OTHER_PROCESS, backend_url, table_of(cache).name, "clear")
    cleared_at = time.monotonic()
    deadline = cleared_at + 30  # a generous cap for a loaded machine, not the bound
    while cache.lookup("p", LLM) is not None:
        assert time.monotonic() < deadline, "the other process's clear was never seen"
        time.sleep(0.01)
    # Every stale answer came from memory, and none after the bound: the entry was
    # read again exactly once, when its second was up.
    stats = cache.stats()
    assert stats.misses == 1
    assert stats.hits == stats.memory_hits


def test_configuration_errors_say_what_to_pass(backend_url: str) -> None:
    for bad in (-1, 1.5, True, "32M"):
        with pytest.raises(ConfigurationError, match="local_max_bytes must be an int >= 0"):
            SQLAlchemyCache(backend_url, local_max_bytes=bad)  # type: ignore[arg-type]
    for bad_staleness in (0, -1, "1s"):
        with pytest.raises(ConfigurationError, match="local_max_staleness must be a positive"):
            SQLAlchemyCache(backend_url, local_max_staleness=bad_staleness)  # type: ignore[arg-type]


# The tier on its own: the byte bound and least-recently-used order, under Hypothesis.

_keys = st.sampled_from([f"{i:064x}" for i in range(12)])
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), _keys, st.integers(0, 3000)),
        st.tuples(st.just("get"), _keys, st.just(0)),
        st.tuples(st.just("forget"), _keys, st.just(0)),
        st.tuples(st.just("trust"), _keys, st.integers(0, 6000)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(max_bytes=st.integers(0, 8000), ops=_ops)
def test_the_byte_bound_holds(max_bytes: int, ops: list[tuple[str, str, int]]) -> None:
    tier = LocalTier(max_bytes, max_staleness=1.0, ttl=None, clock=lambda: 0.0)
    # What may still be held (payload, whether a snapshot), most recently used last.
    model: dict[str, tuple[bytes, bool]] = {}
    for op, key, size in ops:
        if op == "put":
            payload = bytes([size % 251]) * size
            tier.put(key, payload, time.time(), since=tier.mark())
            model.pop(key, None)
            if len(key) + size + ENTRY_OVERHEAD <= max_bytes:
                model[key] = (payload, False)
        elif op == "forget":
            tier.forget()
            model.clear()
        else:
            got = tier.get(key)
            if got is None:
                continue
            assert (got.payload, got.snapshot) == model[key]
            model[key] = model.pop(key)
            if op == "trust":  # a hit swaps the payload for a snapshot of another size
                snapshot = bytes([size % 251]) * size
                tier.trust(key, got, snapshot)
                model.pop(key)
                if len(key) + size + ENTRY_OVERHEAD <= max_bytes:
                    model[key] = (snapshot, True)
        held = {k: v for k, v in model.items() if tier.get(k) is not None}
        charged = sum(len(k) + len(v[0]) + ENTRY_OVERHEAD for k, v in held.items())
        assert tier.held_bytes == charged <= max_bytes
        assert len(tier) == len(held)
        # Least recently used out first: what is held is a suffix of the use order.
        order = list(model)
        assert order[len(order) - len(held) :] == list(held)
        for k in held:  # restore the use order the probes above changed
            model[k] = model.pop(k)


def test_a_read_cannot_bring_back_what_a_clear_removed() -> None:
    tier = LocalTier(10_000, max_staleness=1.0, ttl=None, clock=lambda: 0.0)
    since = tier.mark()  # a read starts, and sees the row
    tier.forget()  # this object clears the table meanwhile
    tier.put("k", b"old", 0.0, since=since)
    assert tier.get("k") is None

    since = tier.mark()  # a read starts and sees the old row
    tier.put("k", b"new", 0.0, since=tier.mark(), read=False)  # a write lands first
    tier.put("k", b"old", 0.0, since=since)
    held = tier.get("k")
    assert held is not None
    assert held.payload == b"new"


def test_a_snapshot_never_replaces_a_newer_entry() -> None:
    tier = LocalTier(10_000, max_staleness=1.0, ttl=None, clock=lambda: 0.0)
    tier.put("k", b"old", 0.0, since=tier.mark(), read=False)
    decoded = tier.get("k")  # a hit starts decoding the old payload
    assert decoded is not None
    tier.put("k", b"new", 0.0, since=tier.mark(), read=False)  # a write lands meanwhile
    tier.trust("k", decoded, b"snapshot of old")
    held = tier.get("k")
    assert held is not None
    assert (held.payload, held.snapshot) == (b"new", False)
    tier.trust("k", held, b"snapshot of new")
    held = tier.get("k")
    assert held is not None
    assert (held.payload, held.snapshot) == (b"snapshot of new", True)


def test_a_read_entry_ages_from_when_the_read_started() -> None:
    clock = Clock(100.0)
    tier = LocalTier(10_000, max_staleness=1.0, ttl=None, clock=clock)
    since = tier.mark()  # the read starts, and sees the row as it is at 100.0
    clock.now = 100.6  # the answer arrives
    tier.put("k", b"row", 0.0, since=since)
    clock.now = 100.99
    held = tier.get("k")
    assert held is not None
    assert held.payload == b"row"
    clock.now = 101.0  # one second after the row was seen, not after it arrived
    assert tier.get("k") is None
