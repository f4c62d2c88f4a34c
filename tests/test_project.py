"""The package's public surface, its command line, and the project's own checks."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import langchain_sqlalchemy_cache

from .helpers import run_cli

ROOT = Path(__file__).resolve().parent.parent
LINTED = [
    p for p in ("src", "tests", "benchmarks", "examples", "noxfile.py") if (ROOT / p).exists()
]


def test_public_api_is_pinned() -> None:
    assert langchain_sqlalchemy_cache.__all__ == [
        "CacheError",
        "CacheStats",
        "ConfigurationError",
        "Health",
        "ModelEntries",
        "SQLAlchemyCache",
        "SQLAlchemyMd5Cache",
        "SQLiteCache",
        "TableStats",
        "cache_table",
    ]
    public = {name for name in dir(langchain_sqlalchemy_cache) if not name.startswith("_")}
    assert public == set(langchain_sqlalchemy_cache.__all__)


def test_package_is_typed() -> None:
    assert (Path(langchain_sqlalchemy_cache.__file__).parent / "py.typed").exists()


def test_demo_prints_a_miss_then_a_hit_on_sqlite() -> None:
    result = run_cli("demo")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(("miss", "hit"))]
    assert [line.split()[0] for line in lines] == ["miss", "hit"]
    miss_ms, _hit_ms = (float(line.split()[1]) for line in lines)
    assert miss_ms >= 500  # the fake model's latency: the model was really called
    assert "'Paris.'" in lines[1]


def test_demo_on_postgres(postgres_url: str) -> None:
    result = run_cli("demo", "--url", postgres_url)
    assert result.returncode == 0, result.stderr
    assert "postgresql" in result.stdout
    assert [line.split()[0] for line in result.stdout.splitlines()[-2:]] == ["miss", "hit"]


@pytest.mark.parametrize(
    ("url", "message"),
    [("sqlite://", "in-memory"), ("postgresql://nobody@127.0.0.1:1/x", "error: ")],
)
def test_cli_errors_are_one_line_without_traceback(url: str, message: str) -> None:
    result = run_cli("demo", "--url", url)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_ci_runs_the_readme_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for marker in ("readme:install", "readme:test"):
        block = re.search(
            rf"<!-- {marker} -->\n```bash\n(.+?)\n```\n<!-- /{marker} -->", readme, re.S
        )
        assert block, f"README.md lost its {marker} block, which .ci/run executes"
        assert marker in ci
    assert "REQUIRE_POSTGRES=1" in ci


def test_readme_example_runs_as_printed(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.+?)\n```", readme, re.S)
    assert example, "README.md lost its example"
    assert len(example.group(1).splitlines()) <= 16
    script = tmp_path / "example.py"
    script.write_text(example.group(1))
    for expected in ("Paris.\nParis.\n1 1\n", "Paris.\nParis.\n2 0\n"):  # then from cache.db
        result = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, check=False
        )
        assert (result.returncode, result.stdout) == (0, expected), result.stderr


def test_version_is_the_installed_distributions() -> None:
    installed = importlib.metadata.version("langchain-sqlalchemy-cache")
    assert langchain_sqlalchemy_cache.__version__ == installed
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", installed)
    result = run_cli("--version")
    assert (result.returncode, result.stdout) == (0, f"langchain-sqlalchemy-cache {installed}\n")


@pytest.mark.skipif(os.environ.get("SKIP_LINT") == "1", reason="SKIP_LINT=1")
def test_ruff_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", *LINTED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(os.environ.get("SKIP_LINT") == "1", reason="SKIP_LINT=1")
def test_mypy_strict_is_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
