"""A stream group's periodic checks, run by a group consumer's upkeep: the group's lag (a
warning when over ``lag_warning``) and the removal of consumers long dead."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ._handlers import StreamSpec
from ._transports.stream import StreamTransport, position

log = logging.getLogger("aioredq")
LAG_CHECK_SECONDS = 10.0
LAG_WARN_EVERY = 60.0
PRUNE_MIN_SECONDS = 2.0


class GroupChecks:
    """When each check is next due, for one consumer; ``seen`` learns the group's newest
    delivered entry each time the lag is read."""

    def __init__(
        self, transport: StreamTransport, spec: StreamSpec, seen: Callable[[str], None]
    ) -> None:
        self.transport = transport
        self.spec = spec
        self._seen = seen
        self._next_lag_check = 0.0
        self._next_lag_warning = 0.0
        self._next_prune = 0.0

    async def run(self, now: float) -> None:
        """The checks that are due at ``now`` (``time.monotonic()``)."""
        if now >= self._next_lag_check:
            self._next_lag_check = now + LAG_CHECK_SECONDS
            await self._check_lag(now)
        if now >= self._next_prune:
            self._next_prune = now + max(self.spec.lease, PRUNE_MIN_SECONDS)
            removed = await self.transport.prune_consumers(int(self.spec.lease * 1000))
            if removed:
                log.info(
                    "stream %r group %r: removed dead consumers %s",
                    self.spec.stream,
                    self.spec.group,
                    ", ".join(removed),
                )

    async def _check_lag(self, now: float) -> None:
        info = await self.transport.group_info()
        if info is None:
            return
        self._seen(position(info))
        lag = await self.transport.lag(info, self.spec.lag_warning + 1)
        if lag > self.spec.lag_warning and now >= self._next_lag_warning:
            self._next_lag_warning = now + LAG_WARN_EVERY
            log.warning(
                "stream %r group %r: lag %d is over %d; add consumers or concurrency",
                self.spec.stream,
                self.spec.group,
                lag,
                self.spec.lag_warning,
            )
