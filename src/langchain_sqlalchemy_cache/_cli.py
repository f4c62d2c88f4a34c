"""The command line: ``python -m langchain_sqlalchemy_cache`` / ``langchain-sqlalchemy-cache``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._errors import CacheError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="langchain-sqlalchemy-cache",
        description="A native-async LLM response cache for LangChain, backed by SQLAlchemy.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="answer one question twice through the cache: a miss, then a hit"
    )
    demo.add_argument(
        "--url",
        help="database URL, e.g. postgresql://postgres@127.0.0.1:5432/test "
        "(default: a SQLite file in a temporary folder)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; errors are one line on stderr and a non-zero exit."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            from ._demo import run_demo

            run_demo(args.url, sys.stdout)
    except (CacheError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a database error: one line, not a traceback
        print(
            f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            file=sys.stderr,
        )
        return 1
    return 0
