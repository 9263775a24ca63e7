"""One sampler per dashboard, shared by every open page.

It reads the ``inspect`` figures once per ``interval`` while some page has asked for them in
the last ``IDLE_AFTER`` seconds, and keeps the last ``HISTORY_SECONDS`` of samples in a capped
in-memory ring: a page only ever reads that ring, so the Redis cost does not grow with the
number of open pages. The ring lives in this process and starts empty when it restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any

from .._app import App
from .._connection import translated
from .._exceptions import AioredqError
from .._inspect import figures, lag_thresholds

HISTORY_SECONDS = 15 * 60
# A page polls every second; the sampler stops reading Redis when none has for this long.
IDLE_AFTER = 10.0


def _backlog(row: dict[str, Any]) -> int | None:
    """What waits to be handled: a group's lag, else the key's length."""
    lag = row.get("lag")
    return lag if isinstance(lag, int) else row.get("length")


class Sampler:
    def __init__(self, app: App, interval: float = 1.0) -> None:
        self.app = app
        self.interval = interval
        self.rows: list[dict[str, Any]] = []
        self.error: str | None = None
        self.at = 0.0
        self.ring: deque[dict[str, Any]] = deque(maxlen=int(HISTORY_SECONDS / interval) + 1)
        self.thresholds = lag_thresholds(app)
        self._wanted = 0.0
        self._task: asyncio.Task[None] | None = None
        self._fresh = asyncio.Event()

    async def snapshot(self) -> None:
        """Called by each page's poll: wakes the sampler and waits for its first sample."""
        self._wanted = time.monotonic()
        if self._task is None or self._task.done():
            self._fresh = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        if not self.at:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._fresh.wait(), 10)

    async def _run(self) -> None:
        while time.monotonic() - self._wanted < IDLE_AFTER:
            await self._sample()
            self._fresh.set()
            await asyncio.sleep(self.interval)

    async def _sample(self) -> None:
        try:
            rows = await translated("dashboard", lambda: figures(self.app))
        except AioredqError as exc:
            self.error = str(exc)
            return
        except Exception as exc:  # a page must keep working through anything Redis says
            self.error = f"{type(exc).__name__}: {exc}"
            return
        self.rows, self.error, self.at = rows, None, round(time.time(), 3)
        stats = self.app.stats().handlers
        sample: dict[str, Any] = {"t": self.at, "h": {}}
        for row in rows:
            own = stats.get(row["name"])
            sample["h"][row["name"]] = {
                "backlog": _backlog(row),
                "dead": row.get("dead"),
                # This process's own counters: non-zero only when it runs consumers too.
                "succeeded": own.succeeded if own else 0,
                "failed": own.failed if own else 0,
            }
        self.ring.append(sample)

    def since(self, t: float) -> list[dict[str, Any]]:
        return [s for s in self.ring if s["t"] > t]

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
