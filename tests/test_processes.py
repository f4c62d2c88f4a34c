"""Four OS processes share one cache table on a server, and a fifth clears it meanwhile."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from langchain_sqlalchemy_cache import SQLAlchemyCache

from .conftest import drop_table, unique_table

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


def go(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("go\n")
    process.stdin.flush()


@pytest.fixture(params=["postgresql", "mysql"])
def server_url(request: pytest.FixtureRequest) -> str:
    fixture = {"postgresql": "postgres_url", "mysql": "mysql_url"}[request.param]
    return str(request.getfixturevalue(fixture))


def test_four_processes_and_a_clear_share_one_table(server_url: str) -> None:
    table = unique_table()
    # Every process imports, connects and says "ready" before any starts, so that the
    # clear lands in the middle of the run however slowly processes start.
    processes = [start(server_url, table, str(worker)) for worker in range(PROCESSES)]
    processes.append(start(server_url, table, "clear"))
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in processes[:PROCESSES]:
            go(process)
        time.sleep(1.5)  # the workers are writing and reading by now
        go(processes[PROCESSES])
        outputs = []
        for process in processes:
            out, err = process.communicate(timeout=240)
            assert process.returncode == 0, err[-2000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in processes:
            process.kill()
    reports, cleared = outputs[:PROCESSES], outputs[PROCESSES]
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
    times = [(r["started"], r["finished"]) for r in reports]
    assert all(s < clear_started and clear_finished < f for s, f in times), (
        times,
        clear_started,
        clear_finished,
    )

    # Keys are only ever deleted by the clear, and lookups missed again after it (a
    # process the scheduler starves may find every key rewritten by the others).
    assert sum(t > clear_started for r in reports for t in r["misses"]) > 0

    cache = SQLAlchemyCache(server_url, table_name=table)
    # What the table holds at the end is also only values written for their keys.
    engine = create_engine(cache.sync_engine.url)
    with engine.connect() as connection:
        rows = connection.execute(select(func.count()).select_from(cache._table)).scalar_one()
    engine.dispose()
    assert 0 < rows <= 60
    for key, answers in written.items():
        found = cache.lookup(key, "shared-model")
        assert found is None or found[0].text in answers
    drop_table(cache, table)
    cache.close()
