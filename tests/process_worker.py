"""One OS process of the many-process test: 200 concurrent tasks of mixed lookups and
updates over a shared key set, on one cache table.

Run as ``python -m tests.process_worker URL TABLE WORKER_ID`` (or ``.. TABLE clear`` for
the process that clears the table once told to, and reports at once). The test drives
it through stdin and stdout, so that every step is ordered by what the processes have
done, not by time:

- it prints ``ready`` once connected, and waits for a line (so every process starts
  together);
- a worker prints ``busy`` once it has made ``BUSY_AFTER`` lookups, and keeps going;
- a worker reads a second line once the clear has finished, and stops after
  ``AFTER_CLEAR`` more lookups.

At the end it prints one JSON report: every hit and every write it made, with times,
and the errors it met.
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
BUSY_AFTER = 500  # lookups before a worker says it is busy
AFTER_CLEAR = 500  # lookups a worker makes once told the clear has finished
KEYS = 60
REFRESH = 0.2  # share of hits that write a new answer anyway, so writes never stop
LLM = "shared-model"


async def read_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def run(url: str, table: str, worker: int) -> dict[str, Any]:
    # The tier off: the test watches the table itself, and its writers keep rewriting
    # every key, so with the tier they would keep their own fresh copies past the clear.
    # A generous deadline: four processes contend for row locks on two cores, and the
    # test counts every error; the default 2 s is about waits, not this test's subject.
    cache = SQLAlchemyCache(
        url, table_name=table, on_error="raise", local_max_bytes=0, timeout=30.0
    )
    await cache.alookup("warm-up", LLM)  # connect and create the table before the start
    print("ready", flush=True)
    await read_line()
    hits: list[tuple[str, str]] = []
    writes: list[tuple[str, str]] = []
    misses: list[float] = []
    errors: list[str] = []
    lookups = 0
    told_cleared_at: int | None = None  # lookups made when told the clear had finished
    done = asyncio.Event()
    started = time.time()

    def count_lookup() -> None:
        nonlocal lookups
        lookups += 1
        if lookups == BUSY_AFTER:
            print("busy", flush=True)
        if told_cleared_at is not None and lookups >= told_cleared_at + AFTER_CLEAR:
            done.set()

    async def listen() -> None:
        nonlocal told_cleared_at
        await read_line()
        told_cleared_at = lookups

    async def task(number: int) -> None:
        rng = random.Random(worker * 10_000 + number)
        round_ = 0
        while not done.is_set():
            round_ += 1
            key = f"key-{rng.randrange(KEYS)}"
            try:
                try:
                    found = await cache.alookup(key, LLM)
                finally:
                    count_lookup()  # failed ones too: a failing process still gets to the end
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

    await asyncio.gather(listen(), *(task(number) for number in range(TASKS)))
    finished = time.time()
    await cache.aclose()
    return {
        "worker": worker,
        "hits": hits,
        "writes": writes,
        "misses": misses,
        "errors": errors,
        "lookups": lookups,
        "told_cleared_at": told_cleared_at,
        "started": started,
        "finished": finished,
    }


def clear(url: str, table: str) -> None:
    """Clear the table once told to, from a process of its own; report at once."""
    cache = SQLAlchemyCache(url, table_name=table, on_error="raise", timeout=30.0)
    cache.lookup("warm-up", LLM)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.time()
    cache.clear()
    finished = time.time()
    print(json.dumps({"started": started, "finished": finished}), flush=True)
    cache.close()


def main() -> None:
    url, table, role = sys.argv[1:4]
    if role == "clear":
        clear(url, table)
    else:
        print(json.dumps(asyncio.run(run(url, table, int(role)))), flush=True)


if __name__ == "__main__":
    main()
