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
        counters: Counters,
        url: str,
    ) -> None:
        self.handler = handler
        self.counters = counters
        self.pool: Pool[J] = Pool(concurrency, capacity, self._process_safely)
        self.stop = asyncio.Event()
        self._settle_needed = asyncio.Event()
        what = f"{handler.kind} handler {handler.name!r} ({handler.key})"
        self.fetch_outage = Outage(log, what, url)
        self.settle_outage = Outage(log, f"{what} acks", url)
        self.upkeep_outage = Outage(log, f"{what} upkeep", url)

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

    async def leave(self) -> None:
        """Deregister after a clean stop."""

    # shared machinery --------------------------------------------------------------------
    def request_stop(self) -> None:
        self.stop.set()

    @property
    def idle(self) -> bool:
        """Nothing fetched and unfinished, nothing waiting to be written to Redis."""
        return self.pool.outstanding == 0 and not self.has_unsettled()

    def settle_soon(self) -> None:
        self._settle_needed.set()

    async def run(
        self, shutdown_timeout: float, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        await self._retrying(self.start, self.fetch_outage)
        self.pool.start()
        task_status.started()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._settle_loop)
            tg.start_soon(self._upkeep_loop)
            await self._fetch_loop()
            await self._retrying(
                lambda: self.handback(self.pool.take_unstarted()),
                self.settle_outage,
                deadline=shutdown_timeout,
            )
            interrupted = await self.pool.close(shutdown_timeout)
            tg.cancel_scope.cancel()
        await self._retrying(self._settle_all, self.settle_outage, deadline=5.0)
        await self._retrying(lambda: self.handback(interrupted), self.settle_outage, deadline=5.0)
        await self._retrying(self.leave, self.settle_outage, deadline=2.0)

    async def _retrying(
        self, call: Callable[[], Any], outage: Outage, deadline: float | None = None
    ) -> None:
        give_up = None if deadline is None else time.monotonic() + deadline
        while True:
            try:
                await call()
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                if give_up is not None and time.monotonic() > give_up:
                    log.warning(
                        "%s: gave up (%s); the lease will recover the work",
                        self.handler.name,
                        error_text(exc),
                    )
                    return
                await outage.failed(exc)
            else:
                outage.ok()
                return

    async def _fetch_loop(self) -> None:
        waiter = asyncio.ensure_future(self.stop.wait())
        try:
            while not self.stop.is_set():
                if self.pool.room <= 0:
                    room_wait = asyncio.ensure_future(self.pool.wait_room())
                    await asyncio.wait({room_wait, waiter}, return_when=asyncio.FIRST_COMPLETED)
                    room_wait.cancel()
                    continue
                try:
                    jobs = await self.fetch(self.pool.room)
                except Exception as exc:
                    if not is_connection_error(exc):
                        raise
                    await self.fetch_outage.failed(exc)
                    continue
                self.fetch_outage.ok()
                if jobs:
                    self.pool.put_many(jobs)
        finally:
            waiter.cancel()

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
                if not is_connection_error(exc):
                    raise
                self._settle_needed.set()
                await self.settle_outage.failed(exc)
            else:
                self.settle_outage.ok()

    async def _upkeep_loop(self) -> None:
        while True:
            try:
                await self.upkeep()
            except Exception as exc:
                if not is_connection_error(exc):
                    log.exception("%s: upkeep failed", self.handler.name)
                else:
                    await self.upkeep_outage.failed(exc)
                    continue
            else:
                self.upkeep_outage.ok()
            await anyio.sleep(self.upkeep_interval)

    async def _process_safely(self, job: J) -> None:
        try:
            await self.process(job)
        except Exception:
            log.exception("%s: internal error while processing a message", self.handler.name)

    # running the handler -----------------------------------------------------------------
    async def execute(
        self,
        decode: Callable[[], Any],
        message: Message,
        max_attempts: int,
        backoff: Backoff,
    ) -> Decision:
        """Decode, run the handler and decide: ack, run again after a delay, or dead-letter."""
        counters = self.counters
        counters.received += 1
        attempt = message.attempt
        if attempt > max_attempts:
            return self._dead_letter(
                message,
                f"AttemptsExceeded: delivered {attempt} times without completing "
                f"(limit {max_attempts}); the consumer may have crashed while running it",
            )
        try:
            body = decode()
        except DecodeError as exc:
            return self._dead_letter(message, str(exc))
        started = time.perf_counter()
        try:
            await self.handler.invoke(body, message)
        except Retry as exc:
            outcome: Decision = Again(backoff.delay(attempt) if exc.delay is None else exc.delay)
            error = "Retry: the handler asked for a retry"
        except Reject as exc:
            counters.latencies.append(time.perf_counter() - started)
            counters.failed += 1
            return self._dead_letter(message, f"Reject: {exc.reason}")
        except Exception as exc:
            outcome = Again(backoff.delay(attempt))
            error = error_text(exc)
        else:
            counters.latencies.append(time.perf_counter() - started)
            counters.succeeded += 1
            return ACK
        counters.latencies.append(time.perf_counter() - started)
        counters.failed += 1
        if attempt >= max_attempts:
            return self._dead_letter(message, error)
        counters.retried += 1
        assert isinstance(outcome, Again)
        log.warning(
            "handler=%s key=%s id=%s attempt=%d/%d failed: %s; retrying in %.2fs",
            self.handler.name,
            message.name,
            message.id,
            attempt,
            max_attempts,
            error,
            outcome.delay,
            exc_info=log.isEnabledFor(logging.DEBUG),
        )
        return outcome

    def _dead_letter(self, message: Message, error: str) -> Dead:
        self.counters.dead_lettered += 1
        log.error(
            "handler=%s key=%s id=%s attempt=%d dead-lettered: %s",
            self.handler.name,
            message.name,
            message.id,
            message.attempt,
            error,
        )
        return Dead(error)
