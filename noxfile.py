"""Sessions: `nox -s tests`, `nox -s lint`, `nox -s bench`, `nox -s soak`."""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("ruff", "check", "src", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("mypy")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks (not tests): `nox -s bench -- --quick`; see benchmarks/RESULTS.md."""
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks.run", *session.posargs)


@nox.session(python="3.11")
def soak(session: nox.Session) -> None:
    """The property tests with Hypothesis's deep "soak" profile (nightly; see tests/conftest.py)."""
    session.install("-e", ".[test]")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/test_properties.py",
        "--timeout=3600",
        *session.posargs,
        env={"HYPOTHESIS_PROFILE": "soak"},
    )
