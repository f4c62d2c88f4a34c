"""Sessions: `nox -l` lists them.

- `nox -s tests`: the whole suite on Python 3.11 (SQLite, PostgreSQL, MariaDB, PgBouncer).
- `nox -s matrix`: the SQLite and PostgreSQL tests on Python 3.10, 3.11, 3.12 and 3.13
  (`nox -s matrix-3.10` for one).
- `nox -s lowest`: the same tests with exactly the lowest version pyproject.toml declares
  of every direct dependency, on Python 3.10.
- `nox -s lint`: ruff and mypy (strict).
- `nox -s docs`: the documentation site, built with `mkdocs build --strict` into site/.
- `nox -s bench`: the benchmarks (not tests); see benchmarks/RESULTS.md.
- `nox -s soak`: the property tests with Hypothesis's deep profile (nightly-style).

Interpreters are taken from the machine's pyenv (~/.pyenv/versions) where it has them,
else from PATH.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "docs"]

ROOT = Path(__file__).resolve().parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
OLDEST, NEWEST = PYTHONS[0], PYTHONS[-1]
# The tests that need no MySQL/MariaDB server (tests/conftest.py marks the others).
SQLITE_AND_POSTGRES = ("-m", "not mysql")
# NO_MYSQL: a MySQL test conftest failed to mark fails instead of running. SKIP_LINT: ruff
# and mypy judge the code once, in `tests` and `lint` (mypy against SQLAlchemy 2.0.46's
# stubs, say, sees their typing, not the code's behaviour).
SUBSET_ENV = {"NO_MYSQL": "1", "SKIP_LINT": "1"}


def _pyenv_on_path() -> None:
    """Put pyenv's interpreters for PYTHONS first on PATH (its shims only run the global one)."""
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found: dict[str, Path] = {}
    if versions.is_dir():
        for folder in sorted(versions.iterdir()):
            match = re.fullmatch(r"(3\.\d+)\.\d+", folder.name)
            if match and match.group(1) in PYTHONS and (folder / "bin").is_dir():
                found[match.group(1)] = folder / "bin"  # the newest patch release wins
    if found:
        os.environ["PATH"] = os.pathsep.join([*map(str, found.values()), os.environ["PATH"]])


_pyenv_on_path()


def _install_project(session: nox.Session, *groups: str, constraints: Path | None = None) -> None:
    pins = ("--constraint", str(constraints)) if constraints else ()
    session.install(
        *pins,
        "-e",
        ".[postgres,mysql]",
        *nox.project.dependency_groups(PYPROJECT, *groups),
    )


def lowest_pins() -> list[str]:
    """`name[extras]==floor` for every direct dependency, from pyproject.toml's `>=` bounds.

    Raises:
        ValueError: A dependency has no `>=` floor (so "the lowest" would mean nothing).
    """
    project = PYPROJECT["project"]
    requirements = list(project["dependencies"])
    for extra in ("postgres", "mysql"):
        requirements += project["optional-dependencies"][extra]
    pins = []
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]+\])?\s*(.*)", requirement)
        floors = re.findall(r">=\s*([0-9][^,\s]*)", match.group(3)) if match else []
        if not match or len(floors) != 1:
            raise ValueError(f"no single >= floor in {requirement!r}")
        pins.append(f"{match.group(1)}{match.group(2) or ''}=={floors[0]}")
    return pins


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    """The whole suite."""
    _install_project(session, "test")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHONS)
def matrix(session: nox.Session) -> None:
    """The SQLite and PostgreSQL tests on one Python."""
    _install_project(session, "test")
    session.run("python", "-m", "pytest", *SQLITE_AND_POSTGRES, *session.posargs, env=SUBSET_ENV)


@nox.session(python=OLDEST)
def lowest(session: nox.Session) -> None:
    """The SQLite and PostgreSQL tests on exactly the declared floor of every dependency."""
    pins = lowest_pins()
    constraints = Path(session.create_tmp()) / "lowest.txt"
    constraints.write_text("\n".join(re.sub(r"\[[^\]]+\]", "", pin) for pin in pins) + "\n")
    session.log("floors: " + ", ".join(pins))
    _install_project(session, "test", constraints=constraints)
    # The installed versions, checked: a floor pip could not honour fails here, not silently.
    session.run("python", "-c", _CHECK_PINS, *pins)
    session.run("python", "-m", "pytest", *SQLITE_AND_POSTGRES, *session.posargs, env=SUBSET_ENV)


_CHECK_PINS = """
import re, sys
from importlib.metadata import version
wrong = []
for pin in sys.argv[1:]:
    name, wanted = re.sub(r"\\[[^\\]]+\\]", "", pin).split("==")
    have = version(name)
    if have.split("+")[0] not in (wanted, wanted + ".0", wanted + ".0.0"):
        wrong.append(f"{name} {have} (wanted {wanted})")
if wrong:
    sys.exit("not the declared floor: " + ", ".join(wrong))
print("installed at the floor: " + ", ".join(p for p in sys.argv[1:]))
"""


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    _install_project(session, "test")
    session.run("ruff", "check", "src", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "examples", "noxfile.py")
    session.run("mypy")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """The documentation site into site/; warnings fail the build."""
    _install_project(session, "docs")
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks (not tests): `nox -s bench -- --quick`; see benchmarks/RESULTS.md."""
    _install_project(session, "bench")
    session.run("python", "-m", "benchmarks.run", *session.posargs)


@nox.session(python="3.11")
def soak(session: nox.Session) -> None:
    """The property tests with Hypothesis's deep "soak" profile (nightly; see tests/conftest.py)."""
    _install_project(session, "test")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/test_properties.py",
        "--timeout=3600",
        *session.posargs,
        env={"HYPOTHESIS_PROFILE": "soak"},
    )
