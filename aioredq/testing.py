"""Helpers for testing your own handlers, on the in-process ``memory://`` backend by default.

from aioredq.testing import running

async def test_send_email() -> None:
    async with running(app) as harness:          # app's handlers run on memory://
        await app.enqueue("jobs", {"to": "a@b.c"})
        await harness.wait_idle()                # every message handled and settled
        assert harness.stats["send_email"].succeeded == 1
        assert await harness.dead_letters("jobs") == []
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio

from ._app import App
from ._handlers import StreamHandler, SubscribeHandler, TaskHandler
from ._inspect import figures
from ._stats import Stats
from ._transports import admin

__all__ = ["Harness", "running"]


class Harness:
    """A running app under test."""

    def __init__(self, app: App) -> None:
        self.app = app

    @property
    def stats(self) -> Stats:
        return self.app.stats()

    async def wait_idle(self, timeout: float = 10.0, *, settle: float = 0.05) -> None:
        """Wait until every queue and group is drained and nothing is in flight.

        Delayed task items that are not due yet do not count. Raises ``TimeoutError`` with
        what is still busy after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while True:
            busy = await self._busy()
            now = time.monotonic()
            if busy:
                quiet_since = None
                if now >= deadline:
                    raise TimeoutError(f"not idle after {timeout}s: {'; '.join(busy)}")
            else:
                quiet_since = quiet_since if quiet_since is not None else now
                if now - quiet_since >= settle:
                    return
            await anyio.sleep(0.01)

    async def _busy(self) -> list[str]:
        busy = [] if self.app._idle() else ["handlers are running"]
        for row in await figures(self.app):
            if row["kind"] == "task" and (row["length"] or row["processing"]):
                busy.append(f"{row['key']}: {row['length']} queued, {row['processing']} processing")
            if row["kind"] == "stream" and (row["lag"] or row["pending"]):
                busy.append(f"{row['key']}: lag {row['lag']}, {row['pending']} pending")
        return busy

    async def dead_letters(self, name: str) -> list[dict[str, Any]]:
        """Dead letters of a queue or stream (or of the handler named ``name``), newest first."""
        handler = self.app.handler(name)
        conn = self.app.connection
        if isinstance(handler, TaskHandler):
            return [
                json.loads(raw) for raw in await admin.queue_dead_letters(conn, handler.key, None)
            ]
        if isinstance(handler, StreamHandler):
            return [
                {"id": i, **f} for i, f in await admin.stream_dead_letters(conn, handler.key, None)
            ]
        assert isinstance(handler, SubscribeHandler)
        raise ValueError(f"{name!r} is a pub/sub handler: pub/sub has no dead letters")


@contextlib.asynccontextmanager
async def running(app: App, url: str | None = "memory://") -> AsyncIterator[Harness]:
    """Run ``app`` for the duration of the block, on ``url`` (``memory://`` by default;
    ``None`` keeps the app's own URL)."""
    if url is not None:
        app.set_url(url)
    async with app:
        yield Harness(app)
