"""What every consumer does, whatever the transport: fetch into a bounded pool, run the handler,
turn its outcome into ack / retry / dead letter, settle outcomes in batches, survive outages, and
stop gracefully."""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from typing import TypeVar

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from ._calls import Calls
from ._connection import BLOCKING_SOCKET_TIMEOUT, Connection
from ._decisions import Decider, Delivered
from ._handlers import Handler, StreamSpec, TaskSpec
from ._middleware import chain
from ._outage import Outage
from ._pool import Pool
from ._stats import Counters

J = TypeVar("J", bound=Delivered)
log = logging.getLogger("aioredq")
# How often a paused consumer asks Redis again whether it still is: a pause or a resume
# takes effect within this (plus a blocking read in progress).
PAUSE_POLL = 0.5
# A consumer whose lease went unrenewed for this part of it starts no new work.
PAUSE_AFTER = 0.5
# After ``shutdown_timeout``: the time left for the last acks, handback and deregistration
# (cancelled handlers get half of it to end).
FINAL_WRITES = 0.5


class Consumer(Calls, Decider[J]):
    """One handler's consumer. Subclasses speak to their transport; this class runs the loops."""

    upkeep_interval: float = 1.0
    # Set by consumers whose messages are leased: their upkeep renews the lease and says so
    # with ``renewed()``.
    lease: float | None = None
    lease_ms: int = 0

    def __init__(
        self,
        handler: Handler,
        conn: Connection,
        *,
        counters: Counters,
        outage: Outage | None = None,
    ) -> None:
        spec = handler.spec
        assert isinstance(spec, (TaskSpec, StreamSpec))
        concurrency, batch = spec.concurrency, spec.batch
        # Room for two batches beside the running jobs: one read arrives while the previous
        # batch is still being worked through.
        capacity = concurrency + 2 * batch
        url = conn.target.safe_url
        self.handler = handler
        self.chain = chain(handler.app.middleware, handler)
        self.conn = conn
        self.counters = counters
        self.cancels = {}
        self.backoff = spec.backoff
        self.pool: Pool[J] = Pool(
            concurrency,
            capacity,
            self.call,
            self._process_failed,
            end=self.end,
            fail=self.fail,
        )
        # Fetch when a whole batch fits: a busy consumer then reads full batches (fewer
        # round trips) while the batch already queued keeps every slot busy.
        self.min_room = max(1, min(batch, self.pool.capacity - concurrency))
        self.stop = asyncio.Event()
        self._settle_needed = asyncio.Event()
        # The same, read for each outcome: the settle loop is woken once per batch.
        self.settle_asked = False
        what = f"{handler.kind} handler {handler.name!r} ({handler.key})"
        # Redis unreachable: one warning for the whole app (the outage is shared). Commands
        # refused (WRONGTYPE, OOM, a bug): one error for this consumer, and a pause.
        self.what = what
        self.outage = outage or Outage(log, what, url)
        self._fetch_trouble = Outage(log, what, url)
        self._settle_trouble = Outage(log, f"{what} acks", url)
        self._upkeep_trouble = Outage(log, f"{what} upkeep", url)
        self._renewal = asyncio.Event()
        self._renewed_at = time.monotonic()
        self._upkeep_began = self._renewed_at
        self._stop_at: float | None = None
        self._shutdown_timeout = 0.0
        self._fetching: asyncio.Timeout | None = None

    def _leased(self, lease: float) -> None:
        """Hold messages under a lease of ``lease`` seconds, renewed by upkeep well within it."""
        self.lease = lease
        self.lease_ms = int(lease * 1000)
        self.upkeep_interval = min(lease / 3, 1.0)

    # to implement ------------------------------------------------------------------------
    @abc.abstractmethod
    async def fetch(self, room: int) -> list[J]:
        """Take up to ``room`` jobs, waiting briefly (about a second) when there are none."""

    def cancel_running(self, msg_id: str) -> bool:
        return self.pool.cancel_job(lambda job: job.id == msg_id)

    @abc.abstractmethod
    def has_unsettled(self) -> bool: ...

    @abc.abstractmethod
    async def settle(self) -> None:
        """Write recorded outcomes to Redis (one round trip); raise on failure, losing nothing."""

    async def upkeep(self) -> None:
        """Periodic work: heartbeats, recovery of dead consumers' work, lag checks."""

    async def start(self) -> None:
        """Prepare Redis before the first fetch (e.g. create a consumer group)."""

    def settle_soon(self) -> None:
        """Outcomes wait to be written: wake the settle loop (which batches them)."""
        if not self.settle_asked:
            self.settle_asked = True
            self._settle_needed.set()

    def refusing(self) -> bool:
        """Whether Redis refuses some outcomes now (they wait here to be tried again)."""
        return False

    async def handback(self, jobs: list[J], started: bool) -> None:
        """Give back jobs that were fetched but not finished, so others take them at once:
        unstarted ones with their delivery uncounted, ``started`` ones (interrupted) with it
        counted, as after a crash."""

    @abc.abstractmethod
    def retry_soon(self, job: J) -> None:
        """Schedule ``job`` to run again at once, its delivery counted, through the normal
        retry path (no call to Redis here, so this cannot fail)."""

    async def leave(self) -> None:
        """Deregister after a clean stop."""

    # shared machinery --------------------------------------------------------------------
    def request_stop(self) -> None:
        if self._stop_at is None:
            self._stop_at = time.monotonic()
            if self._fetching is not None:  # a fetch in flight ends by the deadline at the latest
                when = asyncio.get_running_loop().time() + self._shutdown_timeout
                self._fetching.reschedule(min(when, self._fetching.when() or when))
        self.stop.set()
        self.pool.stop_waiting()  # a fetch loop waiting for room sees the stop at once

    def renewed(self) -> None:
        """Called by ``upkeep`` once the lease is renewed: it runs from the upkeep's start."""
        self._renewed_at = self._upkeep_began
        self._renewal.set()

    @property
    def idle(self) -> bool:
        """Nothing fetched and unfinished, nothing waiting to be written to Redis."""
        return self.pool.outstanding == 0 and not self.has_unsettled()

    async def run(
        self, shutdown_timeout: float, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        """Consume until ``request_stop``; then the whole stop takes at most
        ``shutdown_timeout`` (+ ``FINAL_WRITES``) seconds, Redis up or down."""
        self._shutdown_timeout = shutdown_timeout
        await self._retrying(self.start, refused_is_fatal=True)
        self.pool.start()
        self._renewed_at = time.monotonic()
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._settle_loop)
                tg.start_soon(self._upkeep_loop)
                if self.lease is not None:
                    tg.start_soon(self._lease_loop, self.lease)
                await self._fetch_loop()
                deadline = (self._stop_at or time.monotonic()) + shutdown_timeout
                unstarted = self.pool.take_unstarted()
                await self._retrying(
                    lambda: self.handback(unstarted, False),
                    until=deadline,
                    what=f"handing back {len(unstarted)} unstarted message(s)",
                )
                interrupted = await self.pool.close(
                    max(0.0, deadline - time.monotonic()), grace=FINAL_WRITES / 2
                )
                tg.cancel_scope.cancel()
        except BaseException:
            self.pool.cancel()  # cancelled from outside: no worker is left behind
            raise
        if self.pool.stragglers:
            log.warning(
                "%s: %d handler call(s) did not end when cancelled at shutdown",
                self.what,
                self.pool.stragglers,
            )
        end = deadline + FINAL_WRITES
        await self._retrying(
            self._settle_all, until=end, what="writing outcomes (acks, retries, dead letters)"
        )
        await self._retrying(
            lambda: self.handback(interrupted, True),
            until=end,
            what=f"handing back {len(interrupted)} interrupted message(s)",
        )
        # Interrupted past their call: only a throttled job waits there, on its way back
        # uncounted.
        throttled = self.pool.interrupted_after
        await self._retrying(
            lambda: self.handback(throttled, False),
            until=end,
            what=f"handing back {len(throttled)} throttled message(s)",
        )
        await self._retrying(self.leave, until=end, what="deregistering")

    async def _fetch_loop(self) -> None:
        while not self.stop.is_set():
            if self.pool.paused:
                await self._resumed_or_stopped()
                continue
            if self.pool.room < self.min_room:
                # Awaited directly (not through a task of its own): the pool lets this loop
                # run the moment there is room, so the next read overlaps the queued jobs.
                await self.pool.wait_room(self.min_room)
                continue
            try:
                jobs = await self._fetch_bounded()
            except Exception as exc:
                await self._failed(exc, self._fetch_trouble, wake=self.stop)
                continue
            self._worked(self._fetch_trouble)
            if jobs:
                self.pool.put_many(jobs)

    async def _fetch_bounded(self) -> list[J]:
        # A fetch on a connection that went silent ends after the blocking client's socket
        # timeout, or at the shutdown deadline once a stop is requested.
        loop = asyncio.get_running_loop()
        when = loop.time() + BLOCKING_SOCKET_TIMEOUT
        if self._stop_at is not None:
            when = min(when, loop.time() + self._shutdown_timeout)
        async with asyncio.timeout_at(when) as self._fetching:
            try:
                return await self.fetch(self.pool.room)
            finally:
                self._fetching = None

    async def _resumed_or_stopped(self) -> None:
        waits = {
            asyncio.ensure_future(self.pool.wait_resumed()),
            asyncio.ensure_future(self.stop.wait()),
        }
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    async def _settle_all(self) -> None:
        while self.has_unsettled():
            await self._bounded(self.settle, self.call_deadline)

    async def _settle_loop(self) -> None:
        while True:
            await self._settle_needed.wait()
            self._settle_needed.clear()
            self.settle_asked = False
            try:
                await self._settle_all()
            except Exception as exc:
                self.pool.writes_ok(False)
                self.settle_soon()
                await self._failed(exc, self._settle_trouble)
            else:
                self.pool.writes_ok(not self.refusing())
                self._worked(self._settle_trouble)

    async def _upkeep_loop(self) -> None:
        while True:
            self._upkeep_began = time.monotonic()
            try:
                await self._bounded(self.upkeep, self.call_deadline)
            except Exception as exc:
                # Try again within the usual interval however long the trouble lasts: the
                # lease is at stake, and renewing it is what resumes a paused consumer.
                with anyio.move_on_after(self.upkeep_interval):
                    await self._failed(exc, self._upkeep_trouble)
                continue
            self._worked(self._upkeep_trouble)
            await anyio.sleep(self.upkeep_interval)

    async def _lease_loop(self, lease: float) -> None:
        """Start no new work while the lease goes unrenewed: past the lease the others take
        over this consumer's work, and must not find it started here as well."""
        limit = lease * PAUSE_AFTER
        while True:
            late = self._renewed_at + limit - time.monotonic()
            if late > 0:
                await anyio.sleep(late)
                continue
            self._renewal.clear()
            self.pool.pause()
            since = self._renewed_at
            log.warning(
                "%s: lease not renewed for %.1fs (lease %gs): starting no new work until it is",
                self.what,
                time.monotonic() - since,
                lease,
            )
            await self._renewal.wait()
            self.pool.resume()
            log.warning(
                "%s: lease renewed after %.1fs: starting work again",
                self.what,
                time.monotonic() - since,
            )

    async def _process_failed(self, job: J) -> None:
        """A step raised: not the handler (its errors are outcomes), aioredq itself
        failed on this job. Run it again with its delivery counted, so a job that keeps
        failing this way ends in the dead letters instead of looping."""
        log.exception("%s: internal error while processing a message", self.handler.name)
        self.retry_soon(job)
