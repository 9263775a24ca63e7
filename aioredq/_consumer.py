"""What every consumer does, whatever the transport: fetch into a bounded pool, run the handler,
turn its outcome into ack / retry / dead letter, settle outcomes in batches, survive outages, and
stop gracefully."""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from ._backoff import Backoff
from ._codec import DecodeError
from ._connection import is_connection_error
from ._exceptions import Reject, Retry
from ._handlers import Handler
from ._message import Message
from ._outage import Outage
from ._pool import Pool
from ._stats import Counters

J = TypeVar("J")
log = logging.getLogger("aioredq")


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

    def __init__(
        self,
        handler: Handler,
        *,
        concurrency: int,
        capacity: int,
        batch: int,
        counters: Counters,
        url: str,
        outage: Outage | None = None,
    ) -> None:
        self.handler = handler
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
        self.outage = outage or Outage(log, what, url)
        self._fetch_trouble = Outage(log, what, url)
        self._settle_trouble = Outage(log, f"{what} acks", url)
        self._upkeep_trouble = Outage(log, f"{what} upkeep", url)

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
        self.stop.set()
        self.pool.stop_waiting()  # a fetch loop waiting for room sees the stop at once

    @property
    def idle(self) -> bool:
        """Nothing fetched and unfinished, nothing waiting to be written to Redis."""
        return self.pool.outstanding == 0 and not self.has_unsettled()

    async def run(
        self, shutdown_timeout: float, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        await self._retrying(self.start, refused_is_fatal=True)
        self.pool.start()
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._settle_loop)
                tg.start_soon(self._upkeep_loop)
                await self._fetch_loop()
                unstarted = self.pool.take_unstarted()
                await self._retrying(lambda: self.handback(unstarted), deadline=shutdown_timeout)
                interrupted = await self.pool.close(shutdown_timeout)
                tg.cancel_scope.cancel()
        except BaseException:
            self.pool.cancel()  # cancelled from outside: no worker is left behind
            raise
        await self._retrying(self._settle_all, deadline=5.0)
        await self._retrying(lambda: self.handback(interrupted), deadline=5.0)
        await self._retrying(self.leave, deadline=2.0)

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

    async def _retrying(
        self,
        call: Callable[[], Any],
        deadline: float | None = None,
        *,
        refused_is_fatal: bool = False,
    ) -> None:
        give_up = None if deadline is None else time.monotonic() + deadline
        while True:
            try:
                await call()
            except Exception as exc:
                if refused_is_fatal and not is_connection_error(exc):
                    raise
                if give_up is not None and time.monotonic() > give_up:
                    log.warning(
                        "%s: gave up (%s); the lease will recover the work",
                        self.handler.name,
                        error_text(exc),
                    )
                    return
                await self._failed(exc, self._settle_trouble)
            else:
                self._worked(self._settle_trouble)
                return

    async def _fetch_loop(self) -> None:
        while not self.stop.is_set():
            if self.pool.room < self.min_room:
                # Awaited directly (not through a task of its own): the pool lets this loop
                # run the moment there is room, so the next read overlaps the queued jobs.
                await self.pool.wait_room(self.min_room)
                continue
            try:
                jobs = await self.fetch(self.pool.room)
            except Exception as exc:
                await self._failed(exc, self._fetch_trouble, wake=self.stop)
                continue
            self._worked(self._fetch_trouble)
            if jobs:
                self.pool.put_many(jobs)

    async def _settle_all(self) -> None:
        while self.has_unsettled():
            await self.settle()

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
            try:
                await self.upkeep()
            except Exception as exc:
                await self._failed(exc, self._upkeep_trouble)
                continue
            self._worked(self._upkeep_trouble)
            await anyio.sleep(self.upkeep_interval)

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
