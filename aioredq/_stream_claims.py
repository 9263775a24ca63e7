"""Claiming a stream group's abandoned entries: other consumers' entries idle for longer than
the lease, found by walking a cursor over the group's pending entries, a scan at a time, and
again once per upkeep interval after the walk reached the end."""

from __future__ import annotations

import logging
import time

from ._transports.stream import Entry, StreamTransport

log = logging.getLogger("aioredq")
# Pending entries one claiming call looks at (it claims at most a batch of them).
CLAIM_SCAN = 100


class AbandonedClaims:
    """The claiming walk of one group consumer; ``in_flight`` is what that consumer holds."""

    def __init__(self, transport: StreamTransport, what: str, in_flight: dict[str, int]) -> None:
        self.transport = transport
        self.what = what
        self._in_flight = in_flight
        self.cursor = "0-0"
        self.next_at = 0.0  # when the walk starts again, once it reached the end

    def due(self) -> bool:
        return self.cursor != "0-0" or time.monotonic() >= self.next_at

    def restart(self) -> None:
        """The group was recreated: its pending entries are new, walk them from the start."""
        self.cursor = "0-0"

    async def claim(self, lease_ms: int, count: int, interval: float) -> list[Entry]:
        """Claim entries idle for longer than the lease, walking the cursor to the end
        (across calls when there is not room for all of them at once). What it returns is
        not tracked yet."""
        while True:
            cursor, entries, deleted, own = await self.transport.recover(
                lease_ms, self.cursor, count, max(count, CLAIM_SCAN)
            )
            self.cursor = cursor
            if cursor == "0-0":
                self.next_at = time.monotonic() + interval
            if deleted:
                log.warning(
                    "%s: %d pending entr(y/ies) were deleted from the stream before they "
                    "were handled: %s",
                    self.what,
                    len(deleted),
                    ", ".join(deleted[:10]),
                )
            # Our own entries are never claimed from the group: one that idle is held here
            # (upkeep could not renew it, say during an outage) and is queued, running or
            # finished. Only one this consumer does not know of (a read whose reply was lost)
            # is taken back, as a new delivery.
            strays = [i for i in own if i not in self._in_flight]
            if strays:
                entries += await self.transport.retry(strays)
            fresh = [e for e in entries if e.id not in self._in_flight]
            if fresh:
                log.warning("%s: claimed %d entr(y/ies) of silent consumers", self.what, len(fresh))
                return fresh
            if cursor == "0-0":
                return []
