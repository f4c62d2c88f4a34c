"""The wheel and the sdist, built from this tree and opened as a user's installer would."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from email import message_from_string
from email.message import Message
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHONS = ("3.10", "3.11", "3.12", "3.13")


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``python -m build`` of this tree: {"wheel": path, "sdist": path}."""
    out = tmp_path_factory.mktemp("dist")
    # Without isolation: the test environment's setuptools (the test group pins its floor),
    # so building needs no download.
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def _metadata(text: str) -> Message:
    return message_from_string(text)


def _check_metadata(metadata: Message) -> None:
    assert metadata["Name"] == "langchain-sqlalchemy-cache"
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["License"] is None  # the deprecated free-text field is not set
    assert metadata["Requires-Python"] == ">=3.10"
    classifiers = set(metadata.get_all("Classifier") or ())
    assert {f"Programming Language :: Python :: {v}" for v in PYTHONS} <= classifiers
    assert {"Framework :: AsyncIO", "Typing :: Typed"} <= classifiers
    assert not any(c.startswith("License ::") for c in classifiers)  # the expression says it
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL") or ())
    assert {"Homepage", "Documentation", "Source", "Issues", "Changelog"} <= set(urls)
    # Development tools are dependency groups, not extras a user could install.
    assert sorted(metadata.get_all("Provides-Extra") or ()) == ["mysql", "postgres"]
    requires = " ".join(metadata.get_all("Requires-Dist") or ())
    for tool in ("pytest", "mypy", "ruff", "fastapi", "alembic", "mkdocs", "matplotlib"):
        assert tool not in requires
    assert metadata["Description-Content-Type"] == "text/markdown"


def test_wheel(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = wheel.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = _metadata(wheel.read(metadata_name).decode())
        (entry_points_name,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        entry_points = wheel.read(entry_points_name).decode()
        license_text = wheel.read(metadata_name.replace("METADATA", "licenses/LICENSE")).decode()
    _check_metadata(metadata)
    package = {n for n in names if n.startswith("langchain_sqlalchemy_cache/")}
    assert "langchain_sqlalchemy_cache/py.typed" in package
    assert "langchain_sqlalchemy_cache/__init__.py" in package
    sources = {p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src").rglob("*.py")}
    assert sources <= package
    assert not [n for n in names if n.startswith(("tests/", "examples/", "benchmarks/"))]
    assert "langchain-sqlalchemy-cache = langchain_sqlalchemy_cache._cli:main" in entry_points
    assert license_text.startswith("MIT License")
    assert "the langchain-sqlalchemy-cache authors" in license_text


def test_sdist_carries_its_tests_whole(dists: dict[str, Path], tmp_path: Path) -> None:
    with tarfile.open(dists["sdist"]) as sdist:
        sdist.extractall(tmp_path, filter="data")
    (tree,) = tmp_path.iterdir()
    _check_metadata(_metadata((tree / "PKG-INFO").read_text()))
    for folder in ("tests", "examples", "src"):
        wanted = {p.relative_to(ROOT) for p in (ROOT / folder).rglob("*.py")}
        shipped = {p.relative_to(tree) for p in (tree / folder).rglob("*.py")}
        assert wanted <= shipped, sorted(map(str, wanted - shipped))
    for name in ("LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", ".ci/run"):
        assert (tree / name).is_file(), name
    assert not list(tree.rglob("__pycache__"))
    # Its tests run from it: every module imports (conftest and helpers are there) and a
    # selection runs, against the installed package.
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    assert "error" not in collected.stdout.splitlines()[-1]
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_project.py::test_public_api_is_pinned",
            "tests/test_project.py::test_ci_runs_the_readme_commands",
        ],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ran.returncode == 0, ran.stdout[-3000:]
    assert "2 passed" in ran.stdout


def test_twine_check_is_clean(dists: dict[str, Path]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, dists.values())],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2
