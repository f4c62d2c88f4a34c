"""A TCP proxy on loopback in front of PostgreSQL that reads the client's protocol messages.

It can also slow the server's replies down (``delay``), cut every connection
(``cut_all``), and refuse new ones (``accepting = False``): a server going away, as
the cache sees it.

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
from typing import Any

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


class PgProxy:
    """Forwards 127.0.0.1:<port> to the upstream server and counts client messages."""

    def __init__(self, upstream_host: str = "127.0.0.1", upstream_port: int = 5432) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.messages: Counter[str] = Counter()
        self.delay = 0.0  # seconds added before each chunk of the server's replies
        self.accepting = True
        self.upstream_ports: set[int] = set()  # our side of each server connection
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._lock = threading.Lock()
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
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def round_trips(self) -> int:
        """Client round trips so far: simple queries plus extended-protocol syncs."""
        with self._lock:
            return self.messages["Q"] + self.messages["S"]

    def reset(self) -> None:
        """Forget the counts so far."""
        with self._lock:
            self.messages.clear()

    def cut_all(self) -> None:
        """Drop every open connection, both ways, as a crashed server or network would."""

        async def cut() -> None:
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
        server_r, server_w = await asyncio.open_connection(*self.upstream)
        port = server_w.get_extra_info("sockname")[1]
        self.upstream_ports.add(port)
        self._writers.update((client_w, server_w))
        up = asyncio.ensure_future(self._client_to_server(client_r, server_w))
        down = asyncio.ensure_future(self._pipe(server_r, client_w, delayed=True))
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

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool = False
    ) -> None:
        while data := await reader.read(65536):
            if delayed and self.delay:
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
            with self._lock:
                self.messages[kind] += 1
            writer.write(head + body)
            await writer.drain()
