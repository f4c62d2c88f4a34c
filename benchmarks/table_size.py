"""Lookup latency of this cache on PostgreSQL with a small and a big table.

Two tables hold the same real entries; filler rows (64-hex keys like ours, built
server-side with ``INSERT .. SELECT generate_series``) bring one to ``small_rows`` and
the other to ``big_rows``. Lookups of the real keys, one at a time, alternate between
the two tables in rounds so that machine noise hits both alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import Engine, text

from langchain_sqlalchemy_cache import SQLAlchemyCache
from langchain_sqlalchemy_cache._keys import cache_key

from .measure import percentile
from .subjects import TABLE_PREFIX, Backend, drop_table, populate_ours
from .workload import Workload

# Filler rows: keys shaped like ours, ~200-byte payloads (distinct per row, so the heap
# is not compressed away), short prompt and llm_string literals.
_FILL_SQL = """
INSERT INTO {table} (key, prompt, llm_string, payload, updated_at, format)
SELECT encode(sha256(('bench-filler-' || i)::text::bytea), 'hex'),
       '"filler prompt ' || i || '"',
       '"filler llm_string"',
       convert_to('[' || repeat('"' || md5(i::text) || '", ', 6) || '0]', 'UTF8'),
       extract(epoch FROM now()),
       1
FROM generate_series(1, :count) AS i
"""


@dataclass(frozen=True)
class SizePlan:
    """Row counts and how many lookups to time on each table."""

    small_rows: int
    big_rows: int
    rounds: int
    lookups_per_round: int
    warmup: int = 200


def _fill(engine: Engine, table: str, total_rows: int) -> dict[str, Any]:
    started = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        present = connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
        missing = max(0, total_rows - present)
        if missing:
            connection.execute(text(_FILL_SQL.format(table=table)), {"count": missing})
        connection.execute(text(f"VACUUM ANALYZE {table}"))
        rows = connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
        size = connection.execute(
            text("SELECT pg_total_relation_size(CAST(:t AS regclass))"), {"t": table}
        ).scalar_one()
        index_size = connection.execute(
            text("SELECT pg_relation_size(CAST(:i AS regclass))"), {"i": f"{table}_pkey"}
        ).scalar_one()
    return {
        "rows": rows,
        "fill_s": time.perf_counter() - started,
        "total_bytes": size,
        "pkey_index_bytes": index_size,
    }


def _summary(latencies: list[float]) -> dict[str, float]:
    return {
        "n": len(latencies),
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "mean_ms": sum(latencies) / len(latencies) * 1e3 if latencies else 0.0,
    }


async def measure_table_size(
    backend: Backend,
    workload: Workload,
    keys: list[int],
    plan: SizePlan,
    ours_kwargs: dict[str, Any],
) -> dict[str, Any]:
    """Time ``alookup`` (and a bare asyncpg SELECT) on a small and a big table."""
    names = {"small": TABLE_PREFIX + "rows_small", "big": TABLE_PREFIX + "rows_big"}
    targets = {"small": plan.small_rows, "big": plan.big_rows}
    url = backend.ours_url("table-size")
    caches = {
        label: SQLAlchemyCache(url, table_name=table, **{"local_max_bytes": 0, **ours_kwargs})
        for label, table in names.items()
    }
    raw = await asyncpg.connect(backend.asyncpg_dsn())
    result: dict[str, Any] = {"plan": plan.__dict__, "tables": {}}
    try:
        for label, cache in caches.items():
            drop_table(cache.sync_engine, names[label])
            await populate_ours(cache, workload)
            result["tables"][label] = _fill(cache.sync_engine, names[label], targets[label])
        probe_key = await raw.fetchval(f"SELECT key FROM {names['big']} LIMIT 1")
        plan_rows = await raw.fetch(
            f"EXPLAIN SELECT payload FROM {names['big']} WHERE key = $1", probe_key
        )
        result["big_table_plan"] = [r[0] for r in plan_rows]

        ours: dict[str, list[float]] = {label: [] for label in names}
        bare: dict[str, list[float]] = {label: [] for label in names}
        wrong = 0
        for cache in caches.values():  # warm connections, plans and buffers
            for n in range(plan.warmup):
                index = keys[n % len(keys)]
                await cache.alookup(workload.prompts[index], workload.llm_string)
        cursor = 0
        for round_number in range(plan.rounds):
            order = ("small", "big") if round_number % 2 == 0 else ("big", "small")
            for label in order:
                select = f"SELECT payload FROM {names[label]} WHERE key = $1"
                for n in range(plan.lookups_per_round):
                    index = keys[(cursor + n) % len(keys)]
                    prompt = workload.prompts[index]
                    start = time.perf_counter()
                    hit = await caches[label].alookup(prompt, workload.llm_string)
                    ours[label].append(time.perf_counter() - start)
                    wrong += hit is None
                    start = time.perf_counter()
                    await raw.fetchval(select, cache_key(prompt, workload.llm_string))
                    bare[label].append(time.perf_counter() - start)
            cursor += plan.lookups_per_round
        result["ours_alookup"] = {label: _summary(v) for label, v in ours.items()}
        result["asyncpg_select"] = {label: _summary(v) for label, v in bare.items()}
        result["wrong"] = wrong
        for kind in ("ours_alookup", "asyncpg_select"):
            small, big = result[kind]["small"], result[kind]["big"]
            result[kind]["ratio_p50"] = big["p50_ms"] / small["p50_ms"]
            result[kind]["ratio_p99"] = big["p99_ms"] / small["p99_ms"]
    finally:
        for label, cache in caches.items():
            drop_table(cache.sync_engine, names[label])
            await cache.aclose()
        await raw.close()
    return result
