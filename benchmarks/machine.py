"""What the figures were measured on: machine, interpreter, packages, PostgreSQL, git state."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg

PACKAGES = (
    "langchain-sqlalchemy-cache",
    "sqlalchemy",
    "asyncpg",
    "aiosqlite",
    "psycopg",
    "psycopg-binary",
    "langchain-core",
    "langchain-community",
    "matplotlib",
)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (None where unsupported)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, OS, Python, package versions and the git commit being measured."""
    status = _git("status", "--porcelain", "--", "src")
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "packages": {name: _version(name) for name in PACKAGES},
        "git_commit": _git("rev-parse", "HEAD"),
        "git_src_dirty": bool(status) if status is not None else None,
        "load_average_at_start": load_average(),
    }


async def postgres_info(dsn: str) -> dict[str, Any]:
    """Server version and the settings that move the figures most."""
    connection = await asyncpg.connect(dsn)
    try:
        info: dict[str, Any] = {"server_version": await connection.fetchval("SHOW server_version")}
        for setting in ("shared_buffers", "synchronous_commit", "fsync", "max_connections"):
            info[setting] = await connection.fetchval(f"SHOW {setting}")
    finally:
        await connection.close()
    return info
