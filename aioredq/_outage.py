"""One log line per Redis outage (or per spell of refused commands), and a growing pause
between attempts."""

from __future__ import annotations

import logging
import random
import time

import anyio

from ._connection import is_connection_error

REPEAT_AFTER = 60.0


class Outage:
    def __init__(self, log: logging.Logger, what: str, url: str) -> None:
        self._log = log
        self._what = what
        self._url = url
        self._since: float | None = None
        self._attempt = 0
        self._unreachable = True
        self._logged = False
        self._quiet_until = 0.0

    @property
    def active(self) -> bool:
        return self._since is not None

    async def failed(self, exc: BaseException) -> None:
        """Record a failed call; log once per spell, then sleep before the next attempt.

        A refused command (WRONGTYPE, OOM, a bug) that fails now and then between successes
        is logged at most once per ``REPEAT_AFTER`` seconds, with its traceback.
        """
        if self._since is None:
            now = time.monotonic()
            self._since = now
            self._unreachable = is_connection_error(exc)
            if self._unreachable:
                self._logged = True
                self._log.warning(
                    "%s: Redis at %s unavailable (%s: %s); reconnecting with backoff",
                    self._what,
                    self._url,
                    type(exc).__name__,
                    exc,
                )
            elif now >= self._quiet_until:
                self._logged = True
                self._quiet_until = now + REPEAT_AFTER
                self._log.error(
                    "%s: failing (%s: %s); retrying with backoff",
                    self._what,
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )
        self._attempt += 1
        delay = min(5.0, 0.05 * 2 ** min(self._attempt, 10))
        await anyio.sleep(random.uniform(delay / 2, delay))

    def ok(self) -> None:
        if self._since is not None:
            if self._logged:
                back = (
                    f"Redis at {self._url} reachable again"
                    if self._unreachable
                    else "working again"
                )
                spell = time.monotonic() - self._since
                self._log.warning("%s: %s after %.1fs", self._what, back, spell)
            self._since = None
            self._attempt = 0
            self._logged = False
