"""Calls to Redis from a consumer's loops: each under a deadline, retried through outages
(logged once per spell), given up at a stop's deadline with a warning."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ._connection import is_connection_error
from ._decisions import error_text
from ._exceptions import ConnectError
from ._outage import Outage

log = logging.getLogger("aioredq")
# The longest a heartbeat or a settle may wait for its reply (shorter for short leases): then
# its connection is dropped and the call tried again on another, long before the lease lapses.
MAX_CALL_DEADLINE = 5.0
FIRST_TRY = 0.1


class NoReply(ConnectError):
    """A call to Redis got no reply by its deadline (a silent connection, or time ran out)."""


class Calls:
    """A consumer's calls to Redis outside the fetch: deadlines, retries and their logging."""

    what: str
    outage: Outage
    lease: float | None = None
    _settle_trouble: Outage

    @property
    def call_deadline(self) -> float:
        """How long a heartbeat or a settle waits for Redis before it is tried again."""
        if self.lease is None:
            return MAX_CALL_DEADLINE
        return min(max(self.lease / 3, 0.1), MAX_CALL_DEADLINE)

    async def _failed(
        self, exc: Exception, trouble: Outage, wake: asyncio.Event | None = None
    ) -> None:
        """Log (once per spell) and pause after a failed call (ended early by ``wake``)."""
        if is_connection_error(exc):
            await self.outage.failed(exc, trouble, wake)
        else:
            await trouble.failed(exc, wake=wake)

    def _worked(self, trouble: Outage) -> None:
        if self.outage.active:
            self.outage.ok(trouble)
        if trouble.active:
            trouble.ok()

    async def _bounded(self, call: Callable[[], Awaitable[Any]], deadline: float) -> None:
        """``call`` with a deadline: past it, the call's connection is dropped (redis-py
        disconnects a cancelled call) and the caller tries again on another one."""
        try:
            async with asyncio.timeout(deadline):
                await call()
        except TimeoutError as exc:
            raise NoReply(f"no reply from Redis within {deadline:.2g}s") from exc

    async def _retrying(
        self,
        call: Callable[[], Any],
        until: float | None = None,
        *,
        refused_is_fatal: bool = False,
        what: str = "",
    ) -> None:
        """Call until it succeeds; with ``until`` (a ``time.monotonic()`` instant), give up
        then, whether Redis refuses, fails or does not answer, and say so. The first attempt
        gets ``FIRST_TRY`` seconds at least, so a stop with no time left still tries once."""
        last: Exception | None = None  # the last error other than running out of time
        tries = 0
        while True:
            left = None if until is None else until - time.monotonic()
            if left is not None and left <= 0 and tries:
                log.warning(
                    "%s: stopping: gave up %s at the shutdown timeout (%s); the lease "
                    "returns that work to the others",
                    self.what,
                    what,
                    error_text(last) if last is not None else "no time left",
                )
                return
            tries += 1
            try:
                if left is None:
                    await call()
                else:
                    await self._bounded(call, max(left, 0.0 if tries > 1 else FIRST_TRY))
            except Exception as exc:
                if refused_is_fatal and not is_connection_error(exc):
                    raise
                if not isinstance(exc, NoReply) or last is None:
                    last = exc
                if until is None:
                    await self._failed(exc, self._settle_trouble)
                else:
                    with anyio.move_on_after(max(0.0, until - time.monotonic())):
                        await self._failed(exc, self._settle_trouble)
            else:
                self._worked(self._settle_trouble)
                return
