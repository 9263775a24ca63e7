"""One warning per Redis outage, and a growing pause between reconnect attempts."""

from __future__ import annotations

import logging
import random
import time

import anyio


class Outage:
    def __init__(self, log: logging.Logger, what: str, url: str) -> None:
        self._log = log
        self._what = what
        self._url = url
        self._since: float | None = None
        self._attempt = 0

    @property
    def active(self) -> bool:
        return self._since is not None

    async def failed(self, exc: BaseException) -> None:
        """Record a failed call; warn once per outage, then sleep before the next attempt."""
        if self._since is None:
            self._since = time.monotonic()
            self._log.warning(
                "%s: Redis at %s unavailable (%s: %s); reconnecting with backoff",
                self._what,
                self._url,
                type(exc).__name__,
                exc,
            )
        self._attempt += 1
        delay = min(5.0, 0.05 * 2 ** min(self._attempt, 10))
        await anyio.sleep(random.uniform(delay / 2, delay))

    def ok(self) -> None:
        if self._since is not None:
            self._log.warning(
                "%s: Redis at %s reachable again after %.1fs",
                self._what,
                self._url,
                time.monotonic() - self._since,
            )
            self._since = None
            self._attempt = 0
