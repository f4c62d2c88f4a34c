"""Four OS processes share one cache table on a server, and a fifth clears it meanwhile."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, create_engine, func, select

from langchain_sqlalchemy_cache import SQLAlchemyCache, cache_table

from .conftest import drop_table, unique_table
from .process_worker import AFTER_CLEAR, BUSY_AFTER

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = 4


def start(url: str, table: str, role: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.process_worker", url, table, role],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def tell(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdin is not None
    process.stdin.write(f"{line}\n")
    process.stdin.flush()


def expect(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdout is not None
    assert process.stdout.readline().strip() == line


def final_report(process: subprocess.Popen[str]) -> dict[str, Any]:
    """The JSON report a process prints last, once it has exited."""
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err[-2000:]
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


@pytest.fixture(params=["postgresql", "mysql"])
def server_url(request: pytest.FixtureRequest) -> str:
    fixture = {"postgresql": "postgres_url", "mysql": "mysql_url"}[request.param]
    return str(request.getfixturevalue(fixture))


def test_four_processes_and_a_clear_share_one_table(server_url: str) -> None:
    table = unique_table()
    # The clear lands in the middle of the run by construction, however slowly each
    # process runs: every process connects and says "ready" before any starts; the clear
    # starts once every worker says it is busy; and the workers, which keep going until
    # told the clear has finished, stop only some lookups after that.
    workers = [start(server_url, table, str(worker)) for worker in range(PROCESSES)]
    clearer = start(server_url, table, "clear")
    processes = [*workers, clearer]
    try:
        for process in processes:
            expect(process, "ready")
        for process in workers:
            tell(process, "go")
        for process in workers:
            expect(process, "busy")
        tell(clearer, "go")
        assert clearer.stdout is not None
        outputs = [json.loads(clearer.stdout.readline())]  # the clear has finished
        for process in workers:
            tell(process, "the clear has finished")
        outputs += [final_report(process) for process in workers]
        _, err = clearer.communicate(timeout=240)
        assert clearer.returncode == 0, err[-2000:]
    finally:
        for process in processes:
            process.kill()
    cleared, reports = outputs[0], outputs[1:]
    clear_started, clear_finished = cleared["started"], cleared["finished"]

    written: dict[str, set[str]] = {}
    for report in reports:
        for key, answer in report["writes"]:
            written.setdefault(key, set()).add(answer)
    hits = [(key, answer) for report in reports for key, answer in report["hits"]]
    assert [report["errors"] for report in reports] == [[]] * PROCESSES
    # Every hit is a value some process wrote for that very key.
    assert all(answer in written.get(key, ()) for key, answer in hits)
    assert len(hits) > 1000
    assert sum(len(report["writes"]) for report in reports) >= 60
    # The clear ran while every process was still at work.
    for report in reports:
        assert report["told_cleared_at"] >= BUSY_AFTER
        assert report["lookups"] >= report["told_cleared_at"] + AFTER_CLEAR
        assert report["started"] < clear_started < clear_finished < report["finished"]

    # Keys are only ever deleted by the clear, and lookups missed again after it (a
    # process the scheduler starves may find every key rewritten by the others).
    assert sum(t > clear_started for r in reports for t in r["misses"]) > 0

    cache = SQLAlchemyCache(server_url, table_name=table)
    # What the table holds at the end is also only values written for their keys.
    engine = create_engine(cache.sync_engine.url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(func.count()).select_from(cache_table(MetaData(), table))
        ).scalar_one()
    engine.dispose()
    assert 0 < rows <= 60
    for key, answers in written.items():
        found = cache.lookup(key, "shared-model")
        assert found is None or found[0].text in answers
    drop_table(cache, table)
    cache.close()
