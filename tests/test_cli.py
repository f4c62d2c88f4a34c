"""The command line's subcommands: stats, purge, clear, migrate (and demo's URL argument).

Most tests run ``main([...])`` in this process; each subcommand family also runs once as
a real ``python -m langchain_sqlalchemy_cache`` process. Every error must be one line
on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import io
import os
import pty
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from langchain_core.load import dumps
from langchain_core.outputs import Generation
from sqlalchemy import ColumnClause, column, insert, make_url, table

from langchain_sqlalchemy_cache import SQLAlchemyCache
from langchain_sqlalchemy_cache._cli import (
    ProgressBar,
    approximate_duration,
    counted,
    duration,
    hide_password,
    main,
)
from langchain_sqlalchemy_cache._migrate import FULL_LAYOUT, MigrationProgress

from .community import CLAUDE, GPT, VALUES, open_community, store_values
from .conftest import CacheFactory, unique_table
from .helpers import age, run_cli, table_of, value


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the command line in this process: (exit status, stdout, stderr)."""
    try:
        status = main(list(args))
    except SystemExit as exc:  # argparse's usage errors
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err


@pytest.fixture
def stocked(make_cache: CacheFactory) -> SQLAlchemyCache:
    """A cache with 3 GPT and 2 Claude entries in the default namespace, 1 in 'team'."""
    cache = make_cache(local_max_bytes=0)  # reads the table the command line changes
    for i in range(3):
        cache.update(f"gpt {i}", GPT, value(f"answer {i}"))
    for i in range(2):
        cache.update(f"claude {i}", CLAUDE, value(f"answer {i}"))
    make_cache(table_name=table_of(cache).name, namespace="team").update("p", GPT, value("t"))
    return cache


def entries(cache: SQLAlchemyCache) -> int:
    return cache.table_stats().entries


# Durations and other values.


@pytest.mark.parametrize(
    ("text_", "seconds"),
    [
        ("3600", 3600),
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("7d", 604800),
        ("1.5h", 5400),
        (" 2H ", 7200),
        ("0.5", 0.5),
    ],
)
def test_durations(text_: str, seconds: float) -> None:
    assert duration(text_) == seconds


@pytest.mark.parametrize("bad", ["5x", "0", "0s", "-3", "", "1w", "h", "1h30m", "nan"])
@pytest.mark.parametrize("option", [("purge", "--ttl"), ("clear", "--older-than")])
def test_bad_durations_are_one_line_usage_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bad: str, option: tuple[str, str]
) -> None:
    command, flag = option
    status, out, err = cli(capsys, command, f"sqlite:///{tmp_path / 'x.db'}", flag, bad)
    assert status == 2
    assert out == ""
    assert_one_line_error(err, f"error: argument {flag}: invalid duration", "90s, 15m, 2h, 7d")


@pytest.mark.parametrize(
    "args",
    [
        ["purge", "sqlite:///x.db"],  # neither --ttl nor --max-entries
        ["purge", "sqlite:///x.db", "--max-entries", "0"],
        ["migrate", "sqlite:///x.db", "--batch-size", "none"],
        ["stats"],  # no URL
        ["stats", "sqlite:///x.db", "--unknown"],
        ["frobnicate"],
    ],
)
def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    status, _, err = cli(capsys, *args)
    assert status == 2
    assert_one_line_error(err, "error: ")


def test_passwords_are_hidden() -> None:
    assert hide_password("postgresql://app:hunter2@db/x") == "postgresql://app:***@db/x"
    assert "hunter2" not in hide_password("postgresql://app:hunter2@db:notaport/x")
    assert hide_password("postgresql://app:p@ss@db/x") == "postgresql://app:***@db/x"
    assert "hunter2" not in hide_password("mysql://app@db/x?password=hunter2")
    assert "hunter2" not in hide_password("postgresql//app:hunter2@db/x")  # unparsable


@pytest.mark.parametrize(
    "url",
    [
        "postgresql//app:hunter2@db/x",  # no "://"
        "postgresql://app:hunter2@db:notaport/x",  # a port that is no number
        "mysql://app@127.0.0.1:1/x?password=hunter2",
    ],
)
def test_bad_urls_are_one_line_without_the_password(
    capsys: pytest.CaptureFixture[str], url: str
) -> None:
    status, _, err = cli(capsys, "stats", url)
    assert status == 1
    assert_one_line_error(err, "error: ")
    assert "hunter2" not in err


def test_ages_are_rounded_to_their_largest_unit() -> None:
    assert [approximate_duration(s) for s in (0, 45.7, 125, 7200, 284_412)] == [
        "0s",
        "45s",
        "2m",
        "2h",
        "3d",
    ]


def test_stats_into_a_closed_pipe_is_quiet(backend_url: str, stocked: SQLAlchemyCache) -> None:
    # `stats URL | head -1`: the reader leaves early; no error, no traceback.
    command = [sys.executable, "-m", "langchain_sqlalchemy_cache", "stats", backend_url]
    command += ["--table", table_of(stocked).name]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None
        process.stdout.close()  # before it writes a word
        _, err = process.communicate(timeout=120)
    assert process.returncode == 0
    assert err == b""


# stats


def test_stats(
    capsys: pytest.CaptureFixture[str], backend_url: str, stocked: SQLAlchemyCache
) -> None:
    name = table_of(stocked).name
    status, out, err = cli(capsys, "stats", backend_url, "--table", name)
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"table {name!r} in {hide_password(backend_url)}"
    assert "entries:   5" in lines
    assert "models:    2" in lines
    models = [line.split(None, 1) for line in lines[lines.index("models:    2") + 1 :]]
    assert models == [["3", GPT], ["2", CLAUDE]]
    assert any(line.startswith("oldest:    20") and "UTC" in line for line in lines)
    assert any(line.startswith("payloads:  ") and "bytes" in line for line in lines)

    status, out, _ = cli(capsys, "stats", backend_url, "--table", name, "--namespace", "team")
    assert status == 0
    assert f"table {name!r} (namespace 'team') in" in out
    assert "entries:   1" in out


def test_stats_of_a_missing_table_or_another_layout(
    capsys: pytest.CaptureFixture[str], backend_url: str
) -> None:
    if backend_url.startswith("sqlite"):
        path = make_url(backend_url).database
        assert path is not None
        status, out, err = cli(capsys, "stats", backend_url, "--table", "no_such_table")
        assert (status, out, err) == (1, "", f"error: no SQLite database at {path!r}\n")
        assert not os.path.exists(path)  # a mistyped path creates no empty database
        sqlite3.connect(path).close()
    status, out, err = cli(capsys, "stats", backend_url, "--table", "no_such_table")
    assert (status, out) == (1, "")
    assert err == f"error: table 'no_such_table' does not exist in {hide_password(backend_url)}\n"
    with open_community(backend_url) as community:
        community.full()
        args = ["--table", FULL_LAYOUT.name]
        if community.schema:
            args += ["--schema", community.schema]
        status, _, err = cli(capsys, "stats", backend_url, *args)
    assert status == 1
    assert_one_line_error(err, "is not a langchain-sqlalchemy-cache table", "lacks the columns")


def test_stats_subprocess(backend_url: str, stocked: SQLAlchemyCache) -> None:
    result = run_cli("stats", backend_url, "--table", table_of(stocked).name)
    assert result.returncode == 0, result.stderr
    assert "entries:   5" in result.stdout
    missing = run_cli("stats", backend_url, "--table", "no_such_table")
    assert missing.returncode == 1
    assert_one_line_error(missing.stderr, "error: table 'no_such_table' does not exist in ")


def test_errors_never_show_a_password_or_a_traceback(
    capsys: pytest.CaptureFixture[str], postgres_url: str
) -> None:
    with_password = make_url(postgres_url).set(password="hunter2").render_as_string(False)
    status, _, err = cli(capsys, "stats", with_password, "--table", "no_such_table")
    assert status == 1
    assert_one_line_error(err, "does not exist in postgresql://", ":***@")
    assert "hunter2" not in err
    status, _, err = cli(capsys, "stats", "postgresql://app:hunter2@127.0.0.1:1/x")
    assert status == 1
    assert_one_line_error(err, "error: ", "Connection refused")
    assert "hunter2" not in err


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite://", "in-memory SQLite database"),
        ("not a url", "cannot parse the database URL"),
        ("oracle://scott:tiger@db/x", "'oracle' database is not supported"),
    ],
)
def test_unusable_urls(capsys: pytest.CaptureFixture[str], url: str, message: str) -> None:
    for command in ("stats", "clear", "migrate"):
        status, _, err = cli(capsys, command, url, "--yes" if command == "clear" else "--table=t")
        assert status == 1
        assert_one_line_error(err, "error: ", message)
        assert "tiger" not in err


# purge


def test_purge(
    capsys: pytest.CaptureFixture[str], backend_url: str, stocked: SQLAlchemyCache
) -> None:
    name = table_of(stocked).name
    age(stocked, "gpt 0", 3 * 86400, GPT)
    age(stocked, "gpt 1", 2 * 86400, GPT)
    status, out, err = cli(capsys, "purge", backend_url, "--table", name, "--ttl", "2.5d")
    assert (status, err) == (0, "")
    assert out == (
        f"deleted 1 entry written more than 60h ago from table {name!r} in "
        f"{hide_password(backend_url)}\n"
    )
    assert stocked.lookup("gpt 0", GPT) is None
    assert entries(stocked) == 4
    # The oldest go first; another namespace is not counted or touched.
    status, out, _ = cli(capsys, "purge", backend_url, "--table", name, "--max-entries", "3")
    assert status == 0
    assert out.startswith("deleted 1 entry beyond the newest 3 from table")
    assert stocked.lookup("gpt 1", GPT) is None
    assert entries(stocked) == 3
    # Both at once.
    status, out, _ = cli(
        capsys, "purge", backend_url, "--table", name, "--ttl", "1h", "--max-entries", "1"
    )
    assert status == 0
    assert out.splitlines()[0].startswith("deleted 0 entries written more than 1h ago")
    assert out.splitlines()[1].startswith("deleted 2 entries beyond the newest 1 ")
    with SQLAlchemyCache(backend_url, table_name=name, namespace="team") as team:
        assert team.lookup("p", GPT) == value("t")


def test_purge_subprocess(backend_url: str, stocked: SQLAlchemyCache) -> None:
    age(stocked, "gpt 0", 7200, GPT)
    result = run_cli("purge", backend_url, "--table", table_of(stocked).name, "--ttl", "90m")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("deleted 1 entry written more than 90m ago")
    bad = run_cli("purge", backend_url, "--ttl", "soon")
    assert bad.returncode == 2
    assert_one_line_error(bad.stderr, "invalid duration 'soon'")
    missing = run_cli("purge", backend_url, "--table", "no_such_table", "--max-entries", "5")
    assert missing.returncode == 1
    assert_one_line_error(missing.stderr, "error: table 'no_such_table' does not exist in ")


# clear


def test_clear_with_yes(
    capsys: pytest.CaptureFixture[str], backend_url: str, stocked: SQLAlchemyCache
) -> None:
    name = table_of(stocked).name
    where = f"table {name!r} in {hide_password(backend_url)}"
    age(stocked, "claude 0", 3600, CLAUDE)
    filters = ["--llm-string", CLAUDE, "--older-than", "30m", "--yes"]
    status, out, err = cli(capsys, "clear", backend_url, "--table", name, *filters)
    assert (status, err) == (0, "")
    what = f"1 entry of the model {CLAUDE!r} written more than 30m ago"
    assert out == f"{what} would be deleted from {where}\ndeleted {what}\n"
    assert stocked.lookup("claude 0", CLAUDE) is None
    assert stocked.lookup("claude 1", CLAUDE) == value("answer 1")

    status, out, _ = cli(
        capsys, "clear", backend_url, "--table", name, "--llm-string", CLAUDE, "-y"
    )
    assert status == 0
    assert out.splitlines()[-1] == f"deleted 1 entry of the model {CLAUDE!r}"
    status, out, _ = cli(capsys, "clear", backend_url, "--table", name, "--yes")
    assert status == 0
    assert out.splitlines() == [f"3 entries would be deleted from {where}", "deleted 3 entries"]
    assert entries(stocked) == 0
    with SQLAlchemyCache(backend_url, table_name=name, namespace="team") as team:
        assert team.lookup("p", GPT) == value("t")  # another namespace
    status, out, _ = cli(capsys, "clear", backend_url, "--table", name, "--namespace", "team", "-y")
    assert status == 0
    assert f"1 entry would be deleted from table {name!r} (namespace 'team') in" in out

    status, out, err = cli(capsys, "clear", backend_url, "--table", name)
    assert (status, err) == (0, "")
    assert out == f"nothing to delete: no entries in {where}\n"


def test_clear_refuses_without_yes_when_stdin_is_not_a_terminal(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    backend_url: str,
    stocked: SQLAlchemyCache,
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # piped input: not a terminal
    status, out, err = cli(capsys, "clear", backend_url, "--table", table_of(stocked).name)
    assert status == 1
    assert out.startswith("5 entries would be deleted from table")
    assert err == "error: clear asks for confirmation and stdin is not a terminal: pass --yes\n"
    assert entries(stocked) == 5


@pytest.mark.parametrize(
    ("filters", "options", "expected"),
    [
        ((), {}, 5),
        (("--llm-string", GPT), {"llm_string": GPT}, 3),
        (("--older-than", "30m"), {"older_than": 1800}, 2),
        (
            ("--llm-string", CLAUDE, "--older-than", "30m"),
            {"llm_string": CLAUDE, "older_than": 1800},
            1,
        ),
    ],
)
def test_clear_counts_what_cache_clear_deletes(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    backend_url: str,
    stocked: SQLAlchemyCache,
    filters: tuple[str, ...],
    options: dict[str, Any],
    expected: int,
) -> None:
    """The command line counts (and deletes) with the filters of ``SQLAlchemyCache.clear``."""
    age(stocked, "gpt 0", 3600, GPT)
    age(stocked, "claude 1", 3600, CLAUDE)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal: counts, deletes nothing
    status, out, _ = cli(capsys, "clear", backend_url, "--table", table_of(stocked).name, *filters)
    assert status == 1
    assert entries(stocked) == 5
    assert out.startswith(f"{expected} {'entry' if expected == 1 else 'entries'}"), out
    stocked.clear(**options)
    assert entries(stocked) == 5 - expected


def test_clear_subprocess(backend_url: str, stocked: SQLAlchemyCache) -> None:
    name = table_of(stocked).name
    refused = run_cli("clear", backend_url, "--table", name)
    assert refused.returncode == 1
    assert_one_line_error(refused.stderr, "pass --yes")
    assert entries(stocked) == 5
    missing = run_cli("clear", backend_url, "--table", "no_such_table", "--yes")
    assert missing.returncode == 1
    assert_one_line_error(missing.stderr, "error: table 'no_such_table' does not exist in ")
    done = run_cli("clear", backend_url, "--table", name, "--llm-string", GPT, "--yes")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"deleted 3 entries of the model {GPT!r}"
    assert entries(stocked) == 2


def clear_on_a_terminal(url: str, table_name: str, answer: str) -> tuple[int, str]:
    """Run ``clear`` with a real terminal as stdin, answering ``answer``."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "langchain_sqlalchemy_cache",
                "clear",
                url,
                "--table",
                table_name,
            ],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        os.write(controller, answer.encode() + b"\n")
        out, _ = process.communicate(timeout=120)
    finally:
        os.close(controller)
        os.close(terminal)
    return process.returncode, out


def test_clear_asks_on_a_terminal(backend_url: str, stocked: SQLAlchemyCache) -> None:
    name = table_of(stocked).name
    status, out = clear_on_a_terminal(backend_url, name, "n")
    assert status == 1
    assert "5 entries would be deleted from table" in out
    assert "Delete them? [y/N] " in out
    assert "nothing deleted" in out
    assert entries(stocked) == 5
    status, out = clear_on_a_terminal(backend_url, name, "yes")
    assert status == 0, out
    assert out.splitlines()[-1].endswith("deleted 5 entries")
    assert entries(stocked) == 0


# migrate


def test_migrate(capsys: pytest.CaptureFixture[str], backend_url: str) -> None:
    with open_community(backend_url) as community:
        store_values(community.full())
        secret = '{"lc": 1, "type": "secret", "id": ["K"]}'
        row = {"prompt": "secret", "llm": GPT, "idx": 0, "response": secret}
        community.insert_rows(FULL_LAYOUT.name, [row])
        destination = unique_table()
        args = ["migrate", backend_url, "--table", destination, "--batch-size", "2"]
        if community.schema:
            args += ["--schema", community.schema, "--from-schema", community.schema]
        status, out, err = cli(capsys, *args)
        assert status == 0, err
        source = (
            "full_llm_cache" if community.schema is None else f"{community.schema}.full_llm_cache"
        )
        rows = sum(len(generations) for generations in VALUES.values()) + 1  # + the secret
        assert out.splitlines() == [
            f"migrated {source!r} (full_llm_cache layout, {rows} rows) into table "
            f"{(community.schema + '.' if community.schema else '') + destination!r} "
            f"in {hide_password(backend_url)}",
            f"copied {len(VALUES)} entries, skipped 0 already present, 1 unreadable",
            "           1  holds a secret (never read from the environment)",
        ]
        # Progress on stderr (not a terminal here: a line per tenth of the rows).
        progress = err.splitlines()
        assert progress[0].startswith("[")
        copied = len(VALUES)
        assert progress[-1].startswith(f"[{'#' * 30}] 100%  {rows}/{rows} rows: {copied} copied, ")
        with community.ours(table_name=destination) as ours:
            for (prompt, llm), generations in VALUES.items():
                assert ours.lookup(prompt, llm) == generations

        status, out, _ = cli(capsys, *args)
        assert status == 0
        assert out.splitlines()[1] == (
            f"copied 0 entries, skipped {len(VALUES)} already present, 1 unreadable"
        )

        status, out, err = cli(capsys, *args[:2], "--from-table", "no_such_table")
        assert (status, out) == (1, "")
        assert (
            err == f"error: table 'no_such_table' does not exist in {hide_password(backend_url)}\n"
        )
        status, _, err = cli(capsys, *args, "--from-table", destination)
        assert status == 1
        assert_one_line_error(err, "source and destination table are both")


def test_migrate_subprocess(backend_url: str) -> None:
    with open_community(backend_url) as community:
        store_values(community.md5())
        destination = unique_table()
        args = [
            "migrate",
            backend_url,
            "--from-table",
            "full_md5_llm_cache",
            "--table",
            destination,
        ]
        if community.schema:
            args += ["--schema", community.schema, "--from-schema", community.schema]
        result = run_cli(*args, "--namespace", "imported", "--no-store-prompts")
        assert result.returncode == 0, result.stderr
        assert "(full_md5_llm_cache layout, " in result.stdout
        assert "(namespace 'imported')" in result.stdout
        assert f"copied {len(VALUES)} entries, skipped 0 already present, 0 unreadable" in (
            result.stdout
        )
        assert "100%" in result.stderr
        with community.ours(table_name=destination, namespace="imported") as ours:
            for (prompt, llm), generations in VALUES.items():
                assert ours.lookup(prompt, llm) == generations
        # A table of another layout, named as the source.
        wrong = run_cli(*args[:2], "--from-table", destination, "--table", "t", *args[6:])
        assert wrong.returncode == 1
        assert_one_line_error(wrong.stderr, "is not a langchain_community SQL cache")


def test_migrate_interrupted_by_ctrl_c_then_rerun(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'big.db'}"
    count = 20_000
    with open_community(url) as community:
        community.full()
        response = dumps(Generation(text="cached"))
        with community.engine.begin() as connection:
            connection.execute(
                insert(table(FULL_LAYOUT.name, *(community_columns()))),
                [
                    {"prompt": f"p{i}", "llm": GPT, "idx": 0, "response": response}
                    for i in range(count)
                ],
            )
        before = community.snapshot(FULL_LAYOUT.name)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "langchain_sqlalchemy_cache",
                "migrate",
                url,
                "--batch-size",
                "1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        # A progress line with entries copied already (one page per row keeps the rest of
        # the run long enough for the signal to land mid-way).
        line = process.stderr.readline()
        while line.startswith("[") and " 0 copied" in line:
            line = process.stderr.readline()
        assert line.startswith("["), line
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
        assert process.returncode == 130, (out, err)
        assert "Traceback" not in err
        last = err.strip().splitlines()[-1]
        assert last.startswith("interrupted after copying ")
        assert last.endswith(
            "run the same command again to finish (what is already copied is skipped)"
        )
        reported = int(last.split()[3].replace(",", ""))

        rerun = run_cli("migrate", url)
        assert rerun.returncode == 0, rerun.stderr
        summary = rerun.stdout.splitlines()[1].split()
        copied, skipped = int(summary[1].replace(",", "")), int(summary[4].replace(",", ""))
        assert copied + skipped == count
        assert 0 < skipped < count
        assert skipped >= reported
        assert community.snapshot(FULL_LAYOUT.name) == before
        with SQLAlchemyCache(url) as ours:
            assert ours.table_stats().entries == count
            assert ours.lookup("p0", GPT) == ours.lookup(f"p{count - 1}", GPT) == value("cached")


def community_columns() -> list[ColumnClause[Any]]:
    return [column(name) for name in FULL_LAYOUT.columns]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_and_in_a_log() -> None:
    terminal = Terminal()
    bar = ProgressBar(terminal, width=10)
    bar(MigrationProgress(50, 200, 10, 2, 1))
    bar(MigrationProgress(200, 200, 40, 2, 3))
    bar.finish()
    assert terminal.getvalue() == (
        "\r[##........]  25%  50/200 rows: 10 copied, 2 skipped, 1 unreadable"
        "\r[##########] 100%  200/200 rows: 40 copied, 2 skipped, 3 unreadable\n"
    )
    log = io.StringIO()
    bar = ProgressBar(log, width=10)
    for read in range(0, 1001, 10):
        bar(MigrationProgress(read, 1000, read, 0, 0))
    bar(MigrationProgress(1000, 1000, 1000, 0, 0))  # nothing new: not written again
    # The last group, copied after its rows were read: at 100% a change is written.
    bar(MigrationProgress(1000, 1000, 1001, 0, 0))
    bar.finish()
    lines = log.getvalue().splitlines()
    assert len(lines) == 12  # 0%, 10%, ..., 100%, and 100% with the last group
    assert lines[-2].startswith("[##########] 100%  1,000/1,000 rows: 1,000 copied")
    assert lines[-1].startswith("[##########] 100%  1,000/1,000 rows: 1,001 copied")
    empty = io.StringIO()
    ProgressBar(empty, width=10)(MigrationProgress(0, 0, 0, 0, 0))  # an empty table
    assert empty.getvalue() == "[##########] 100%  0/0 rows: 0 copied, 0 skipped, 0 unreadable\n"


# demo


def test_demo_takes_the_url_as_an_argument_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    result = run_cli("demo", url)
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()[-2:]] == ["miss", "hit"]
    assert str(tmp_path) in result.stdout
    status, _, err = cli(capsys, "demo", url, "--url", f"sqlite:///{tmp_path / 'other.db'}")
    assert status == 1
    assert_one_line_error(err, "give the URL once")


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = cli(capsys, "--help")
    assert status == 0
    for command in ("demo", "stats", "purge", "clear", "migrate"):
        assert command in out
    status, out, _ = cli(capsys, "migrate", "--help")
    assert status == 0
    assert "--from-table" in out
    assert "--namespace" in out


@pytest.mark.parametrize(
    ("count", "text_"),
    [(0, "0 entries"), (1, "1 entry"), (2, "2 entries"), (1200, "1,200 entries")],
)
def test_counts_take_the_singular_only_for_one(count: int, text_: str) -> None:
    assert counted(count, "entry", "entries") == text_
    assert counted(count, "row") == text_.replace("entries", "rows").replace("entry", "row")


def test_a_one_row_migration_speaks_in_the_singular(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    with open_community(url) as community:
        community.full().update("prompt", GPT, [Generation(text="answer")])
    status, out, _ = cli(capsys, "migrate", url)
    assert status == 0, out
    lines = out.splitlines()
    assert "(full_llm_cache layout, 1 row) into" in lines[0]
    assert lines[1] == "copied 1 entry, skipped 0 already present, 0 unreadable"
