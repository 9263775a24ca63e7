"""The blocking wait of a task consumer whose queue is empty: for a push, a nudge (a retry
was written that is due sooner than the wait would last), a local enqueue, or stop.

A blocking read that outlives one wait is kept and awaited the next time rather than
cancelled: cancelling redis-py inside a blocking call is unreliable, and the read itself
moves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib

from ._connection import BLOCK_SECONDS, Connection
from ._transports.queue import Fetched, QueueTransport

MEMORY_POLL = 0.05


def block_time(fetched: Fetched) -> float:
    """How long to wait after an empty fetch: until the earliest delayed item is due."""
    if fetched.next_due_ms is None:
        return BLOCK_SECONDS
    return min(BLOCK_SECONDS, max((fetched.next_due_ms - fetched.now_ms) / 1000, 0.01))


class BlockingWait:
    def __init__(
        self,
        conn: Connection,
        transport: QueueTransport,
        stop: asyncio.Event,
        wakeup: asyncio.Event | None,
    ) -> None:
        self.conn = conn
        self.transport = transport
        self.stop = stop
        self.wakeup = wakeup
        self.nudge = asyncio.Event()  # a retry was written: re-size the blocking wait
        self._waiter: asyncio.Task[None] | None = None

    async def block(self, timeout: float) -> None:
        """Wait for a push (or a nudge, or stop) at most ``timeout`` seconds."""
        if not self.conn.can_block:
            # fakeredis cannot block: wake on a local enqueue, else poll.
            assert self.wakeup is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), min(timeout, MEMORY_POLL))
            return
        if self._waiter is None:
            self._waiter = asyncio.ensure_future(self.transport.wait(timeout))
            self._waiter.add_done_callback(_consume_result)
        events = [self.nudge, self.stop]
        if self.wakeup is not None:  # a local enqueue, e.g. of a job due sooner
            events.append(self.wakeup)
        wakers = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(
                {self._waiter, *wakers}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waker in wakers:
                waker.cancel()
        if self._waiter.done():
            waiter, self._waiter = self._waiter, None
            waiter.result()  # a connection error goes to the fetch loop's outage handling

    async def end(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.cancel()
            await asyncio.wait({waiter}, timeout=BLOCK_SECONDS + 1)


def _consume_result(task: asyncio.Future[None]) -> None:
    # A wait that ends while nobody awaits it must not log "exception never retrieved".
    if not task.cancelled():
        task.exception()
