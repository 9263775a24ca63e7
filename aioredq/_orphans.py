"""Orphaned processing lists of a task queue: lists whose consumer is not registered at all
(its registration deleted, or lost to a crash before it was written), found a SCAN step at a
time and moved back to the queue once they have stayed so for longer than the lease."""

from __future__ import annotations

import logging
import time

from ._transports.queue import QueueTransport

log = logging.getLogger("aioredq")
# Orphaned processing lists are looked for with one SCAN step (this many keys) at most this
# often; a list is recovered once seen unregistered for longer than the lease (a live
# consumer whose registration was deleted registers again within a second).
ORPHAN_SCAN_EVERY = 5.0
ORPHAN_SCAN_COUNT = 500


class OrphanScan:
    """The scan of one task consumer: its cursor and the lists it suspects, bounded."""

    def __init__(self, transport: QueueTransport, lease: float) -> None:
        self.transport = transport
        self.lease = lease
        self._scan_cursor = 0
        self._scan_at = 0.0
        self._suspects: dict[str, float] = {}  # unregistered processing lists: first seen

    async def step(self) -> None:
        """One SCAN step, now and then: processing lists whose consumer is not registered
        at all (its registration deleted, or lost to a crash before it was written) are
        recovered once they have stayed so for longer than the lease."""
        now = time.monotonic()
        if now < self._scan_at:
            return
        self._scan_at = now + min(ORPHAN_SCAN_EVERY, self.lease)
        try:
            cursor, names = await self.transport.scan_processing(
                self._scan_cursor, ORPHAN_SCAN_COUNT
            )
        except Exception:
            self._scan_cursor = 0  # e.g. the slot moved: its cursor means nothing elsewhere
            raise
        self._scan_cursor = cursor
        names = [n for n in names if n != self.transport.consumer]
        loose = set(await self.transport.unregistered(names))
        for name in names:
            if name not in loose:
                self._suspects.pop(name, None)
        ripe = [n for n in loose if now - self._suspects.setdefault(n, now) > self.lease]
        if len(self._suspects) > 10 * ORPHAN_SCAN_COUNT:  # bounded, whatever the keyspace
            self._suspects = {n: t for n, t in self._suspects.items() if n in loose}
        if not ripe:
            return
        moved = await self.transport.recover_lists(ripe)
        for name in ripe:
            self._suspects.pop(name, None)
        if moved:
            log.warning(
                "queue %r: moved %d item(s) of %d orphaned processing list(s) (no registered "
                "consumer) back to the queue",
                self.transport.queue,
                moved,
                len(ripe),
            )
