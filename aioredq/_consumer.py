"""What every consumer does, whatever the transport: fetch into a bounded pool, run the handler,
turn its outcome into ack / retry / dead letter, settle outcomes in batches, survive outages, and
stop gracefully."""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from ._backoff import Backoff
from ._codec import DecodeError
from ._connection import BLOCKING_SOCKET_TIMEOUT, Connection, is_connection_error
from ._exceptions import ConnectError, Reject, Retry
from ._handlers import Handler, StreamSpec, TaskSpec
from ._message import Message
from ._outage import Outage
from ._pool import Pool
from ._stats import Counters

J = TypeVar("J")
log = logging.getLogger("aioredq")
# The longest a heartbeat or a settle may wait for its reply (shorter for short leases): then
# its connection is dropped and the call tried again on another, long before the lease lapses.
MAX_CALL_DEADLINE = 5.0
# A consumer whose lease went unrenewed for this part of it starts no new work.
PAUSE_AFTER = 0.5
# After ``shutdown_timeout``: the time left for the last acks, handback and deregistration
# (cancelled handlers get half of it to end).
FINAL_WRITES = 0.5
FIRST_TRY = 0.1


class NoReply(ConnectError):
    """A call to Redis got no reply by its deadline (a silent connection, or time ran out)."""


@dataclass(frozen=True, slots=True)
class Ack:
    pass


@dataclass(frozen=True, slots=True)
class Again:
    delay: float


@dataclass(frozen=True, slots=True)
class Dead:
    error: str


Decision = Ack | Again | Dead
ACK = Ack()


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Consumer(abc.ABC, Generic[J]):
    """One handler's consumer. Subclasses speak to their transport; this class runs the loops."""

    upkeep_interval: float = 1.0
    # Set by consumers whose messages are leased: their upkeep renews the lease and says so
    # with ``renewed()``.
    lease: float | None = None

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
        capacity = concurrency + batch
        url = conn.target.safe_url
        self.handler = handler
        self.conn = conn
        self.counters = counters
        self.pool: Pool[J] = Pool(concurrency, capacity, self.process, self._process_failed)
        # Fetch when a good part of a batch fits: a busy consumer then reads in large batches
        # (fewer round trips) while the jobs already queued keep every slot busy.
        self.min_room = max(1, min(batch, self.pool.capacity - concurrency) // 2)
        self.stop = asyncio.Event()
        self._settle_needed = asyncio.Event()
        # Outcomes wait to be written: wake the settle loop (which batches them).
        self.settle_soon: Callable[[], None] = self._settle_needed.set
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

    # to implement ------------------------------------------------------------------------
    @abc.abstractmethod
    async def fetch(self, room: int) -> list[J]:
        """Take up to ``room`` jobs, waiting briefly (about a second) when there are none."""

    @abc.abstractmethod
    async def process(self, job: J) -> None:
        """Run the handler on ``job`` and record its outcome for ``settle``."""

    @abc.abstractmethod
    def has_unsettled(self) -> bool: ...

    @abc.abstractmethod
    async def settle(self) -> None:
        """Write recorded outcomes to Redis (one round trip); raise on failure, losing nothing."""

    async def upkeep(self) -> None:
        """Periodic work: heartbeats, recovery of dead consumers' work, lag checks."""

    async def start(self) -> None:
        """Prepare Redis before the first fetch (e.g. create a consumer group)."""

    async def handback(self, jobs: list[J]) -> None:
        """Give back jobs that were fetched but not finished, so others take them at once."""

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

    @property
    def call_deadline(self) -> float:
        """How long a heartbeat or a settle waits for Redis before it is tried again."""
        if self.lease is None:
            return MAX_CALL_DEADLINE
        return min(max(self.lease / 3, 0.1), MAX_CALL_DEADLINE)

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
                    lambda: self.handback(unstarted),
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
            lambda: self.handback(interrupted),
            until=end,
            what=f"handing back {len(interrupted)} interrupted message(s)",
        )
        await self._retrying(self.leave, until=end, what="deregistering")

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
            try:
                await self._settle_all()
            except Exception as exc:
                self._settle_needed.set()
                await self._failed(exc, self._settle_trouble)
            else:
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
        """``process`` raised: not the handler (its errors are outcomes), aioredq itself
        failed on this job. Run it again with its delivery counted, so a job that keeps
        failing this way ends in the dead letters instead of looping."""
        log.exception("%s: internal error while processing a message", self.handler.name)
        self.retry_soon(job)

    # running the handler -----------------------------------------------------------------
    @abc.abstractmethod
    def decode(self, job: J) -> Any:
        """The handler's body for ``job``; raise DecodeError when it cannot be had."""

    @abc.abstractmethod
    def message(self, job: J) -> Message:
        """The ``Message`` of ``job``: built only for a handler that asks for one."""

    async def execute(
        self, job: J, msg_id: str, attempt: int, max_attempts: int, backoff: Backoff
    ) -> Decision:
        """Decode, run the handler and decide: ack, run again after a delay, or dead-letter."""
        counters = self.counters
        counters.received += 1
        if attempt > max_attempts:
            return self._dead_letter(
                msg_id,
                attempt,
                f"AttemptsExceeded: delivered {attempt} times without completing "
                f"(limit {max_attempts}); the consumer may have crashed while running it",
            )
        try:
            body = self.decode(job)
        except DecodeError as exc:
            return self._dead_letter(msg_id, attempt, str(exc))
        handler = self.handler
        started = time.perf_counter()
        try:
            if handler.message_param is None:
                await handler.func(body)
            else:
                await handler.func(body, **{handler.message_param: self.message(job)})
        except Retry as exc:
            outcome: Decision = Again(backoff.delay(attempt) if exc.delay is None else exc.delay)
            error = "Retry: the handler asked for a retry"
            raised: BaseException = exc
        except Reject as exc:
            counters.latencies.append(time.perf_counter() - started)
            counters.failed += 1
            return self._dead_letter(msg_id, attempt, f"Reject: {exc.reason}")
        except Exception as exc:
            outcome = Again(backoff.delay(attempt))
            error = error_text(exc)
            raised = exc
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is None or current.cancelling():
                raise  # we are being cancelled (shutdown): not the handler's outcome
            # A cancellation leaking out of the handler's own work: a failure like another.
            outcome = Again(backoff.delay(attempt))
            error = "CancelledError: the handler raised CancelledError"
            raised = exc
        else:
            counters.latencies.append(time.perf_counter() - started)
            counters.succeeded += 1
            return ACK
        counters.latencies.append(time.perf_counter() - started)
        counters.failed += 1
        if attempt >= max_attempts:
            return self._dead_letter(msg_id, attempt, error)
        counters.retried += 1
        assert isinstance(outcome, Again)
        log.warning(
            "handler=%s key=%s id=%s attempt=%d/%d failed: %s; retrying in %.2fs",
            handler.name,
            handler.key,
            msg_id,
            attempt,
            max_attempts,
            error,
            outcome.delay,
            exc_info=raised if log.isEnabledFor(logging.DEBUG) else None,
        )
        return outcome

    def _dead_letter(self, msg_id: str, attempt: int, error: str) -> Dead:
        self.counters.dead_lettered += 1
        log.error(
            "handler=%s key=%s id=%s attempt=%d dead-lettered: %s",
            self.handler.name,
            self.handler.key,
            msg_id,
            attempt,
            error,
        )
        return Dead(error)
