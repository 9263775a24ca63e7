"""A TCP proxy in front of a Redis server that can turn into a black hole.

``freeze()`` makes every connection open at that moment, and every one opened while frozen,
silent for good: what the client writes is accepted and dropped, no reply ever comes, and
nothing is closed (as when a network drops a connection's packets). ``thaw()`` lets new
connections through again; the frozen ones stay silent, as a connection whose packets were
lost stays until TCP gives up, which takes far longer than any lease.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from urllib.parse import urlsplit

HOST = "127.0.0.1"


class _Link:
    def __init__(self, frozen: bool) -> None:
        self.frozen = frozen
        self.writers: list[asyncio.StreamWriter] = []


class BlackHoleProxy:
    """In front of the Redis at ``url`` (``redis://host:port/...``); ``.url`` is the proxy's."""

    def __init__(self, url: str) -> None:
        port = urlsplit(url).port
        assert port is not None, url
        self._port = port
        self._server: asyncio.Server | None = None
        self._links: list[_Link] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.frozen = False

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://{HOST}:{port}/0"

    def freeze(self) -> None:
        self.frozen = True
        for link in self._links:
            link.frozen = True

    def thaw(self) -> None:
        self.frozen = False

    async def __aenter__(self) -> BlackHoleProxy:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for link in self._links:
            for writer in link.writers:
                writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        link = _Link(self.frozen)
        self._links.append(link)
        link.writers.append(client_w)
        try:
            server_r, server_w = await asyncio.open_connection(HOST, self._port)
        except OSError:
            client_w.close()
            return
        link.writers.append(server_w)
        for reader, writer in ((client_r, server_w), (server_r, client_w)):
            task = asyncio.ensure_future(self._pipe(link, reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if link.frozen:
                    continue  # swallowed: the peer waits for a reply that never comes
                writer.write(data)
                await writer.drain()
        if not link.frozen:
            writer.close()
