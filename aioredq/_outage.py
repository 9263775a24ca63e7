"""One log line per Redis outage (or per spell of refused commands), and a growing pause
between attempts."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import anyio

from ._connection import is_connection_error

REPEAT_AFTER = 60.0


class Outage:
    """A spell of failures, shared by everyone who calls through the same Redis.

    Each caller passes itself as ``who``: the spell begins (one log line) when the first caller
    fails and ends ("reachable again") when none is failing any more, so one consumer that
    keeps working while another's node is down neither ends the spell nor resets the
    other's backoff.
    """

    def __init__(self, log: logging.Logger, what: str, url: str) -> None:
        self._log = log
        self._what = what
        self._url = url
        self._since: float | None = None
        self._attempts: dict[object, int] = {}  # who is failing -> failures in a row
        self._unreachable = True
        self._logged = False
        self._quiet_until = 0.0

    @property
    def active(self) -> bool:
        return self._since is not None

    async def failed(
        self, exc: BaseException, who: object = None, wake: asyncio.Event | None = None
    ) -> None:
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
        attempt = self._attempts[who] = self._attempts.get(who, 0) + 1
        delay = min(5.0, 0.05 * 2 ** min(attempt, 10))
        pause = random.uniform(delay / 2, delay)
        if wake is None:
            await anyio.sleep(pause)
        else:  # e.g. a stop request: no need to sit out the pause
            with anyio.move_on_after(pause):
                await wake.wait()

    def ok(self, who: object = None) -> None:
        if self._since is None:
            return
        self._attempts.pop(who, None)
        if self._attempts:
            return  # others are still failing: the spell goes on
        if self._logged:
            back = f"Redis at {self._url} reachable again" if self._unreachable else "working again"
            spell = time.monotonic() - self._since
            self._log.warning("%s: %s after %.1fs", self._what, back, spell)
        self._since = None
        self._logged = False
