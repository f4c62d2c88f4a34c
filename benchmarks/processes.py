"""Aggregate throughput of 1, 2, 4 .. OS processes sharing one cache table on a server.

Each process is what a gunicorn/uvicorn worker or a batch shard is: its own interpreter,
event loop, engines and pool, here running ``concurrency`` tasks of the mixed workload
(every 10th operation an update, the rest hits) for a fixed time. All processes start
together (each says ``ready``, then waits for ``go``), so the figures are of processes
really running side by side.

Worker: ``python -m benchmarks.processes URL TABLE SECONDS CONCURRENCY KEYS``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_sqlalchemy_cache import SQLAlchemyCache

from .workload import build_workload

ROOT = Path(__file__).resolve().parent.parent
KEYS = 500
UPDATE_EVERY = 10
TABLE = "bench_processes"


async def _work(
    url: str, table: str, seconds: float, concurrency: int, keys: int
) -> dict[str, Any]:
    workload = build_workload(keys)
    llm = workload.llm_string
    # The tier off: this measures how the database path scales with processes.
    cache = SQLAlchemyCache(url, table_name=table, create_table=False, local_max_bytes=0)
    await cache.alookup(workload.prompts[0], llm)  # connect before the start
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    ops = unexpected_misses = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def task(number: int) -> None:
        nonlocal ops, unexpected_misses
        index = number
        while time.perf_counter() < deadline:
            key = index % keys
            if index % UPDATE_EVERY == UPDATE_EVERY - 1:
                await cache.aupdate(workload.prompts[key], llm, workload.values[key])
            elif await cache.alookup(workload.prompts[key], llm) is None:
                unexpected_misses += 1
            ops += 1
            index += concurrency

    await asyncio.gather(*(task(number) for number in range(concurrency)))
    elapsed = time.perf_counter() - started
    stats = cache.stats()
    await cache.aclose()
    return {
        "ops": ops,
        "elapsed_s": elapsed,
        "unexpected_misses": unexpected_misses,
        "errors": stats.errors,
        "lookup_p99_ms": stats.lookup_p99_ms,
    }


def _populate(url: str, keys: int) -> None:
    workload = build_workload(keys)
    with SQLAlchemyCache(url, table_name=TABLE, on_error="raise") as cache:
        cache.clear()
        for prompt, value in zip(workload.prompts, workload.values, strict=True):
            cache.update(prompt, workload.llm_string, value)


def _drop(url: str) -> None:
    with SQLAlchemyCache(url, table_name=TABLE) as cache, cache.sync_engine.connect() as conn:
        cache._table.drop(conn, checkfirst=True)


def _run_once(url: str, processes: int, seconds: float, concurrency: int) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "benchmarks.processes",
        url, TABLE, str(seconds), str(concurrency), str(KEYS),
    ]  # fmt: skip
    workers = [
        subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline().strip()
            if line != "ready":
                _, err = worker.communicate(timeout=60)
                raise RuntimeError(f"a worker failed to start: {err.strip()[-500:]}")
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        reports = []
        for worker in workers:
            out, err = worker.communicate(timeout=seconds + 120)
            if worker.returncode != 0:
                raise RuntimeError(f"a worker failed: {err.strip()[-500:]}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            worker.kill()
    return {
        "processes": processes,
        "concurrency_per_process": concurrency,
        "ops": sum(r["ops"] for r in reports),
        "ops_per_s": sum(r["ops"] / r["elapsed_s"] for r in reports),
        "unexpected_misses": sum(r["unexpected_misses"] for r in reports),
        "errors": sum(r["errors"] for r in reports),
        "worst_lookup_p99_ms": max((r["lookup_p99_ms"] or 0.0) for r in reports),
    }


def run_process_scaling(
    urls: dict[str, str],
    counts: list[int],
    *,
    seconds: float,
    concurrency: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Aggregate throughput at each process count, per backend; one table per backend."""
    results: dict[str, Any] = {"runs": [], "keys": KEYS, "update_every": UPDATE_EVERY}
    for backend, url in urls.items():
        progress(f"[{backend}] processes: storing {KEYS} entries")
        _populate(url, KEYS)
        try:
            for count in counts:
                run = {"backend": backend, **_run_once(url, count, seconds, concurrency)}
                results["runs"].append(run)
                progress(
                    f"[{backend}] {count} process(es) x {concurrency} tasks: "
                    f"{run['ops_per_s']:,.0f} ops/s, errors {run['errors']}, "
                    f"unexpected misses {run['unexpected_misses']}"
                )
        finally:
            _drop(url)
    return results


def main() -> None:
    """One worker process."""
    url, table = sys.argv[1], sys.argv[2]
    seconds, concurrency, keys = float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    print(json.dumps(asyncio.run(_work(url, table, seconds, concurrency, keys))), flush=True)


if __name__ == "__main__":
    main()
