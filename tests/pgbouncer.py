"""A real PgBouncer (Debian's package) in transaction pooling mode, started for the tests."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import make_url


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_pgbouncer(postgres_url: str, *, pool_size: int = 3) -> Iterator[str]:
    """Start PgBouncer in front of ``postgres_url``; yield the URL to reach it through."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    server = make_url(postgres_url)
    port = _free_port()
    folder = tempfile.mkdtemp(prefix="pgbouncer-")
    user = server.username or "postgres"
    config = os.path.join(folder, "pgbouncer.ini")
    with open(os.path.join(folder, "users.txt"), "w") as users:
        users.write(f'"{user}" ""\n')
    target = (
        f"host={server.host or '127.0.0.1'} port={server.port or 5432} dbname={server.database}"
    )
    with open(config, "w") as ini:
        ini.write(
            f"""[databases]
{server.database} = {target}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
auth_type = trust
auth_file = {folder}/users.txt
pool_mode = transaction
default_pool_size = {pool_size}
unix_socket_dir =
logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
"""
        )
    command = [binary, config]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root: drop to the postgres user
        account = pwd.getpwnam("postgres")
        os.chmod(folder, 0o755)
        for name in os.listdir(folder):
            os.chown(os.path.join(folder, name), account.pw_uid, account.pw_gid)
        os.chown(folder, account.pw_uid, account.pw_gid)
        command = [binary, "-u", "postgres", config]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read().decode() if process.stdout else ""
                    raise RuntimeError(f"PgBouncer did not start: {output}") from None
                time.sleep(0.1)
        yield str(server.set(host="127.0.0.1", port=port))
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
