"""Cancels of a task queue, as its consumer sees them: the marks ``app.cancel`` adds, read
since the last look, interrupt the jobs they name that run here (a job fetched but not
started is refused when its turn comes)."""

from __future__ import annotations

import logging
from typing import Any

from ._connection import Connection, is_connection_error
from ._decisions import Decider
from ._transports.cancel import KEEP_MS, new_cancels

log = logging.getLogger("aioredq")


class CancelWatch:
    """The newest mark read, and whether reading them is in trouble (logged once a spell)."""

    def __init__(self, conn: Connection, queue: str) -> None:
        self.conn = conn
        self.queue = queue
        self._seen = 0.0  # the newest cancel mark read (its score)
        self._trouble = False

    async def check(self, decider: Decider[Any]) -> None:
        """Note the new marks in ``decider.cancels`` and interrupt what they name."""
        try:
            found = await new_cancels(self.conn, self.queue, self._seen)
        except Exception as exc:
            if is_connection_error(exc):
                raise
            if not self._trouble:
                self._trouble = True
                log.error(
                    "queue %r: cannot read cancels: %s: %s", self.queue, type(exc).__name__, exc
                )
            return
        self._trouble = False
        cancels = decider.cancels
        for job_id, forget_at in found:
            if job_id in cancels:
                continue
            cancels[job_id] = forget_at
            self._seen = max(self._seen, forget_at)
            if decider.cancel_running(job_id):
                log.warning("queue %r: job %s cancelled while running", self.queue, job_id)
        stale = [i for i, at in cancels.items() if at < self._seen - KEEP_MS]
        for job_id in stale:
            del cancels[job_id]
