"""Benchmark runner: ``python -m benchmarks.run [--quick] [options]`` from the repo root.

Runs every subject on every backend, operation and concurrency level, one after the
other in this process, then prints a table and the headline ratios and writes
``results.json`` and ``throughput.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import report
from .machine import load_average, machine_info, postgres_info
from .measure import Budget, RunStats, TracedPeak, idle_loop_lag, run_async, run_threads
from .processes import run_process_scaling
from .subjects import (
    OURS_ASYNC_VARIANTS,
    AsyncSubject,
    Backend,
    Subject,
    ThreadSubject,
    build_subjects,
    supported_kwargs,
)
from .table_size import SizePlan, measure_table_size
from .workload import Workload, build_workload

OPERATIONS = ("hits", "misses", "updates", "mixed")
BACKENDS = ("sqlite", "postgresql", "mysql")
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
UPDATE_EVERY = 10  # mixed: every 10th operation is an update, the rest are hits


@dataclass(frozen=True)
class Settings:
    """Budgets of one run of the runner (full or quick)."""

    min_ops: int
    ops_per_worker: int
    seconds: float
    warmup_seconds: float
    size_plan: SizePlan

    def budget(self, concurrency: int) -> Budget:
        """At most max(min_ops, ops_per_worker * concurrency) ops, or ``seconds``."""
        return Budget(max(self.min_ops, self.ops_per_worker * concurrency), self.seconds)

    def warmup(self, concurrency: int) -> Budget:
        """A short untimed run before each timed one: connections, caches, code paths."""
        return Budget(min(200, max(20, concurrency)), self.warmup_seconds)


def _csv(choices: tuple[str, ...]) -> Any:
    def parse(value: str) -> list[str]:
        items = [item.strip() for item in value.split(",") if item.strip()]
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            msg = f"choose from {', '.join(choices)} (got {value!r})"
            raise argparse.ArgumentTypeError(msg)
        return items

    return parse


def _int_csv(value: str) -> list[int]:
    try:
        levels = sorted({int(item) for item in value.split(",") if item.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"comma-separated integers, got {value!r}") from exc
    if not levels or levels[0] < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be >= 1")
    return levels


def _json_dict(value: str) -> dict[str, Any]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return parsed


def _variant(value: str) -> tuple[str, dict[str, Any]]:
    name, sep, kwargs = value.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(
            "expected NAME=JSON, e.g. ours-mc50='{\"max_concurrency\": 50}'"
        )
    return name.strip(), _json_dict(kwargs)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Benchmark langchain-sqlalchemy-cache against langchain_community and "
        "raw drivers on SQLite and PostgreSQL.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small budgets, concurrency 1,10,100, 100k-row table-size test (~2 min)",
    )
    parser.add_argument("--backends", type=_csv(BACKENDS), default=list(BACKENDS))
    parser.add_argument("--ops", type=_csv(OPERATIONS), default=list(OPERATIONS))
    parser.add_argument(
        "--concurrency", type=_int_csv, default=None, help="default 1,10,100,1000 (quick: 1,10,100)"
    )
    parser.add_argument(
        "--subjects",
        type=lambda v: {s.strip() for s in v.split(",") if s.strip()},
        default=None,
        help="only these subjects, e.g. ours-async,community (default: all)",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("TEST_POSTGRES_URL", DEFAULT_PG_URL),
        help="PostgreSQL URL (default: $TEST_POSTGRES_URL or %(default)s)",
    )
    parser.add_argument(
        "--mysql-url",
        default=os.environ.get("TEST_MYSQL_URL", DEFAULT_MYSQL_URL),
        help="MySQL/MariaDB URL (default: $TEST_MYSQL_URL or %(default)s)",
    )
    parser.add_argument(
        "--processes",
        type=_int_csv,
        default=None,
        help="process counts of the many-process run on PostgreSQL and MariaDB "
        "(default 1,2,4; quick 1,2)",
    )
    parser.add_argument(
        "--sqlite-path",
        type=Path,
        default=None,
        help="directory for the SQLite files, one per subject (default: a temporary directory)",
    )
    parser.add_argument("--keys", type=int, default=1000, help="distinct stored entries")
    parser.add_argument(
        "--big-rows",
        type=int,
        default=None,
        help="rows in the big table of the table-size test (default 1,000,000; quick "
        "100,000; 0 skips the test)",
    )
    parser.add_argument("--small-rows", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=None, help="time cap per run")
    parser.add_argument("--min-ops", type=int, default=None, help="op budget floor per run")
    parser.add_argument(
        "--ops-per-worker", type=int, default=None, help="op budget per worker per run"
    )
    parser.add_argument(
        "--floor-pool-size",
        type=int,
        default=5,
        help="connections of the raw-driver floors (default 5, SQLAlchemy's pool_size)",
    )
    parser.add_argument(
        "--ours-kwargs",
        type=_json_dict,
        default={},
        help="JSON object of extra SQLAlchemyCache kwargs for every 'ours' subject",
    )
    parser.add_argument(
        "--variant",
        type=_variant,
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="extra async variant of this cache with these constructor kwargs (repeatable)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc pass")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "out", help="output dir"
    )
    args = parser.parse_args(argv)
    if args.concurrency is None:
        args.concurrency = [1, 10, 100] if args.quick else [1, 10, 100, 1000]
    if args.processes is None:
        args.processes = [1, 2] if args.quick else [1, 2, 4]
    if args.big_rows is None:
        args.big_rows = 100_000 if args.quick else 1_000_000
    for name, kwargs in args.variant:
        unknown = supported_kwargs({**args.ours_kwargs, **kwargs})
        if unknown:
            parser.error(f"--variant {name}: SQLAlchemyCache does not accept {', '.join(unknown)}")
    return args


def settings_for(args: argparse.Namespace) -> Settings:
    """Budgets for full or quick mode, with command-line overrides."""
    if args.quick:
        base = Settings(300, 5, 1.0, 0.25, SizePlan(args.small_rows, args.big_rows, 4, 100))
    else:
        base = Settings(2000, 20, 5.0, 0.5, SizePlan(args.small_rows, args.big_rows, 8, 250))
    return Settings(
        min_ops=args.min_ops if args.min_ops is not None else base.min_ops,
        ops_per_worker=args.ops_per_worker
        if args.ops_per_worker is not None
        else base.ops_per_worker,
        seconds=args.seconds if args.seconds is not None else base.seconds,
        warmup_seconds=base.warmup_seconds,
        size_plan=base.size_plan,
    )


@dataclass(frozen=True)
class Step:
    """Operation ``index`` of a run: an update (value given) or a lookup (hit expected?)."""

    prompt: str
    value: Any
    expect_hit: bool


def step_maker(workload: Workload, op: str, keys: list[int]) -> Any:
    """Map an operation index to a Step, cycling over the usable keys."""
    prompts, misses, values = workload.prompts, workload.miss_prompts, workload.values

    def step(index: int) -> Step:
        key = keys[index % len(keys)]
        if op == "misses":
            return Step(misses[index % len(misses)], None, expect_hit=False)
        if op == "updates" or (op == "mixed" and index % UPDATE_EVERY == UPDATE_EVERY - 1):
            return Step(prompts[key], values[key], expect_hit=True)
        return Step(prompts[key], None, expect_hit=True)

    return step


async def timed_run(
    subject: Subject, workload: Workload, op: str, keys: list[int], concurrency: int, budget: Budget
) -> RunStats:
    """One run of ``op`` on ``subject`` from ``concurrency`` workers."""
    step = step_maker(workload, op, keys)
    llm = workload.llm_string
    if isinstance(subject, AsyncSubject):
        asubject = subject

        async def async_op(index: int) -> bool:
            s = step(index)
            if s.value is not None:
                await asubject.aupdate(s.prompt, llm, s.value)
                return True
            return (await asubject.alookup(s.prompt, llm) is not None) == s.expect_hit

        return await run_async(async_op, concurrency, budget, lag=True)
    assert isinstance(subject, ThreadSubject)
    tsubject = subject

    def sync_op(index: int) -> bool:
        s = step(index)
        if s.value is not None:
            tsubject.update(s.prompt, llm, s.value)
            return True
        return (tsubject.lookup(s.prompt, llm) is not None) == s.expect_hit

    return run_threads(sync_op, concurrency, budget)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def bench_subject(
    subject: Subject,
    workload: Workload,
    keys: list[int],
    args: argparse.Namespace,
    settings: Settings,
    results: dict[str, Any],
) -> None:
    """Every (op, concurrency) run of one subject, then its memory pass."""
    backend = subject.backend.name
    for op in args.ops:
        for concurrency in args.concurrency:
            await timed_run(subject, workload, op, keys, concurrency, settings.warmup(concurrency))
            gc.collect()
            budget = settings.budget(concurrency)
            connects = subject.connects
            stats = await timed_run(subject, workload, op, keys, concurrency, budget)
            run = {
                "backend": backend,
                "subject": subject.name,
                "mode": subject.mode,
                "op": op,
                "concurrency": concurrency,
                "budget_ops": budget.ops,
                "budget_s": budget.seconds,
                **stats.as_dict(),
                "new_connections": subject.connects - connects,
            }
            results["runs"].append(run)
            _progress(report.run_row(run))
            if stats.first_error:
                _progress(f"    first error: {stats.first_error}")
    if not args.no_memory and "hits" in args.ops:
        concurrency = max(args.concurrency)
        with TracedPeak() as traced:
            stats = await timed_run(
                subject, workload, "hits", keys, concurrency, settings.budget(concurrency)
            )
        results["memory"].append(
            {
                "backend": backend,
                "subject": subject.name,
                "op": "hits",
                "concurrency": concurrency,
                "ops": stats.ops,
                "tracemalloc_peak_mib": traced.peak_mib,
            }
        )


async def bench_backend(
    backend: Backend,
    workload: Workload,
    args: argparse.Namespace,
    settings: Settings,
    results: dict[str, Any],
) -> list[int]:
    """All subjects on one backend; returns the keys every subject could use."""
    variants = {**OURS_ASYNC_VARIANTS, **dict(args.variant)}
    subjects, skipped = build_subjects(
        backend, variants, args.ours_kwargs, args.floor_pool_size, args.subjects
    )
    section: dict[str, Any] = {"subjects": [], "skipped": skipped, "notes": []}
    results["backends"][backend.name] = section
    for note in skipped:
        _progress(f"[{backend.name}] skipped {note}")
    keys = list(range(workload.size))
    for subject in subjects:
        _progress(f"[{backend.name}] {subject.name}: storing {workload.size} entries")
        try:
            stored = set(await subject.setup(workload))
            if len(stored) < workload.size:
                # Every later subject on this backend cycles over the same usable keys.
                keys = [k for k in keys if k in stored]
                section["notes"].append(
                    f"{subject.name} stored {len(stored)} of {workload.size} entries; every "
                    f"subject on {backend.name} cycles over the {len(keys)} usable ones"
                )
                _progress(f"[{backend.name}] note: {section['notes'][-1]}")
            info = subject.describe()
            await bench_subject(subject, workload, keys, args, settings, results)
        except Exception as exc:
            message = f"{subject.name} failed: {type(exc).__name__}: {exc}"
            section["notes"].append(message)
            _progress(f"[{backend.name}] {message}")
            info = subject.describe()
        finally:
            await subject.teardown()
        info["notes"] = subject.notes
        section["subjects"].append(info)
    section["keys_used"] = len(keys)
    return keys


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """The whole benchmark; returns the results document."""
    settings = settings_for(args)
    started = time.perf_counter()
    results: dict[str, Any] = {
        "command": [sys.executable, "-m", "benchmarks.run", *sys.argv[1:]],
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick,
        "config": {
            "backends": args.backends,
            "ops": args.ops,
            "concurrency": args.concurrency,
            "budget": {
                "min_ops": settings.min_ops,
                "ops_per_worker": settings.ops_per_worker,
                "seconds": settings.seconds,
                "warmup_seconds": settings.warmup_seconds,
            },
            "mixed_update_every": UPDATE_EVERY,
            "floor_pool_size": args.floor_pool_size,
            "ours_kwargs": args.ours_kwargs,
            "variants": dict(args.variant),
            "table_size": settings.size_plan.__dict__,
        },
        "machine": machine_info(),
        "runs": [],
        "memory": [],
        "backends": {},
        "table_size": None,
    }
    _progress(f"building workload of {args.keys} entries")
    workload = build_workload(args.keys)
    results["workload"] = workload.describe()
    results["idle_loop_lag_ms"] = dict(zip(("p99", "max"), await idle_loop_lag(), strict=True))
    _progress(report.header())

    own_dir = args.sqlite_path is None
    sqlite_dir = Path(tempfile.mkdtemp(prefix="lsc-bench-")) if own_dir else args.sqlite_path
    sqlite_dir.mkdir(parents=True, exist_ok=True)
    try:
        for name in args.backends:
            backend = Backend(
                name, pg_url=args.pg_url, sqlite_dir=sqlite_dir, mysql_url=args.mysql_url
            )
            if name == "postgresql":
                results["postgresql"] = await postgres_info(backend.asyncpg_dsn())
            keys = await bench_backend(backend, workload, args, settings, results)
            if name == "postgresql" and args.big_rows > 0:
                _progress(f"[postgresql] table size: {args.small_rows:,} vs {args.big_rows:,} rows")
                results["table_size"] = await measure_table_size(
                    backend, workload, keys, settings.size_plan, args.ours_kwargs
                )
    finally:
        if own_dir:
            shutil.rmtree(sqlite_dir, ignore_errors=True)
    server_backends = [b for b in ("postgresql", "mysql") if b in args.backends]
    if server_backends and args.processes:
        results["processes"] = run_process_scaling(
            {b: args.pg_url if b == "postgresql" else args.mysql_url for b in server_backends},
            args.processes,
            seconds=settings.seconds,
            concurrency=100,
            progress=_progress,
        )
    results["machine"]["load_average_at_end"] = load_average()
    results["duration_s"] = time.perf_counter() - started
    measured = {r["subject"] for r in results["runs"]}
    variants = [v for v in {**OURS_ASYNC_VARIANTS, **dict(args.variant)} if v in measured]
    results["ratios"] = report.compute_ratios(results["runs"], results["table_size"], variants)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run, then print the table and ratios and write the JSON and chart."""
    # langchain_community's sunset notice and langchain_core's beta/pending notices on
    # every `loads` call: silenced so they do not flood the output (still emitted).
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", PendingDeprecationWarning)
    args = parse_args(argv)
    results = asyncio.run(bench(args))
    out = sys.stdout
    print(file=out)
    report.print_runs(results["runs"], out)
    if results["memory"]:
        report.print_memory(results["memory"], out)
    report.print_table_size(results["table_size"], out)
    report.print_processes(results.get("processes"), out)
    for name, section in results["backends"].items():
        for note in section["notes"]:
            print(f"\nnote [{name}]: {note}", file=out)
    report.print_ratios(results["ratios"], out)
    report.write_json(results, args.out / "results.json")
    if results["runs"]:
        report.write_chart(results["runs"], args.out / "throughput.png")
    print(
        f"\nwrote {args.out / 'results.json'} and {args.out / 'throughput.png'} "
        f"in {results['duration_s']:.0f} s",
        file=out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
