"""One set of rules for every way in: the cache classes, ``migrate`` and the command line
refuse the same bad setting with the same message, before any engine is made."""

from __future__ import annotations

import inspect
import sqlite3
from dataclasses import fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import make_url

from langchain_sqlalchemy_cache import (
    ConfigurationError,
    SQLAlchemyCache,
    SQLAlchemyMd5Cache,
    SQLiteCache,
)
from langchain_sqlalchemy_cache._cli import main
from langchain_sqlalchemy_cache._migrate import migrate
from langchain_sqlalchemy_cache._options import CacheOptions

from .helpers import run_cli

# The command line's flag of each setting it takes.
_FLAGS = {"table_name": "--table", "schema": "--schema", "namespace": "--namespace"}
# Every subcommand that opens a table, with the arguments it needs besides the table's.
_SUBCOMMANDS = {
    "stats": [],
    "purge": ["--ttl", "1d"],
    "clear": ["--yes"],
    "check": [],
    "migrate": [],
}
# A table name each backend cannot hold (checked once the dialect is known).
_TOO_MUCH_FOR = {"postgresql": "a" * 64, "mysql": "a" * 65, "sqlite": "bad\x00name"}


def refused(make: Any, *args: Any, **settings: Any) -> str:
    """The message of the ConfigurationError that ``make(*args, **settings)`` raises."""
    with pytest.raises(ConfigurationError) as caught:
        make(*args, **settings)
    return str(caught.value)


def cli_refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The message of a command line run that ends in one configuration error line."""
    status = main(argv)
    out, err = capsys.readouterr()
    assert (status, out) == (1, ""), err
    assert err.startswith("error: ")
    assert err.endswith("\n")
    assert err.count("\n") == 1
    return err[len("error: ") : -1]


def sqlite_file(url: str) -> None:
    """Make the SQLite database file of ``url``: the command line never creates one."""
    database = make_url(url).database
    if make_url(url).get_backend_name() == "sqlite" and database:
        sqlite3.connect(database).close()


def assert_refused_alike(capsys: pytest.CaptureFixture[str], url: str, **settings: Any) -> str:
    """Every entry point refuses ``settings`` with one message; returns it."""
    message = refused(SQLAlchemyCache, url, **settings)
    assert refused(SQLAlchemyMd5Cache, url, **settings) == message
    assert refused(migrate, url, **settings) == message
    if make_url(url).get_backend_name() == "sqlite":
        assert refused(SQLiteCache, make_url(url).database, **settings) == message
    flags = [part for name, value in settings.items() for part in (_FLAGS[name], value)]
    for command, extra in _SUBCOMMANDS.items():
        assert cli_refused(capsys, [command, url, *flags, *extra]) == message, command
    return message


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"table_name": ""}, "table_name must be a non-empty str, got ''"),
        ({"table_name": "   "}, "table_name must be a non-empty str, got '   '"),
        ({"schema": ""}, "schema must be a non-empty str or None, got ''"),
        ({"namespace": "with\x00nul"}, "namespace must be a str of at most 255 characters"),
        ({"namespace": "n" * 256}, "got 'nnn"),
    ],
)
def test_a_bad_setting_is_refused_alike_everywhere(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, settings: dict[str, str], says: str
) -> None:
    url = f"sqlite:///{tmp_path / 'cache.db'}"
    sqlite_file(url)
    assert says in assert_refused_alike(capsys, url, **settings)


def test_a_name_the_backend_cannot_hold_is_refused_alike_everywhere(
    capsys: pytest.CaptureFixture[str], backend_url: str
) -> None:
    sqlite_file(backend_url)
    dialect = make_url(backend_url).get_backend_name()
    message = assert_refused_alike(capsys, backend_url, table_name=_TOO_MUCH_FOR[dialect])
    assert message.startswith("table_name ")
    assert f"cannot be used on {dialect}: " in message


@pytest.mark.parametrize("ttl", [-1, 0, timedelta(seconds=-1), float("nan"), "1h", True])
def test_a_bad_ttl_is_refused_alike_by_every_cache_class(tmp_path: Path, ttl: object) -> None:
    # The command line's --ttl never gets here: its grammar has no such durations
    # (test_cli pins those usage errors).
    database = tmp_path / "cache.db"
    message = refused(SQLAlchemyCache, f"sqlite:///{database}", ttl=ttl)
    assert message.startswith("ttl must be a positive number of seconds or a timedelta")
    assert refused(SQLiteCache, database, ttl=ttl) == message
    assert refused(SQLAlchemyMd5Cache, f"sqlite:///{database}", ttl=ttl) == message


@pytest.mark.parametrize("timeout", [-1, 0, float("inf"), timedelta(0)])
def test_a_bad_timeout_is_refused_alike_by_the_cache_and_migrate(
    tmp_path: Path, timeout: object
) -> None:
    url = f"sqlite:///{tmp_path / 'cache.db'}"
    message = refused(SQLAlchemyCache, url, timeout=timeout)
    assert message.startswith("timeout must be ")
    assert refused(migrate, url, timeout=timeout) == message


def test_the_command_line_process_prints_the_same_message(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cache.db'}"
    sqlite_file(url)
    message = refused(SQLAlchemyCache, url, namespace="n" * 256)
    result = run_cli("stats", url, "--namespace", "n" * 256)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"error: {message}\n"


def test_settings_are_checked_before_the_database_is_touched(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # An in-memory URL and a missing file are refused only once the settings pass.
    assert refused(SQLAlchemyCache, "sqlite://", ttl=0).startswith("ttl must be")
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    assert cli_refused(capsys, ["stats", missing, "--table", ""]).startswith("table_name must")
    assert not (tmp_path / "missing.db").exists()
    unreachable = "postgresql://nobody@127.0.0.1:1/x"
    assert refused(migrate, unreachable, namespace="\x00").startswith("namespace must")


def test_every_setting_of_the_cache_is_an_option_with_the_same_default() -> None:
    parameters = inspect.signature(SQLAlchemyCache.__init__).parameters
    not_settings = {"self", "engine", "cache_schema", "sync_engine", "replicas"}
    defaults = {name: p.default for name, p in parameters.items() if name not in not_settings}
    assert set(defaults) == {field.name for field in fields(CacheOptions)}
    assert CacheOptions(**defaults) == CacheOptions()
    shared = {"table_name", "schema", "namespace", "store_prompts"}
    migrate_defaults = inspect.signature(migrate).parameters
    assert {name: migrate_defaults[name].default for name in shared} == {
        name: getattr(CacheOptions(), name) for name in shared
    }


def test_checked_options_pass_their_own_check_unchanged() -> None:
    # The command line hands its options to SQLAlchemyCache as keyword arguments.
    options = CacheOptions(
        ttl=timedelta(hours=1),
        single_flight=True,
        breaker_cooldown=timedelta(seconds=3),
        max_entries=10,
        store_prompts=0,  # type: ignore[arg-type]
    )
    assert (options.ttl, options.single_flight, options.breaker_cooldown) == (3600.0, 60.0, 3.0)
    assert options.store_prompts is False
    assert CacheOptions(**options.arguments()) == options
    assert CacheOptions().arguments()["single_flight"] is False  # as the signature says
    with pytest.raises(AttributeError):
        options.ttl = 1.0  # type: ignore[misc]
