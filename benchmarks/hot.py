"""Hot-path benchmark: ``python -m benchmarks.hot [--quick]`` from the repository root.

Hits only, on PostgreSQL, against the floors and the peers of issue 12, all set up before
the first timed run and then measured interleaved: every round runs every subject once
at every (workload, concurrency), so a noisy neighbour slows all of them alike, and the
figure of a run is the median of its rounds.

- ``repeated``: lookups cycle over a hot set of ``--hot-keys`` entries (the in-process
  tier serves them); ``distinct``: over all ``--keys`` entries, and this cache runs with
  the tier off, so every hit is a statement.
- The FastAPI example under uvicorn (one worker) driven by ``wrk`` on loopback, every
  request a hit, with this cache, AsyncRedisCache and InMemoryCache, at 1 and 10
  connections (also interleaved, medians of the rounds).

Writes ``hot.json`` and ``hot.png`` to ``--out`` and prints the ratios against the
issue's targets. Nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .machine import load_average, machine_info
from .measure import Budget, run_async
from .peers import (
    AsyncpgBatchFloor,
    AsyncpgFloor,
    DecodeLimit,
    InMemory,
    LangchainRedis,
    RedisAsync,
)
from .subjects import AsyncSubject, Backend, OursAsync
from .workload import Workload, build_workload

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
HTTP_CACHES = ("ours", "redis", "inmemory")
HTTP_PROMPT = "What is the capital of France?"
# The targets: (workload, subject, concurrency) -> (peer, at least this ratio).
TARGETS = [
    ("repeated", "ours-tier", 1, "redis-async", 5.0),
    ("repeated", "ours-tier", 100, "redis-async", 5.0),
    ("distinct", "ours-db", 1, "asyncpg-floor", 0.8),
    ("distinct", "ours-db", 100, "asyncpg-batch-floor", 0.9),
    ("distinct", "ours-db", 1000, "asyncpg-batch-floor", 0.9),
]
HTTP_TARGETS = [("redis", 1.2), ("inmemory", 0.9)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hot", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 s runs, 3 rounds, wrk 3 s")
    parser.add_argument("--pg-url", default=os.environ.get("TEST_POSTGRES_URL", DEFAULT_PG_URL))
    parser.add_argument("--keys", type=int, default=1000, help="stored entries (distinct)")
    parser.add_argument("--hot-keys", type=int, default=20, help="entries of the hot set")
    parser.add_argument("--concurrency", default="1,100,1000")
    parser.add_argument("--rounds", type=int, default=None, help="default 5 (quick: 3)")
    parser.add_argument("--seconds", type=float, default=None, help="per run (quick: 1)")
    parser.add_argument("--http-seconds", type=int, default=None, help="per wrk run")
    parser.add_argument("--no-http", action="store_true", help="skip the FastAPI part")
    parser.add_argument(
        "--subjects",
        default=None,
        help="only these subjects, e.g. ours-db,asyncpg-floor,asyncpg-batch-floor (default: all)",
    )
    parser.add_argument(
        "--workloads", default="repeated,distinct", help="repeated, distinct or both"
    )
    parser.add_argument("--pool-size", type=int, default=5, help="connections of the floors")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "out", help="output dir"
    )
    args = parser.parse_args(argv)
    args.levels = sorted({int(c) for c in args.concurrency.split(",")})
    args.subjects = None if args.subjects is None else set(args.subjects.split(","))
    args.workloads = [w for w in ("repeated", "distinct") if w in args.workloads.split(",")]
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.seconds = args.seconds or (1.0 if args.quick else 3.0)
    args.http_seconds = args.http_seconds or (3 if args.quick else 5)
    return args


def subjects_for(backend: Backend, pool_size: int) -> list[AsyncSubject]:
    """Every subject, this cache first: tier on (defaults) and tier off."""
    return [
        OursAsync("ours-tier", backend, {}),
        OursAsync("ours-db", backend, {"local_max_bytes": 0}),
        AsyncpgFloor(backend, pool_size),
        AsyncpgBatchFloor(backend, pool_size),
        DecodeLimit(backend),
        RedisAsync(backend),
        LangchainRedis(backend),
        InMemory(backend),
    ]


async def measure_hits(
    subject: AsyncSubject, workload: Workload, keys: int, concurrency: int, seconds: float
) -> dict[str, Any]:
    """One timed run of hits cycling over the first ``keys`` entries."""
    prompts, llm = workload.prompts[:keys], workload.llm_string

    async def hit(index: int) -> bool:
        return await subject.alookup(prompts[index % keys], llm) is not None

    warm = Budget(min(200, max(20, concurrency)), 0.25)
    await run_async(hit, concurrency, warm, lag=False)
    gc.collect()
    stats = await run_async(hit, concurrency, Budget(10**9, seconds), lag=True)
    return stats.as_dict()


async def bench_hits(
    args: argparse.Namespace, workload: Workload, skipped: list[str]
) -> list[dict[str, Any]]:
    """Every subject at every (workload, concurrency), interleaved over the rounds.

    Subjects that cannot be set up are left out, with the reason in ``skipped``.
    """
    backend = Backend("postgresql", pg_url=args.pg_url)
    subjects = [
        subject
        for subject in subjects_for(backend, args.pool_size)
        if args.subjects is None or subject.name in args.subjects
    ]
    runs: list[dict[str, Any]] = []
    ready: list[AsyncSubject] = []
    try:
        for subject in subjects:
            _progress(f"setting up {subject.name}")
            try:
                await subject.setup(workload)
            except Exception as exc:  # a peer that cannot run here is reported, not fatal
                skipped.append(f"{subject.name}: {type(exc).__name__}: {exc}")
                _progress(f"skipped {skipped[-1]}")
                await subject.teardown()
                continue
            ready.append(subject)
        for round_ in range(args.rounds):
            for name, keys in (("repeated", args.hot_keys), ("distinct", workload.size)):
                if name not in args.workloads:
                    continue
                for concurrency in args.levels:
                    for subject in ready:
                        if name == "distinct" and subject.name == "ours-tier":
                            continue  # distinct keys measure the database path
                        stats = await measure_hits(
                            subject, workload, keys, concurrency, args.seconds
                        )
                        run = {
                            "workload": name,
                            "subject": subject.name,
                            "concurrency": concurrency,
                            "round": round_,
                            **stats,
                        }
                        runs.append(run)
                        _progress(
                            f"round {round_} {name:8} c={concurrency:<5} {subject.name:20} "
                            f"{stats['ops_per_s']:>10,.0f} hits/s  p99 {stats['p99_ms']:.2f} ms"
                            + (f"  wrong {stats['wrong']}" if stats["wrong"] else "")
                            + (f"  errors {stats['errors']}" if stats["errors"] else "")
                        )
    finally:
        for subject in ready:
            await subject.teardown()
    return runs


# The FastAPI example under uvicorn, driven by wrk.

_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"prompt": "%s"}'
wrk.headers["Content-Type"] = "application/json"
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(port: int) -> int:
    body = json.dumps({"prompt": HTTP_PROMPT}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/chat",
        data=body,
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


@contextmanager
def serving(kind: str, pg_url: str, table: str) -> Iterator[int]:
    """Run the example app with cache ``kind`` under uvicorn; yield its port."""
    port = _free_port()
    env = {**os.environ, "BENCH_CACHE": kind, "BENCH_PG_URL": pg_url, "BENCH_TABLE": table}
    command = [sys.executable, "-m", "uvicorn", "benchmarks.http_app:make", "--factory"]
    command += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    server = subprocess.Popen(command, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _post(port) == 200:  # also stores the answer: every later request hits
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"uvicorn with the {kind} cache did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        server.send_signal(signal.SIGINT)  # the lifespan closes the cache
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


def wrk(port: int, connections: int, seconds: int, script: Path) -> dict[str, Any]:
    """One wrk run; requests per second and the count of failed requests."""
    threads = min(connections, 2)
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    command += ["-s", str(script), f"http://127.0.0.1:{port}/chat"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    out = done.stdout
    result: dict[str, Any] = {"requests_per_s": None, "non_2xx": 0, "errors": None}
    for line in out.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            result["requests_per_s"] = float(words[1])
        elif line.startswith("  Non-2xx"):
            result["non_2xx"] = int(words[-1])
        elif line.startswith("  Socket errors"):
            result["errors"] = line.strip()
        elif len(words) == 2 and words[0] in ("50%", "99%"):
            result[f"p{words[0][:-1]}"] = words[1]
    return result


def bench_http(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The example app with each cache, at 1 and 10 connections, interleaved."""
    if shutil.which("wrk") is None:
        _progress("wrk not found (apt-get install -y wrk): FastAPI part skipped")
        return []
    runs: list[dict[str, Any]] = []
    folder = Path(tempfile.mkdtemp(prefix="lsc-wrk-"))
    script = folder / "post.lua"
    script.write_text(_WRK_SCRIPT % HTTP_PROMPT)
    table = "bench_http_ours"
    try:
        with (
            serving("ours", args.pg_url, table) as ours,
            serving("redis", args.pg_url, table) as redis,
            serving("inmemory", args.pg_url, table) as inmemory,
        ):
            ports = {"ours": ours, "redis": redis, "inmemory": inmemory}
            for kind, port in ports.items():
                wrk(port, 10, 1, script)  # warm up: connections, code paths
                _progress(f"warmed up the {kind} app")
            for round_ in range(args.rounds):
                for connections in (1, 10):
                    for kind, port in ports.items():
                        result = wrk(port, connections, args.http_seconds, script)
                        runs.append(
                            {"cache": kind, "connections": connections, "round": round_} | result
                        )
                        _progress(
                            f"round {round_} http c={connections:<3} {kind:9} "
                            f"{result['requests_per_s'] or 0:>8,.0f} req/s"
                            + (f"  non-2xx {result['non_2xx']}" if result["non_2xx"] else "")
                        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _drop_http_table(args.pg_url, table)
    return runs


def _drop_http_table(pg_url: str, table: str) -> None:
    from sqlalchemy import create_engine, make_url

    from .subjects import drop_table

    engine = create_engine(make_url(pg_url).set(drivername="postgresql+psycopg"))
    try:
        drop_table(engine, table)
    finally:
        engine.dispose()


# Summaries.


def medians(
    runs: list[dict[str, Any]], keys: tuple[str, ...], value: str
) -> dict[tuple[Any, ...], float]:
    """Median of ``value`` over the rounds, per combination of ``keys``."""
    grouped: dict[tuple[Any, ...], list[float]] = {}
    for run in runs:
        if run.get(value) is not None:
            grouped.setdefault(tuple(run[k] for k in keys), []).append(float(run[value]))
    return {key: statistics.median(values) for key, values in grouped.items()}


def _per_round(
    runs: list[dict[str, Any]], keys: tuple[str, ...], value: str
) -> dict[tuple[Any, ...], float]:
    return {
        (*(run[k] for k in keys), run["round"]): float(run[value])
        for run in runs
        if run.get(value) is not None
    }


def ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of the issue with its measured ratio.

    ``ratio`` is the ratio of the medians; ``round_ratios`` pairs the two subjects round
    by round (they ran minutes apart at most), which shows how much of it is noise.
    """
    rows = []
    keys = ("workload", "subject", "concurrency")
    hits = medians(results["hits"], keys, "ops_per_s")
    by_round = _per_round(results["hits"], keys, "ops_per_s")
    rounds = sorted({run["round"] for run in results["hits"]})
    for workload, ours, concurrency, peer, target in TARGETS:
        pairs = [
            (
                by_round.get((workload, ours, concurrency, r)),
                by_round.get((workload, peer, concurrency, r)),
            )
            for r in rounds
        ]
        rows.append(
            _ratio_row(
                f"{workload} c={concurrency}: {ours} / {peer}",
                hits.get((workload, ours, concurrency)),
                hits.get((workload, peer, concurrency)),
                target,
                pairs,
            )
        )
    http_keys = ("cache", "connections")
    http = medians(results["http"], http_keys, "requests_per_s")
    http_round = _per_round(results["http"], http_keys, "requests_per_s")
    http_rounds = sorted({run["round"] for run in results["http"]})
    for connections in (1, 10):
        for peer, target in HTTP_TARGETS:
            pairs = [
                (http_round.get(("ours", connections, r)), http_round.get((peer, connections, r)))
                for r in http_rounds
            ]
            rows.append(
                _ratio_row(
                    f"FastAPI {connections} conn: ours / {peer}",
                    http.get(("ours", connections)),
                    http.get((peer, connections)),
                    target,
                    pairs,
                )
            )
    return rows


def ceilings(results: dict[str, Any]) -> list[dict[str, Any]]:
    """InMemoryCache against AsyncRedisCache in the FastAPI app, per connection count.

    InMemoryCache does no work on a hit (it returns the stored objects themselves), so
    no cache can serve the app faster: its ratio is the most a ">= x Redis" target can
    reach on this machine.
    """
    http = medians(results["http"], ("cache", "connections"), "requests_per_s")
    rows = []
    for connections in (1, 10):
        mine, theirs = http.get(("inmemory", connections)), http.get(("redis", connections))
        if mine and theirs:
            rows.append({"connections": connections, "inmemory_over_redis": mine / theirs})
    return rows


def _ratio_row(
    label: str,
    mine: float | None,
    theirs: float | None,
    target: float,
    pairs: list[tuple[float | None, float | None]],
) -> dict[str, Any]:
    ratio = mine / theirs if mine and theirs else None
    paired = sorted(a / b for a, b in pairs if a and b)
    return {
        "what": label,
        "ours": mine,
        "peer": theirs,
        "ratio": ratio,
        "round_ratios": paired,
        "target": target,
        "met": None if ratio is None else ratio >= target,
    }


def print_summary(results: dict[str, Any]) -> None:
    """Medians per subject, then the ratios."""
    hits = medians(results["hits"], ("workload", "subject", "concurrency"), "ops_per_s")
    print("\nhits/s, median of the rounds")
    for (workload, subject, concurrency), value in sorted(hits.items()):
        print(f"  {workload:9} c={concurrency:<5} {subject:20} {value:>10,.0f}")
    http = medians(results["http"], ("cache", "connections"), "requests_per_s")
    if http:
        print("\nFastAPI example, requests/s, median of the rounds")
        for (cache, connections), value in sorted(http.items()):
            print(f"  {connections:>2} conn  {cache:9} {value:>8,.0f}")
    print("\nratios against the issue's targets")
    for row in results["ratios"]:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[row["met"]]
        paired = row.get("round_ratios") or []
        spread = f"rounds {paired[0]:.2f}-{paired[-1]:.2f}x" if paired else ""
        print(f"  {row['what']:46} {ratio:>7}  {spread:22} (target >= {row['target']}x: {verdict})")
    for row in results.get("ceilings", []):
        print(
            f"  ceiling: FastAPI {row['connections']} conn, inmemory / redis "
            f"{row['inmemory_over_redis']:.2f}x (no cache serves the app faster than inmemory)"
        )


def write_chart(results: dict[str, Any], path: Path) -> None:
    """Bars: hits/s per subject per (workload, concurrency); requests/s per cache."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hits = medians(results["hits"], ("workload", "subject", "concurrency"), "ops_per_s")
    http = medians(results["http"], ("cache", "connections"), "requests_per_s")
    panels = sorted({(w, c) for w, _, c in hits}, key=lambda p: (p[0] != "repeated", p[1]))
    columns = 4
    rows = -(-(len(panels) + 1) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
    axes = list(grid.flat)
    for unused in axes[len(panels) + 1 :]:
        unused.axis("off")
    for axis, (workload, concurrency) in zip(axes, panels, strict=False):
        names = [s for w, s, c in sorted(hits) if (w, c) == (workload, concurrency)]
        values = [hits[(workload, s, concurrency)] for s in names]
        axis.barh(
            names, values, color=["tab:blue" if s.startswith("ours") else "tab:gray" for s in names]
        )
        axis.set_xscale("log")
        axis.set_title(f"{workload} keys, c={concurrency}")
        axis.set_xlabel("hits/s (log)")
    axis = axes[len(panels)]
    labels = [f"{cache} {conns}c" for cache, conns in sorted(http)]
    axis.barh(labels, [http[key] for key in sorted(http)], color="tab:green")
    axis.set_title("FastAPI example (wrk)")
    axis.set_xlabel("requests/s")
    figure.suptitle("Hits on PostgreSQL, medians of interleaved rounds (2 shared cores: noisy)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def summarize(path: Path) -> None:
    """Recompute the ratios of a ``hot.json``, print them, and redraw its chart."""
    results = json.loads(path.read_text())
    results["ratios"] = ratios(results)
    results["ceilings"] = ceilings(results)
    path.write_text(json.dumps(results, indent=1, default=str))
    print_summary(results)
    write_chart(results, path.with_suffix(".png"))


def main(argv: list[str] | None = None) -> int:
    """Run, print the medians and ratios, write ``hot.json`` and ``hot.png``."""
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", PendingDeprecationWarning)
    args = parse_args(argv)
    started = time.perf_counter()
    workload = build_workload(args.keys)
    results: dict[str, Any] = {
        "command": [sys.executable, "-m", "benchmarks.hot", *(argv or sys.argv[1:])],
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "machine": machine_info(),
        "workload": workload.describe(),
    }
    results["skipped"] = []
    results["hits"] = asyncio.run(bench_hits(args, workload, results["skipped"]))
    results["http"] = [] if args.no_http else bench_http(args)
    results["ratios"] = ratios(results)
    results["ceilings"] = ceilings(results)
    results["machine"]["load_average_at_end"] = load_average()
    results["duration_s"] = time.perf_counter() - started
    print_summary(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hot.json").write_text(json.dumps(results, indent=1, default=str))
    write_chart(results, args.out / "hot.png")
    took = results["duration_s"]
    print(f"\nwrote {args.out / 'hot.json'} and {args.out / 'hot.png'} in {took:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
