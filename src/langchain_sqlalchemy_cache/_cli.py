"""The command line: ``python -m langchain_sqlalchemy_cache`` / ``langchain-sqlalchemy-cache``.

Every subcommand takes the database URL. Errors are one line on stderr and a non-zero
exit (2 for a bad command line, 1 for anything else, 130 when interrupted), never a
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import IO, Any, NoReturn

from sqlalchemy import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError

from . import __version__
from ._cache import SQLAlchemyCache
from ._errors import CacheError, positive_int
from ._keys import llm_key
from ._maintenance import CacheTable
from ._migrate import MigrationProgress, MigrationReport, run_migration
from ._options import CacheOptions, qualified_name
from ._schema import DEFAULT_TABLE_NAME
from ._secrets import Redactor, raw_url_secrets, url_secrets
from ._stats import TableStats
from ._steps import run_sync
from ._sync_io import SyncExecutor
from ._table import missing_columns

PROG = "langchain-sqlalchemy-cache"
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([smhd]?)")
_DURATION_HELP = "seconds, or a number with s, m, h or d: 90s, 15m, 2h, 7d"
# Models listed by ``stats``; the rest are summed up in one line.
_STATS_MODELS = 20


class CliError(Exception):
    """A failure the command line reports as ``error: <message>``."""


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def duration(text: str) -> float:
    """A duration in seconds from ``3600``, ``90s``, ``15m``, ``2h`` or ``7d``.

    Raises:
        argparse.ArgumentTypeError: It is not a positive duration.
    """
    match = _DURATION.fullmatch(text.strip().lower())
    seconds = 0.0 if match is None else float(match.group(1)) * _UNITS[match.group(2)]
    if not seconds > 0:
        msg = f"invalid duration {text!r}: use more than 0 {_DURATION_HELP}"
        raise argparse.ArgumentTypeError(msg)
    return seconds


def positive_count(text: str) -> int:
    """A positive integer (``positive_int``) written as ``500`` or ``10_000``.

    Raises:
        argparse.ArgumentTypeError: It is not one.
    """
    try:
        return positive_int("N", int(text.replace("_", "")))
    except ValueError:  # not a number, or a ConfigurationError
        msg = f"invalid value {text!r}: use a positive integer"
        raise argparse.ArgumentTypeError(msg) from None


def counted(count: int, singular: str, plural: str | None = None) -> str:
    """``1 entry``, ``1,200 entries``: a count with its noun in the right number."""
    noun = singular if count == 1 else (plural or singular + "s")
    return f"{count:,} {noun}"


def _entries(count: int) -> str:
    """``1 entry``, ``0 entries``."""
    return counted(count, "entry", "entries")


def format_duration(seconds: float) -> str:
    """``7d``, ``2h``, ``15m``, ``90s``: the largest unit that divides the duration."""
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{seconds / _UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"


def approximate_duration(seconds: float) -> str:
    """``3d``, ``7h``, ``2m``, ``45s``: the largest whole unit, rounded down."""
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS[unit]:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{int(seconds)}s"


def hide_password(url: str) -> str:
    """The URL as it may be shown: with its password replaced by ``***``."""
    return _secrets_of(url)(url)


def _secrets_of(*urls: str | None) -> Redactor:
    """What a line must not show: the passwords of these URLs, parsable or not."""
    secrets: list[str] = []
    for url in urls:
        if url:
            secrets.extend(raw_url_secrets(url))
            with contextlib.suppress(Exception):  # unparsable: raw_url_secrets did it
                secrets.extend(url_secrets(make_url(url)))
    return Redactor(secrets)


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    if isinstance(exc, SQLAlchemyError) and orig is not None:
        text = f"{type(orig).__name__}: {orig}"
    elif isinstance(exc, (CliError, CacheError, SQLAlchemyError)):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


# The parser.


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "url", metavar="URL", help="database URL, e.g. postgresql://user@host/db or sqlite:///x.db"
    )
    parser.add_argument(
        "--table",
        default=DEFAULT_TABLE_NAME,
        help=f"the cache table (default: {DEFAULT_TABLE_NAME})",
    )
    parser.add_argument("--schema", help="the table's schema (default: the database's)")
    parser.add_argument("--namespace", default="", help="the cache namespace (default: '')")


def _parser() -> _Parser:
    parser = _Parser(
        prog=PROG,
        description="A native-async LLM response cache for LangChain, backed by SQLAlchemy.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="answer one question twice through the cache: a miss, then a hit"
    )
    demo.add_argument(
        "url",
        metavar="URL",
        nargs="?",
        help="database URL, e.g. postgresql://postgres@127.0.0.1:5432/test "
        "(default: a SQLite file in a temporary folder)",
    )
    demo.add_argument("--url", dest="url_option", metavar="URL", help="the same, as an option")
    demo.set_defaults(run=_demo)

    stats = commands.add_parser("stats", help="what the cache table holds")
    _common(stats)
    stats.set_defaults(run=_stats)

    purge = commands.add_parser(
        "purge", help="delete expired entries (--ttl) or the oldest beyond a bound (--max-entries)"
    )
    _common(purge)
    purge.add_argument(
        "--ttl",
        type=duration,
        metavar="DURATION",
        help=f"delete entries written longer ago: {_DURATION_HELP}",
    )
    purge.add_argument(
        "--max-entries",
        type=positive_count,
        metavar="N",
        help="keep only the newest N entries of the namespace",
    )
    purge.set_defaults(run=_purge, command_parser=purge)

    clear = commands.add_parser(
        "clear", help="delete the namespace's entries, or those of one model or age"
    )
    _common(clear)
    clear.add_argument("--llm-string", help="only this model's entries (its exact llm_string)")
    clear.add_argument(
        "--older-than",
        type=duration,
        metavar="DURATION",
        help=f"only entries written longer ago: {_DURATION_HELP}",
    )
    clear.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    clear.set_defaults(run=_clear)

    check = commands.add_parser(
        "check", help="probe the cache table: one line, exit 0 when healthy, 1 when not"
    )
    _common(check)
    check.add_argument(
        "--timeout",
        type=duration,
        metavar="DURATION",
        default=2.0,
        help=f"the probe's deadline (default: 2s): {_DURATION_HELP}",
    )
    check.set_defaults(run=_check)

    migrate_ = commands.add_parser(
        "migrate",
        help="copy a langchain_community cache table (full_llm_cache, full_md5_llm_cache) here",
    )
    _common(migrate_)
    migrate_.add_argument(
        "--from-table",
        default="full_llm_cache",
        help="the langchain_community table: full_llm_cache (SQLAlchemyCache, the default) "
        "or full_md5_llm_cache (SQLAlchemyMd5Cache); the layout is told by its columns",
    )
    migrate_.add_argument("--from-schema", help="its schema (default: the database's)")
    migrate_.add_argument(
        "--batch-size",
        type=positive_count,
        metavar="N",
        default=500,
        help="source rows read and written per statement (default: 500)",
    )
    migrate_.add_argument(
        "--no-store-prompts",
        action="store_true",
        help="store only the hashes of prompts and llm_strings (as store_prompts=False)",
    )
    migrate_.set_defaults(run=_migrate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; errors are one line on stderr and a non-zero exit.

    Args:
        argv: The arguments, without the program name; None for ``sys.argv[1:]``.

    Returns:
        The exit status: 0, 1 on an error, 2 on a bad command line, 130 if interrupted.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except BrokenPipeError:
        # The reader went away (``stats URL | head``): nothing more to say to it.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a database or configuration error: one line, no traceback
        redact = _secrets_of(getattr(args, "url", None), getattr(args, "url_option", None))
        print(f"error: {redact(_one_line(exc))}", file=sys.stderr)
        return 1


# Opening the cache of an existing table.


def _options(args: argparse.Namespace, **settings: Any) -> CacheOptions:
    """The command line's table, schema and namespace, with ``settings``, checked."""
    return CacheOptions(
        table_name=args.table, schema=args.schema, namespace=args.namespace, **settings
    )


def _where(args: argparse.Namespace) -> str:
    name = qualified_name(args.table, args.schema)
    namespace = f" (namespace {args.namespace!r})" if args.namespace else ""
    return f"table {name!r}{namespace} in {hide_password(args.url)}"


@contextlib.contextmanager
def _open(
    args: argparse.Namespace, **settings: Any
) -> Iterator[tuple[SQLAlchemyCache, CacheTable]]:
    """The cache on ``args``' table, which must exist (nothing is created), and the table."""
    options = _options(args, on_error="raise", create_table=False, **settings)
    database = _sqlite_file(args.url)
    if database is not None and not os.path.exists(database):
        # Connecting would create an empty database file under the mistyped name.
        raise CliError(f"no SQLite database at {database!r}")
    with SQLAlchemyCache(args.url, **options.arguments()) as cache:
        yield cache, _existing_table(cache.sync_engine, options, args.url)


def _sqlite_file(url: str) -> str | None:
    try:
        parsed = make_url(url)
    except Exception:
        return None  # the cache reports an unusable URL itself
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return parsed.database


def _existing_table(engine: Engine, options: CacheOptions, url: str) -> CacheTable:
    table = CacheTable.build(engine.dialect.name, options)
    with engine.connect() as connection:
        missing = missing_columns(connection, table.table)
    name = options.qualified_name
    where = hide_password(url)
    if missing is None:
        raise CliError(f"table {name!r} does not exist in {where}")
    if missing:
        msg = (
            f"table {name!r} in {where} is not a langchain-sqlalchemy-cache table "
            f"(it lacks the columns {missing})"
        )
        raise CliError(msg)
    return table


# The subcommands.


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    if args.url and args.url_option and args.url != args.url_option:
        raise CliError("demo: give the URL once, as URL or as --url")
    run_demo(args.url or args.url_option, sys.stdout)
    return 0


def _size(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count:,} bytes" if unit == "bytes" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    age = max(0.0, (datetime.now(timezone.utc) - moment).total_seconds())
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({approximate_duration(age)} ago)"


def _model_label(llm_string: str | None, key: str | None) -> str:
    if llm_string is None:
        return f"llm_key {(key or '?')[:16]}... (llm_string not stored)"
    flat = " ".join(llm_string.split())
    return flat if len(flat) <= 100 else flat[:97] + "..."


def format_stats(stats: TableStats, where: str) -> str:
    """``stats``' report of a table's statistics."""
    lines = [
        where,
        f"entries:   {stats.entries:,}",
        f"payloads:  {_size(stats.payload_bytes)}",
        "on disk:   "
        + (
            "unknown on this backend"
            if stats.table_bytes is None
            else f"{_size(stats.table_bytes)} (the whole table, all namespaces, with indexes)"
        ),
        f"oldest:    {_when(stats.oldest)}",
        f"newest:    {_when(stats.newest)}",
        f"models:    {len(stats.models):,}",
    ]
    for model in stats.models[:_STATS_MODELS]:
        lines.append(f"  {model.entries:>10,}  {_model_label(model.llm_string, model.llm_key)}")
    rest = stats.models[_STATS_MODELS:]
    if rest:
        total = sum(model.entries for model in rest)
        lines.append(f"  {total:>10,}  ({counted(len(rest), 'more model')})")
    return "\n".join(lines)


def _stats(args: argparse.Namespace) -> int:
    with _open(args) as (cache, _):
        stats = cache.table_stats()
    print(format_stats(stats, _where(args)))
    return 0


def _check(args: argparse.Namespace) -> int:
    options = _options(args, create_table=False, timeout=args.timeout)
    database = _sqlite_file(args.url)
    if database is not None and not os.path.exists(database):
        # Connecting would create an empty database file under the mistyped name.
        print(f"unhealthy: {_where(args)}: no SQLite database at {database!r}")
        return 1
    cache = SQLAlchemyCache(args.url, **options.arguments())
    try:
        health = cache.health()
    finally:
        cache.close()
    if health.ok and health.latency is not None:
        print(f"ok: {_where(args)} answered in {health.latency * 1000:.1f} ms")
        return 0
    print(f"unhealthy: {_where(args)}: {health.error}")
    return 1


def _purge(args: argparse.Namespace) -> int:
    if args.ttl is None and args.max_entries is None:
        args.command_parser.error("give --ttl, --max-entries, or both")
    with _open(args, ttl=args.ttl, max_entries=args.max_entries) as (cache, _):
        where = _where(args)
        if args.ttl is not None:
            deleted = cache.purge_expired()
            print(
                f"deleted {_entries(deleted)} written more than "
                f"{format_duration(args.ttl)} ago from {where}"
            )
        if args.max_entries is not None:
            deleted = cache.enforce_max_entries()
            bound = f"{args.max_entries:,}"
            print(f"deleted {_entries(deleted)} beyond the newest {bound} from {where}")
    return 0


def _confirmed() -> bool:
    try:
        answer = input("Delete them? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _clear(args: argparse.Namespace) -> int:
    model = None if args.llm_string is None else llm_key(args.llm_string)
    with _open(args) as (cache, table):
        executor = SyncExecutor(cache.sync_engine, table.table, table.readiness)
        # One cutoff, fixed when counting, also without --older-than: entries written
        # while the question waits for an answer are not deleted.
        cutoff = run_sync(table.now(), executor) - (args.older_than or 0.0)
        count = run_sync(table.count(model, cutoff), executor)
        what = ""
        if args.llm_string is not None:
            what += f" of the model {_model_label(args.llm_string, None)!r}"
        if args.older_than is not None:
            what += f" written more than {format_duration(args.older_than)} ago"
        where = _where(args)
        if count == 0:
            print(f"nothing to delete: no entries{what} in {where}")
            return 0
        print(f"{_entries(count)}{what} would be deleted from {where}")
        if not args.yes:
            if not sys.stdin.isatty():
                raise CliError(
                    "clear asks for confirmation and stdin is not a terminal: pass --yes"
                )
            if not _confirmed():
                print("nothing deleted", file=sys.stderr)
                return 1
        # clear()'s DELETE with the very cutoff counted, run here for its row count
        # (clear() returns nothing, as LangChain's BaseCache says).
        deleted = run_sync(table.delete(model, cutoff), executor)
    print(f"deleted {_entries(deleted)}{what}")
    return 0


class ProgressBar:
    """A migration's progress on a stream.

    On a terminal one line is redrawn; elsewhere (a log) a line is written per tenth of
    the rows, and at 100% whenever the counts change.
    """

    def __init__(self, stream: IO[str], width: int = 30) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._width = width
        self._tenths = -1
        self._drawn = 0
        self._logged = ""
        self.last: MigrationProgress | None = None

    def __call__(self, progress: MigrationProgress) -> None:
        """Show ``progress``."""
        self.last = progress
        total = progress.total_rows
        fraction = min(1.0, progress.rows_read / total) if total else 1.0
        filled = int(fraction * self._width)
        line = (
            f"[{'#' * filled}{'.' * (self._width - filled)}] {fraction:4.0%}  "
            f"{progress.rows_read:,}/{counted(total, 'row')}: {progress.copied:,} copied, "
            f"{progress.skipped:,} skipped, {progress.unreadable:,} unreadable"
        )
        if self._tty:
            self._stream.write("\r" + line.ljust(self._drawn))
            self._drawn = len(line)
        elif int(fraction * 10) > self._tenths or (fraction >= 1.0 and line != self._logged):
            # At 100% every change is written: the last group of a table is copied after
            # its last row was read, and the log's last line must show it.
            self._tenths = int(fraction * 10)
            self._logged = line
            self._stream.write(line + "\n")
        self._stream.flush()

    def finish(self) -> None:
        """End the redrawn line, if one was drawn."""
        if self._tty and self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = 0


def format_report(report: MigrationReport, source: str, where: str) -> str:
    """``migrate``'s summary of a finished migration."""
    lines = [
        f"migrated {source!r} ({report.layout} layout, {counted(report.rows_read, 'row')}) "
        f"into {where}",
        f"copied {_entries(report.copied)}, skipped {report.skipped:,} already present, "
        f"{report.unreadable:,} unreadable",
    ]
    for reason, count in sorted(report.reasons.items(), key=lambda item: (-item[1], item[0])):
        lines.append(f"  {count:>10,}  {reason}")
    return "\n".join(lines)


@contextlib.contextmanager
def _ctrl_c_between_pages() -> Iterator[Callable[[], None]]:
    """Ctrl-C stops a migration after the page in flight, never inside a driver.

    A KeyboardInterrupt raised at an arbitrary point can land where it is swallowed (a
    finalizer returning a connection to its pool), and the run then goes on. The first
    Ctrl-C only sets a flag that the progress callback turns into a KeyboardInterrupt
    after the page; a second one interrupts at once. Yields that check.
    """
    pressed = threading.Event()

    def check() -> None:
        if pressed.is_set():
            raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield check  # signals reach only the main thread
        return

    def on_ctrl_c(signum: int, frame: object) -> None:
        pressed.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)


def _migrate(args: argparse.Namespace) -> int:
    # migrate's own default timeout: no deadline for the whole run.
    options = _options(args, store_prompts=not args.no_store_prompts, timeout=None)
    bar = ProgressBar(sys.stderr)
    try:
        with _ctrl_c_between_pages() as check:

            def progress(done: MigrationProgress) -> None:
                bar(done)
                check()

            report = run_migration(
                args.url,
                options,
                args.from_table,
                from_schema=args.from_schema,
                batch_size=args.batch_size,
                progress=progress,
            )
    except KeyboardInterrupt:
        bar.finish()
        copied = bar.last.copied if bar.last else 0
        print(
            f"interrupted after copying {_entries(copied)}: run the same command again to "
            "finish (what is already copied is skipped)",
            file=sys.stderr,
        )
        return 130
    except BaseException:
        bar.finish()
        raise
    bar.finish()
    source = qualified_name(args.from_table, args.from_schema)
    print(format_report(report, source, _where(args)))
    return 0
