"""The circuit breaker: a database that keeps failing costs nothing per call.

Its counts in ``stats()`` say how many calls sent statements and how many were answered
at once; nothing here measures wall time.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import make_url

from langchain_sqlalchemy_cache import CacheError, SQLAlchemyCache
from langchain_sqlalchemy_cache._breaker import CircuitBreaker

from .conftest import drop_table, unique_table
from .freezeproxy import FreezeProxy, SilentServer, closed_port
from .helpers import value

LLM = "breaker-test-llm"


def wait_for_state(cache: SQLAlchemyCache, state: str) -> None:
    # The cool-down is the breaker's own clock: poll its state, with a cap against hanging.
    deadline = time.monotonic() + 60
    while cache.stats().breaker != state:
        assert time.monotonic() < deadline, f"the breaker never became {state}"
        time.sleep(0.01)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["never answers", "refuses connections"])
async def test_a_thousand_lookups_on_a_dead_database_send_a_handful(fault: str) -> None:
    with SilentServer() as server:
        port = server.port if fault == "never answers" else closed_port()
        cache = SQLAlchemyCache(
            f"postgresql://postgres@127.0.0.1:{port}/test",
            local_max_bytes=0,  # the database path, not the tier
            timeout=0.2,
            breaker_threshold=5,
            breaker_cooldown=600,
        )
        for i in range(500):
            assert await cache.alookup(f"p{i}", LLM) is None
        for i in range(500):
            assert cache.lookup(f"p{i}", LLM) is None
        stats = cache.stats()
        assert stats.errors == 5  # only the first five calls sent anything
        assert stats.timeouts == (5 if fault == "never answers" else 0)
        assert stats.short_circuited == 995
        assert (stats.breaker, stats.breaker_opened) == ("open", 1)
        assert (stats.hits, stats.misses) == (0, 0)
        await cache.aupdate("p", LLM, value("x"))  # a no-op too, without a statement
        cache.clear()
        assert cache.stats().short_circuited == 997
        await cache.aclose()


@pytest.mark.timeout(60)
async def test_an_open_breaker_raises_at_once_under_raise() -> None:
    cache = SQLAlchemyCache(
        f"postgresql://postgres@127.0.0.1:{closed_port()}/test",
        local_max_bytes=0,  # the database path, not the tier
        on_error="raise",
        breaker_threshold=2,
        breaker_cooldown=600,
    )
    for _ in range(2):
        with pytest.raises(CacheError, match="lookup failed"):
            await cache.alookup("p", LLM)
    with pytest.raises(CacheError, match="circuit breaker is open") as opened:
        await cache.alookup("p", LLM)
    assert opened.value.__cause__ is None  # nothing was sent: no driver error
    with pytest.raises(CacheError, match="circuit breaker is open"):
        cache.update("p", LLM, value("x"))
    with pytest.raises(CacheError, match="circuit breaker is open"):
        cache.table_stats()
    assert cache.stats().short_circuited == 3
    await cache.aclose()


@pytest.mark.timeout(120)
async def test_after_the_cool_down_one_probe_closes_or_reopens_it(postgres_url: str) -> None:
    upstream = make_url(postgres_url).port
    assert upstream is not None
    table = unique_table()
    with FreezeProxy(upstream) as proxy:
        cache = SQLAlchemyCache(
            f"postgresql://postgres@127.0.0.1:{proxy.port}/test",
            local_max_bytes=0,  # the database path, not the tier
            table_name=table,
            # Generous: the probe after the thaw reconnects within it on a loaded machine.
            timeout=2.0,
            breaker_threshold=3,
            # Long enough that the checks right after an opening run before it ends,
            # even on a loaded machine.
            breaker_cooldown=2.0,
        )
        try:
            await cache.aupdate("p", LLM, value("p"))
            proxy.freeze()
            for _ in range(3):
                assert await cache.alookup("p", LLM) is None
            assert cache.stats().breaker == "open"
            assert await cache.alookup("p", LLM) is None
            assert cache.stats().short_circuited == 1

            # Still frozen: the probe times out and the breaker opens again.
            wait_for_state(cache, "half_open")
            assert cache.lookup("p", LLM) is None
            stats = cache.stats()
            assert (stats.breaker, stats.breaker_opened, stats.timeouts) == ("open", 2, 4)

            # Back: the probe goes through and closes it; calls flow again.
            proxy.thaw()
            wait_for_state(cache, "half_open")
            assert await cache.alookup("p", LLM) == value("p")
            assert cache.stats().breaker == "closed"
            assert cache.lookup("p", LLM) == value("p")
            assert cache.stats().hits == 2
        finally:
            proxy.thaw()
            drop_table(cache, table)
            await cache.aclose()


def test_breaker_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="breaker_threshold must be a positive int"):
        SQLAlchemyCache("sqlite:///unused.db", breaker_threshold=0)
    with pytest.raises(ValueError, match="breaker_cooldown must be a positive number"):
        SQLAlchemyCache("sqlite:///unused.db", breaker_cooldown=-1)
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        SQLAlchemyCache("sqlite:///unused.db", timeout=0)
    with pytest.raises(ValueError, match="timeout must be finite"):
        SQLAlchemyCache("sqlite:///unused.db", timeout=float("inf"))


def test_failures_of_calls_let_through_before_the_breaker_changed_are_stale() -> None:
    # Calls sent to a server that died, still running while the breaker opens, probes
    # and closes again (on a new primary): their failures must not decide anything.
    breaker = CircuitBreaker(threshold=2, cooldown=0.0)
    before = breaker.epoch  # three calls let through while closed
    breaker.failed(before)
    breaker.failed(before)
    assert breaker.opened == 1
    assert breaker.state == "half_open"  # no cool-down
    assert breaker.allow()  # the probe
    breaker.failed(before)  # the third old call ends now: not the probe's verdict
    assert breaker.state == "half_open"
    assert not breaker.allow()  # the probe is still the only one through
    breaker.abandoned(before)  # an old call cancelled: the probe's turn stays taken
    assert not breaker.allow()
    breaker.succeeded()  # the probe reached the new primary
    assert (breaker.state, breaker.opened) == ("closed", 1)
    breaker.failed(before)
    breaker.failed(before)
    assert (breaker.state, breaker.opened) == ("closed", 1)
    now = breaker.epoch  # calls let through since it closed count again
    breaker.failed(now)
    breaker.failed(now)
    assert (breaker.state, breaker.opened) == ("half_open", 2)
