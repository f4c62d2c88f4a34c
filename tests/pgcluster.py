"""A real PostgreSQL streaming-replication cluster, started from the server binaries.

A primary is made with ``initdb`` in a temporary directory, listening on a free
loopback port only, with trust authentication; standbys are ``pg_basebackup -R``
copies of it that stream its WAL. Everything is torn down with ``pg_ctl stop -m
immediate`` and the directory removed, whatever happened.

initdb and the server refuse to run as root: as root, the binaries run as the
``postgres`` OS user, who owns the directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

BIN_DIR = Path(os.environ.get("PG_BIN_DIR", "/usr/lib/postgresql/15/bin"))
# Every wait on the cluster is bounded: a node that does not come up fails the test.
START_SECONDS = 60.0
COMMAND_SECONDS = 120.0
DATABASE = "postgres"


def binaries_missing() -> str | None:
    """Why a cluster cannot be started here, or None when it can."""
    for name in ("initdb", "pg_ctl", "pg_basebackup", "postgres"):
        if not (BIN_DIR / name).is_file():
            return f"{BIN_DIR / name} is missing"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' OS user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _run(command: list[str]) -> str:
    done = subprocess.run(
        _as_server_user(command),
        capture_output=True,
        text=True,
        timeout=COMMAND_SECONDS,
        check=False,
    )
    if done.returncode != 0:
        msg = f"{' '.join(command)} failed ({done.returncode}): {done.stdout}{done.stderr}"
        raise RuntimeError(msg)
    return done.stdout


def wait_until(condition: Callable[[], bool], what: str, seconds: float = START_SECONDS) -> None:
    """Poll ``condition`` until it holds; fail after ``seconds`` saying ``what`` never happened."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if condition():
                return
        except psycopg.Error:
            pass  # not up yet: ask again
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {seconds:.0f} s")
        time.sleep(0.05)


@dataclass
class Node:
    """One server of the cluster: its data directory and port."""

    name: str
    data: Path
    port: int
    log: Path

    @property
    def host(self) -> str:
        """``host:port`` as a multi-host URL lists it."""
        return f"127.0.0.1:{self.port}"

    def url(self, driver: str = "") -> str:
        """A URL of this node alone, e.g. ``postgresql+asyncpg://postgres@127.0.0.1:5433/postgres``."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def connect(self) -> psycopg.Connection[Any]:
        """An autocommit admin connection to this node (bounded connect)."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            dbname=DATABASE,
            autocommit=True,
            connect_timeout=5,
        )

    def query(self, sql: str, *params: object) -> Any:
        """The first column of the first row of ``sql`` run on this node."""
        with self.connect() as connection:
            row = connection.execute(sql, params or None).fetchone()
            return None if row is None else row[0]

    def execute(self, sql: str, *params: object) -> None:
        """Run a statement that returns no rows on this node."""
        with self.connect() as connection:
            connection.execute(sql, params or None)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def pg_ctl(self, *args: str) -> str:
        return _run([str(BIN_DIR / "pg_ctl"), "-D", str(self.data), *args])

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        try:
            self.pg_ctl("-l", str(self.log), "-w", "-t", str(int(START_SECONDS)), "start")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.name} log:\n{self.log_tail()}") from None

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (``-m immediate``: no checkpoint, like a crash)."""
        self.pg_ctl("-m", mode, "-w", "stop")

    def running(self) -> bool:
        done = subprocess.run(
            _as_server_user([str(BIN_DIR / "pg_ctl"), "-D", str(self.data), "status"]),
            capture_output=True,
            timeout=COMMAND_SECONDS,
            check=False,
        )
        return done.returncode == 0

    def in_recovery(self) -> bool:
        return bool(self.query("SELECT pg_is_in_recovery()"))

    def promote(self) -> None:
        """Promote this standby and wait (server side) until it accepts writes."""
        if not self.query("SELECT pg_promote(wait => true, wait_seconds => 60)"):
            raise RuntimeError(f"{self.name} was not promoted:\n{self.log_tail()}")

    def replay_lsn(self) -> str:
        return str(self.query("SELECT pg_last_wal_replay_lsn()"))


@dataclass
class Cluster:
    """A primary and its streaming standbys, all on loopback ports."""

    root: Path
    primary: Node
    standbys: list[Node] = field(default_factory=list)

    @property
    def nodes(self) -> list[Node]:
        return [self.primary, *self.standbys]

    def wait_streaming(self) -> None:
        """Wait until every running standby is in recovery and streams from the primary."""
        running = [node for node in self.standbys if node.running()]
        for node in running:
            wait_until(node.in_recovery, f"{node.name} in recovery")
        wait_until(
            lambda: (
                self.primary.query(
                    "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
                )
                >= len(running)
            ),
            f"{len(running)} standbys streaming",
        )

    def wait_replayed(self, *standbys: Node) -> None:
        """Wait until the standbys replayed everything the primary has written so far."""
        target = self.primary.query("SELECT pg_current_wal_lsn()")
        for node in standbys or tuple(self.standbys):
            wait_until(
                lambda node=node: bool(  # type: ignore[misc]
                    node.query("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", str(target))
                ),
                f"{node.name} replaying up to {target}",
            )

    def multihost_url(self, driver: str = "", **query: str) -> str:
        """The multi-host URL of every node, ``?host=h1:p1&host=h2:p2&...``."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        parts = [f"host={node.host}" for node in self.nodes]
        parts += [f"{name}={value}" for name, value in query.items()]
        return f"{scheme}://postgres@/{DATABASE}?{'&'.join(parts)}"

    def stop_all(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                if node.running():
                    node.stop("immediate")


_SERVER_SETTINGS = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = '256MB'
hot_standby = on
wal_receiver_status_interval = 1s
wal_retrieve_retry_interval = 500ms
max_connections = 200
shared_buffers = '32MB'
fsync = off
synchronous_commit = on
full_page_writes = on
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
log_min_messages = warning
"""


def _node(root: Path, name: str) -> Node:
    return Node(name=name, data=root / name, port=_free_port(), log=root / f"{name}.log")


def _configure(node: Node, sockets: Path) -> None:
    with (node.data / "postgresql.conf").open("a") as conf:
        conf.write(_SERVER_SETTINGS.format(port=node.port, sockets=sockets))


@contextlib.contextmanager
def running_cluster(standbys: int = 1) -> Iterator[Cluster]:
    """Start a primary and ``standbys`` streaming standbys; stop and delete them afterwards."""
    root = Path(tempfile.mkdtemp(prefix="pgcluster-"))
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
    sockets = root / "sockets"
    _run(["mkdir", str(sockets)])
    cluster = Cluster(root=root, primary=_node(root, "primary"))
    try:
        _run(
            [
                str(BIN_DIR / "initdb"),
                "-D",
                str(cluster.primary.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        )
        _configure(cluster.primary, sockets)
        cluster.primary.start()
        cluster.primary.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        for index in range(standbys):
            node = _node(root, f"standby{index + 1}")
            _run(
                [
                    str(BIN_DIR / "pg_basebackup"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(cluster.primary.port),
                    "-U",
                    "postgres",
                    "-D",
                    str(node.data),
                    "-R",
                    "-X",
                    "stream",
                    "--checkpoint=fast",
                    "--no-sync",
                ]
            )
            # The copied postgresql.conf names the primary's port: the last setting wins.
            _configure(node, sockets)
            cluster.standbys.append(node)
            node.start()
        cluster.wait_streaming()
        yield cluster
    finally:
        cluster.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def cluster_or_skip(standbys: int = 1) -> contextlib.AbstractContextManager[Cluster]:
    """``running_cluster(standbys)``, or a skip (a failure under REQUIRE_PG_CLUSTER=1)
    when the server binaries are not installed."""
    import pytest

    missing = binaries_missing()
    if missing is not None:
        reason = f"cannot start a PostgreSQL cluster: {missing}"
        if os.environ.get("REQUIRE_PG_CLUSTER") == "1":
            pytest.fail(f"{reason} (REQUIRE_PG_CLUSTER=1)")
        pytest.skip(reason)
    return running_cluster(standbys)
