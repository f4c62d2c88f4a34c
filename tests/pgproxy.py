"""A TCP proxy on loopback in front of PostgreSQL that reads the client's protocol messages.

It can also slow the server's replies down (``delay``), hold them back until told
(``hold_replies``/``release_replies``), cut every connection (``cut_all``), and refuse
new ones (``accepting = False``): a server going away, as the cache sees it. Tests wait
for what it has seen (``wait_until``) rather than for a while.

It counts round trips as the server sees them: every simple ``Query`` and every ``Sync``
(which ends an extended-protocol exchange) is one trip. It runs its own event loop in
a thread, so sync and async clients of the test can use it alike. Clients must not
negotiate TLS (asyncpg ``ssl=False``, psycopg ``sslmode=disable``), or the messages
could not be read.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import make_url

from .helpers import postgres_url_from_env

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104

T = TypeVar("T")


class PgProxy:
    """Forwards 127.0.0.1:<port> to the upstream server and counts client messages.

    The upstream is the host and port of ``postgres_url`` (by default the tests' server,
    TEST_POSTGRES_URL); a URL without them means PostgreSQL's own defaults.
    """

    def __init__(self, postgres_url: str | None = None) -> None:
        server = make_url(postgres_url or postgres_url_from_env())
        self.upstream = (server.host or "127.0.0.1", server.port or 5432)
        self.messages: Counter[str] = Counter()
        self.delay = 0.0  # seconds added before each chunk of the server's replies
        self.accepting = True
        self._cuts = 0  # how many cut_all() calls so far
        self.upstream_ports: set[int] = set()  # our side of each server connection
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.held = 0  # server replies the proxy is holding back right now
        # Per open connection, on the proxy's loop: set while its replies may flow.
        self._gates: dict[asyncio.StreamWriter, asyncio.Event] = {}
        self.port = 0

    def __enter__(self) -> PgProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: Any) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            # Finished, not just cancelled: a pending task at close is "destroyed".
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()  # an unclosed loop warns when collected, in another test

    @property
    def round_trips(self) -> int:
        """Client round trips so far: simple queries plus extended-protocol syncs."""
        with self._lock:
            return self.messages["Q"] + self.messages["S"]

    def reset(self) -> None:
        """Forget the counts so far."""
        with self._lock:
            self.messages.clear()

    def wait_until(self, condition: Callable[[PgProxy], bool], timeout: float = 60) -> None:
        """Block until ``condition(self)`` holds, re-checked whenever a client message
        arrives or a reply is held back; fail if it never does (a guard against hanging)."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self), timeout):
                raise AssertionError(f"the proxy never saw it happen: {self.messages}")

    def hold_replies(self) -> None:
        """Keep the server's replies on the connections open now at the proxy until
        ``release_replies`` (connections opened later are not held: they can connect)."""

        def hold() -> None:
            for gate in self._gates.values():
                gate.clear()

        self._in_loop(hold)

    def release_replies(self) -> None:
        """Let every held reply through."""

        def release() -> None:
            for gate in self._gates.values():
                gate.set()

        self._in_loop(release)

    def _in_loop(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the proxy's loop and return once it has run."""

        async def call() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    def cut_all(self) -> None:
        """Drop every open connection, both ways, as a crashed server or network would."""

        async def cut() -> None:
            self._cuts += 1  # connections still being set up are cut as they finish
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        asyncio.run_coroutine_threadsafe(cut(), self._loop).result(10)

    async def _start(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if not self.accepting:
            client_w.transport.abort()
            return
        cuts = self._cuts
        server_r, server_w = await asyncio.open_connection(*self.upstream)
        if cuts != self._cuts or not self.accepting:
            # Cut (or refused) while its upstream connection was being opened: without
            # this it would outlive cut_all() and serve a "down" server's answers.
            server_w.transport.abort()
            client_w.transport.abort()
            return
        port = server_w.get_extra_info("sockname")[1]
        self.upstream_ports.add(port)
        self._writers.update((client_w, server_w))
        gate = self._gates[client_w] = asyncio.Event()
        gate.set()
        up = asyncio.ensure_future(self._client_to_server(client_r, server_w))
        down = asyncio.ensure_future(self._pipe(server_r, client_w, gate))
        try:
            await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the proxy is stopping
        finally:
            for task in (up, down):
                task.cancel()
            for writer in (client_w, server_w):
                self._writers.discard(writer)
                writer.close()
            self.upstream_ports.discard(port)
            self._gates.pop(client_w, None)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gate: asyncio.Event
    ) -> None:
        """The server's replies to one client: held while ``gate`` is clear, and delayed."""
        while data := await reader.read(65536):
            if not gate.is_set():
                with self._changed:
                    self.held += 1
                    self._changed.notify_all()
                try:
                    await gate.wait()
                finally:
                    with self._lock:
                        self.held -= 1
            if self.delay:
                await asyncio.sleep(self.delay)
            writer.write(data)
            await writer.drain()

    async def _client_to_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # Startup: untyped messages (length, code) until the real StartupMessage.
        while True:
            head = await reader.readexactly(8)
            length, code = struct.unpack("!ii", head)
            body = await reader.readexactly(length - 8)
            writer.write(head + body)
            await writer.drain()
            if code not in (_SSL_REQUEST, _GSSENC_REQUEST):
                break
        while True:
            head = await reader.readexactly(5)
            kind = chr(head[0])
            (length,) = struct.unpack("!i", head[1:])
            body = await reader.readexactly(length - 4)
            with self._changed:
                self.messages[kind] += 1
                self._changed.notify_all()
            writer.write(head + body)
            await writer.drain()
