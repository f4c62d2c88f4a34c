"""Network faults a database client meets, on loopback: a proxy that can freeze, a
server that accepts and never answers, and a port nobody listens on.

``FreezeProxy`` forwards bytes both ways (any protocol, TLS included) and can stop
forwarding with its connections open: a frozen server or a path that drops packets,
as the client sees it. It runs its own event loop in a thread, so sync and async
clients can use it alike, and counts the connections clients opened and closed.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any


class FreezeProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; ``freeze()`` stops the bytes, ``thaw()``
    lets them flow again."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.opened = 0  # connections clients opened
        self.closed_by_client = 0  # connections whose client end closed
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.Server | None = None
        self._lock = threading.Lock()
        self.port = 0

    def __enter__(self) -> FreezeProxy:
        self._thread.start()
        self._server = self._call(self._start())
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

        self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()  # an unclosed loop warns when collected, in another test

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def freeze(self) -> None:
        """Stop forwarding, in both directions, from now on; connections stay open."""

        async def freeze() -> None:
            assert self._flowing is not None
            self._flowing.clear()

        self._call(freeze())

    def thaw(self) -> None:
        """Forward again, starting with what was held back."""

        async def thaw() -> None:
            assert self._flowing is not None
            self._flowing.set()

        self._call(thaw())

    def url(self, url: str, port: int) -> str:
        """``url`` with its ``127.0.0.1:<port>`` replaced by this proxy's address."""
        return url.replace(f"127.0.0.1:{port}", f"127.0.0.1:{self.port}")

    async def _start(self) -> asyncio.Server:
        self._flowing = asyncio.Event()
        self._flowing.set()
        return await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        with self._lock:
            self.opened += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(
            self._pipe(client_r, server_w, from_client=True),
            self._pipe(server_r, client_w, from_client=False),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_client: bool
    ) -> None:
        assert self._flowing is not None
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    if from_client:
                        with self._lock:
                            self.closed_by_client += 1
                    break
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            if from_client:
                with self._lock:
                    self.closed_by_client += 1
        finally:
            writer.close()


class SilentServer:
    """A listening socket that never accepts: connecting succeeds (the kernel completes
    the handshake), and then nothing ever answers."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(256)
        self.port: int = self._socket.getsockname()[1]

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._socket.close()


def closed_port() -> int:
    """A loopback port nobody listens on: connecting is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
