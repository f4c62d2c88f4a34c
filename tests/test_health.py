"""health() / ahealth(), the CLI's ``check`` and the example app's /health route, against a
healthy, a dead (closed port) and a frozen (never answering) database."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from examples.fastapi_app import create_app
from langchain_sqlalchemy_cache import Health, SQLAlchemyCache
from langchain_sqlalchemy_cache._cli import main

from .conftest import CacheFactory
from .freezeproxy import SilentServer, closed_port
from .helpers import table_of

SENTINEL = "s3ntinel-pw"


def dead_url() -> str:
    return f"postgresql://postgres:{SENTINEL}@127.0.0.1:{closed_port()}/test"


@pytest.mark.timeout(60)
async def test_a_healthy_database(make_cache: CacheFactory) -> None:
    cache = make_cache()
    for report in (cache.health(), await cache.ahealth()):
        assert report.ok
        assert report.error is None
        assert report.latency is not None
        assert report.latency > 0
        assert report.breaker == "closed"
    await cache.aclose()


@pytest.mark.timeout(60)
async def test_a_dead_database_is_reported_not_raised() -> None:
    cache = SQLAlchemyCache(dead_url(), timeout=1.0)
    for report in (cache.health(), await cache.ahealth()):
        assert not report.ok
        assert report.latency is None
        assert report.error
        assert SENTINEL not in report.error
        assert "\n" not in report.error
    await cache.aclose()


@pytest.mark.timeout(60)
async def test_a_frozen_database_is_reported_within_the_deadline() -> None:
    with SilentServer() as server:
        cache = SQLAlchemyCache(f"mysql://root@127.0.0.1:{server.port}/test")
        for report in (cache.health(timeout=0.3), await cache.ahealth(timeout=0.3)):
            assert not report.ok
            assert report.error == "TimeoutError: no answer from the database within 0.3s"
        await cache.aclose()


def test_health_is_a_frozen_dataclass() -> None:
    report = Health(ok=True, latency=0.001, error=None, breaker="closed")
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.ok = False  # type: ignore[misc]


@pytest.mark.timeout(60)
def test_health_reports_a_missing_table(tmp_path: Path) -> None:
    cache = SQLAlchemyCache(f"sqlite:///{tmp_path / 'x.db'}", create_table=False)
    report = cache.health()
    assert not report.ok
    assert report.error is not None
    assert "does not exist" in report.error
    cache.close()


@pytest.mark.timeout(60)
def test_cli_check_exit_codes(
    make_cache: CacheFactory, backend_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = make_cache()
    assert cache.health().ok  # creates the table
    table = table_of(cache).name
    assert main(["check", backend_url, "--table", table]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: ")
    assert out.count("\n") == 1
    assert main(["check", backend_url, "--table", "no_such_table_here"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("unhealthy: ")
    assert out.count("\n") == 1


@pytest.mark.timeout(60)
def test_cli_check_on_dead_and_frozen_databases(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", dead_url()]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("unhealthy: ")
    assert captured.out.count("\n") == 1
    assert SENTINEL not in captured.out + captured.err
    with SilentServer() as server:
        url = f"postgresql://postgres@127.0.0.1:{server.port}/test"
        assert main(["check", url, "--timeout", "0.3"]) == 1
    assert "TimeoutError" in capsys.readouterr().out


def test_cli_check_creates_no_sqlite_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo.db"
    assert main(["check", f"sqlite:///{missing}"]) == 1
    assert "no SQLite database" in capsys.readouterr().out
    assert not missing.exists()


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


@pytest.mark.timeout(60)
async def test_the_example_app_health_route(tmp_path: Path) -> None:
    model = FakeListChatModel(responses=["hi"])
    async with serving(create_app(f"sqlite:///{tmp_path / 'app.db'}", model)) as client:
        response = await client.get("/health")
        assert response.status_code == 200
        assert response.json()["ok"] is True
    async with serving(create_app(dead_url(), model)) as client:
        response = await client.get("/health")
        assert response.status_code == 503
        body = response.json()
        assert body["ok"] is False
        assert SENTINEL not in response.text
