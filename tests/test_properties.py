"""Hypothesis: odd inputs round-trip on both backends, and a stateful model of the cache
holds through interleaved sync and async calls, clears, and killed connections."""

from __future__ import annotations

import asyncio
import random
from array import array
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation
from sqlalchemy import MetaData, create_engine, inspect, select

from langchain_sqlalchemy_cache import SQLAlchemyCache, cache_table
from langchain_sqlalchemy_cache._keys import cache_key

from .conftest import proxied_engines, unique_table
from .pgproxy import PgProxy


def random_text(length: int, seed: int) -> str:
    """Text of any code points but surrogates, picked at random from 4,096 of them (a
    million characters drawn one by one would take seconds per example)."""
    rng = random.Random(seed)
    alphabet = [
        chr(rng.choice([rng.randrange(0, 0xD800), rng.randrange(0xE000, 0x110000)]))
        for _ in range(4096)
    ]
    picks = array("H", rng.randbytes(2 * length))
    return "".join(map(alphabet.__getitem__, map((4095).__and__, picks)))


odd_text = st.one_of(
    st.text(),  # NUL, lone surrogates (Hypothesis draws them), astral characters
    st.text(alphabet=st.sampled_from(["\x00", "\ud800", "\udfff", "😀", "a", "\\", '"'])),
    st.builds(random_text, st.integers(3000, 6000), st.integers()),
)
big_or_odd_text = st.one_of(odd_text, st.builds(random_text, st.just(1_000_000), st.integers()))


# How many examples: the Hypothesis profile (tests/conftest.py): "ci" by default,
# "soak" for `nox -s soak`.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(prompt=odd_text, llm_string=odd_text, answer=big_or_odd_text, chat=st.booleans())
def test_odd_inputs_round_trip_sync_and_async(
    cache: SQLAlchemyCache, prompt: str, llm_string: str, answer: str, chat: bool
) -> None:
    stored: list[Generation] = [
        ChatGeneration(
            message=AIMessage(
                answer, tool_calls=[{"name": "t", "args": {"a": answer[:50]}, "id": "1"}]
            )
        )
        if chat
        else Generation(text=answer)
    ]
    cache.update(prompt, llm_string, stored)
    assert cache.lookup(prompt, llm_string) == stored

    async def async_side() -> Any:
        await cache.aupdate(llm_string, prompt, stored)  # the arguments swapped: another key
        return await cache.alookup(llm_string, prompt), await cache.alookup(prompt, llm_string)

    swapped, original = asyncio.run(async_side())
    assert swapped == stored
    assert original == stored


KEYS = st.sampled_from(["a", "b", "c\x00", "\ud800d"])
TEXTS = st.sampled_from(["x", "y", "z\x00", "😀"])


class CacheModel(RuleBasedStateMachine):
    """The cache against a dict; a fault may only ever cost a miss or a skipped write."""

    url = ""
    postgres_url = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.table = cache_table(MetaData(), unique_table())
        self.proxy: PgProxy | None = None
        if self.postgres_url:  # connections go through a proxy this model can cut
            self.proxy = PgProxy(self.postgres_url).__enter__()
            async_engine, sync_engine = proxied_engines(self.postgres_url, self.proxy)
            self.cache = SQLAlchemyCache(
                async_engine, sync_engine=sync_engine, table_name=self.table.name
            )
        else:
            self.cache = SQLAlchemyCache(self.url, table_name=self.table.name)
        # Row counts are read beside the cache, on a connection no fault touches.
        self.checker = create_engine(
            (self.postgres_url or self.url)
            .replace("postgresql://", "postgresql+psycopg://")
            .replace("mysql://", "mysql+pymysql://")
        )
        # Each key maps to the values a lookup may return; None stands for "absent".
        self.model: dict[str, set[str | None]] = {}

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    def _errors(self) -> int:
        return self.cache.stats().errors

    def _write(self, key: str, text_: str, write: Any) -> None:
        before = self._errors()
        write(key, "llm", [Generation(text=text_)])
        old = self.model.get(key, {None})
        self.model[key] = {text_} if self._errors() == before else old | {text_}

    def _read(self, key: str, read: Any) -> None:
        before = self._errors()
        hit = read(key, "llm")
        got = None if hit is None else hit[0].text
        if self._errors() != before:
            assert got is None  # a fault is a miss, never a wrong answer
            return
        assert got in self.model.get(key, {None})
        self.model[key] = {got}  # what the table holds is now known

    @initialize()
    def start(self) -> None:
        self.cache.lookup("warm", "llm")

    @rule(key=KEYS, text_=TEXTS)
    def update(self, key: str, text_: str) -> None:
        self._write(key, text_, self.cache.update)

    @rule(key=KEYS, text_=TEXTS)
    def aupdate(self, key: str, text_: str) -> None:
        self._write(key, text_, lambda *a: self.run(self.cache.aupdate(*a)))

    @rule(key=KEYS)
    def lookup(self, key: str) -> None:
        self._read(key, self.cache.lookup)

    @rule(key=KEYS)
    def alookup(self, key: str) -> None:
        self._read(key, lambda *a: self.run(self.cache.alookup(*a)))

    @rule(use_async=st.booleans())
    def clear(self, use_async: bool) -> None:
        before = self._errors()
        if use_async:
            self.run(self.cache.aclear())
        else:
            self.cache.clear()
        if self._errors() == before:
            self.model = {}
        else:
            self.model = {k: v | {None} for k, v in self.model.items()}

    @rule()
    def kill_the_connections(self) -> None:
        if self.proxy is not None:
            self.proxy.cut_all()
        else:  # SQLite has no server to kill: drop every pooled connection instead
            self.cache.sync_engine.dispose()
            self.run(self.cache.async_engine.dispose())

    @invariant()
    def the_table_holds_what_the_model_allows(self) -> None:
        with self.checker.connect() as connection:
            if not inspect(connection).has_table(self.table.name):
                return
            table = self.table
            stored = set(connection.execute(select(table.c.key)).scalars())
        for key, allowed in self.model.items():
            present = cache_key(key, "llm") in stored
            if allowed == {None}:
                assert not present, f"{key!r} should be gone"
            elif None not in allowed:
                assert present, f"{key!r} should be stored"
        known = {cache_key(key, "llm") for key in self.model}
        assert stored <= known | {cache_key("warm", "llm")}

    def teardown(self) -> None:
        with self.checker.connect() as connection:
            self.table.drop(connection, checkfirst=True)
            connection.commit()
        self.checker.dispose()
        self.run(self.cache.async_engine.dispose())
        self.cache.sync_engine.dispose()
        self.cache.close()
        self.loop.close()
        if self.proxy is not None:
            self.proxy.__exit__(None, None, None)


def test_the_cache_follows_its_model(backend_url: str) -> None:
    class Model(CacheModel):
        url = backend_url
        postgres_url = backend_url if backend_url.startswith("postgresql") else ""

    run_state_machine_as_test(Model)  # examples and steps: the Hypothesis profile
