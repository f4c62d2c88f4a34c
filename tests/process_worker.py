"""One OS process of the many-process test: 200 concurrent tasks of mixed lookups and
updates over a shared key set, on one cache table.

Run as ``python -m tests.process_worker URL TABLE WORKER_ID`` (or ``.. TABLE clear`` for
the process that clears the table once told to). It prints ``ready``, waits
for a line on stdin (so every process starts together), runs for a few seconds, and
prints one JSON report: every hit and every write it made, with times, and the errors
it met.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from typing import Any

from langchain_core.outputs import Generation

from langchain_sqlalchemy_cache import SQLAlchemyCache

TASKS = 200
SECONDS = 6.0  # long enough for a clear from another process to land mid-run
KEYS = 60
REFRESH = 0.2  # share of hits that write a new answer anyway, so writes never stop
LLM = "shared-model"


async def run(url: str, table: str, worker: int) -> dict[str, Any]:
    # The tier off: the test watches the table itself, and its writers keep rewriting
    # every key, so with the tier they would keep their own fresh copies past the clear.
    cache = SQLAlchemyCache(url, table_name=table, on_error="raise", local_max_bytes=0)
    await cache.alookup("warm-up", LLM)  # connect and create the table before the start
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    hits: list[tuple[str, str]] = []
    writes: list[tuple[str, str]] = []
    misses: list[float] = []
    errors: list[str] = []
    started = time.time()

    async def task(number: int) -> None:
        rng = random.Random(worker * 10_000 + number)
        round_ = 0
        while time.time() < started + SECONDS:
            round_ += 1
            key = f"key-{rng.randrange(KEYS)}"
            try:
                found = await cache.alookup(key, LLM)
                if found is not None:
                    hits.append((key, found[0].text))
                    if rng.random() >= REFRESH:
                        continue
                else:
                    misses.append(time.time())
                await asyncio.sleep(rng.uniform(0, 0.005))  # the "model call"
                answer = f"{key}|worker {worker}|task {number}|round {round_}"
                writes.append((key, answer))  # logged first: a reader may see it at once
                await cache.aupdate(key, LLM, [Generation(text=answer)])
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(task(number) for number in range(TASKS)))
    finished = time.time()
    await cache.aclose()
    return {
        "worker": worker,
        "hits": hits,
        "writes": writes,
        "misses": misses,
        "errors": errors,
        "started": started,
        "finished": finished,
    }


def clear(url: str, table: str) -> dict[str, float]:
    """Clear the table once told to, from a process of its own."""
    cache = SQLAlchemyCache(url, table_name=table, on_error="raise")
    cache.lookup("warm-up", LLM)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.time()
    cache.clear()
    finished = time.time()
    cache.close()
    return {"started": started, "finished": finished}


def main() -> None:
    url, table, role = sys.argv[1:4]
    report = clear(url, table) if role == "clear" else asyncio.run(run(url, table, int(role)))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
