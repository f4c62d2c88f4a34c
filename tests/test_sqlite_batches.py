"""SQLite: one batch of upserts is one transaction, so a writer killed mid-batch leaves
all of the batch or none of it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from langchain_core.outputs import Generation

from langchain_sqlalchemy_cache import SQLiteCache

from .batch_writer import ROWS, STOP_AT, TABLE

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent


def _text(hit: Sequence[Generation] | None) -> str | None:
    return None if hit is None else hit[0].text


def test_a_writer_killed_mid_batch_leaves_whole_batches(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    writer = subprocess.Popen(
        [sys.executable, "-m", "tests.batch_writer", str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    batches: list[list[str]] = []
    stopped = False
    assert writer.stdout is not None
    for line in writer.stdout:  # the writer's own account of where it is
        if line.startswith("batch "):
            batches.append(line.split(" ", 1)[1].strip().split(","))
        elif line.strip() == "mid-batch":
            stopped = True
            break
    os.kill(writer.pid, signal.SIGKILL)
    _, errors = writer.communicate()
    assert stopped, f"the writer never reached the middle of a batch: {errors}"
    assert writer.returncode == -signal.SIGKILL
    # The writer stopped inside a batch of several rows, after writing some of them.
    assert len(batches[-1]) > STOP_AT - sum(len(b) for b in batches[:-1]) > 0

    with SQLiteCache(path, table_name=TABLE) as cache:
        round_of = {f"p{i}": _text(cache.lookup(f"p{i}", "m")) for i in range(ROWS)}
    assert set(round_of.values()) <= {"round 1", "round 2"}
    for batch in batches[:-1]:  # finished batches: all of the second round
        assert {round_of[prompt] for prompt in batch} == {"round 2"}
    # The batch cut short: none of it (row by row, its first rows would be there).
    assert {round_of[prompt] for prompt in batches[-1]} == {"round 1"}
