"""Running the handler on one message and deciding its outcome: ack, run again after a delay,
or dead-letter. The same decision for every model; the transports write it."""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ._backoff import Backoff
from ._codec import DecodeError
from ._exceptions import Cancelled, HandlerTimeout, RateLimited, Reject, Retry
from ._handlers import Handler
from ._limits import within
from ._message import Message
from ._middleware import Chain
from ._stats import Counters


class Delivered(Protocol):
    """What a consumer's job says of its delivery: its message id, and how many times it
    was delivered (0 where nothing counts them: an attempt of 1)."""

    @property
    def id(self) -> str: ...

    @property
    def deliveries(self) -> int: ...


J = TypeVar("J", bound=Delivered)
log = logging.getLogger("aioredq")


@dataclass(frozen=True, slots=True)
class Ack:
    value: Any = None  # what the handler returned (stored when the task keeps results)


@dataclass(frozen=True, slots=True)
class Again:
    delay: float


@dataclass(frozen=True, slots=True)
class Dead:
    error: str


@dataclass(frozen=True, slots=True)
class Throttle:
    """``RateLimited``: back where it was, its delivery uncounted; the queue or group held
    off for ``delay`` seconds."""

    delay: float


Decision = Ack | Again | Dead | Throttle
ACK = Ack()


async def _raising(exc: Exception) -> None:
    """A call that raises ``exc``: what building the handler's call raised goes the way of
    what the call raises."""
    raise exc


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Decider(abc.ABC, Generic[J]):
    """Runs the handler on a job and turns what it did into a ``Decision``.

    The pool's worker calls the steps: ``call`` returns the handler's call, the worker awaits
    it, then ``end`` or ``fail`` decides and hands the decision to the model's ``record``. The
    success path is a few plain calls: no coroutine of its own, no per-message bookkeeping
    beyond the counters."""

    handler: Handler
    counters: Counters
    # The handler's call through the app's middleware; None without middleware, and then
    # the handler is called directly (no extra await or frame per message).
    chain: Chain | None = None
    # Ids cancelled by ``app.cancel`` (id -> when the mark is forgotten, server ms).
    cancels: dict[str, float]
    # Deliveries a message gets: the last one that fails is dead-lettered.
    max_attempts: int = 1
    backoff: Backoff

    @abc.abstractmethod
    def cancel_running(self, msg_id: str) -> bool:
        """Interrupt the handler running message ``msg_id``, if any runs here."""

    @abc.abstractmethod
    def decode(self, job: J) -> Any:
        """The handler's body for ``job``; raise DecodeError when it cannot be had."""

    @abc.abstractmethod
    def message(self, job: J) -> Message:
        """The ``Message`` of ``job``: built only for a handler that asks for one."""

    def delivery(self, job: J) -> tuple[str, int, int, Backoff]:
        """``job``'s message id, attempt, attempt limit and backoff."""
        return job.id, job.deliveries or 1, self.max_attempts, self.backoff

    @abc.abstractmethod
    def record(self, job: J, decision: Decision) -> Awaitable[None] | None:
        """Act on the decision for ``job``; what it returns is awaited before the worker's
        next job (None on the usual paths)."""

    def call(self, job: J) -> Awaitable[Any] | None:
        """The handler's call on ``job``, or None when the job is decided without one (its
        attempts spent, its body unreadable, or cancelled): then it is recorded here."""
        self.counters.received += 1
        msg_id, attempt = job.id, job.deliveries or 1
        if attempt > self.max_attempts:
            return self.record(job, self._exceeded(msg_id, attempt, self.max_attempts))
        try:
            body = self.decode(job)
        except DecodeError as exc:
            return self.record(job, self._dead_letter(msg_id, attempt, str(exc)))
        if self.cancels and msg_id in self.cancels:
            return self.record(job, self._cancelled(msg_id, attempt))
        handler = self.handler
        chain = self.chain
        try:
            if chain is not None:
                call = chain(self.message(job), body)
            elif handler.message_param is None:
                call = handler.func(body)
            else:
                call = handler.func(body, **{handler.message_param: self.message(job)})
        except Exception as exc:  # raised before the call's first step: its outcome all the same
            return _raising(exc)
        timeout = handler.spec.timeout
        return call if timeout is None else within(call, timeout, handler.name)

    def end(self, job: J, value: Any, started: float) -> Awaitable[None] | None:
        """The call returned ``value``."""
        counters = self.counters
        if self.cancels:
            msg_id, attempt = job.id, job.deliveries or 1
            if msg_id in self.cancels:
                # Cancelled, and the handler swallowed it: cancelled all the same.
                return self.record(job, self._run_cancelled(msg_id, attempt, started))
        counters.latencies.append(time.perf_counter() - started)
        counters.succeeded += 1
        return self.record(job, ACK if value is None else Ack(value))

    def fail(self, job: J, exc: BaseException, started: float) -> Awaitable[None] | None:
        """The call raised ``exc``; a cancellation of the worker itself (shutdown) is raised
        again: it is not the handler's outcome."""
        msg_id, attempt, max_attempts, backoff = self.delivery(job)
        decision: Decision
        if isinstance(exc, asyncio.CancelledError):
            # The pool has taken back the cancel it made for ``app.cancel``: one still
            # pending is the worker's own (a stop).
            current = asyncio.current_task()
            if current is None or current.cancelling():
                raise exc
            if msg_id in self.cancels:
                decision = self._run_cancelled(msg_id, attempt, started)
            else:
                decision = self._run_failed(msg_id, attempt, max_attempts, started, backoff, exc)
        elif isinstance(exc, RateLimited):
            decision = self._run_throttled(msg_id, started, exc)
        elif isinstance(exc, (Reject, Cancelled)):
            decision = self._run_refused(msg_id, attempt, started, exc)
        else:
            decision = self._run_failed(msg_id, attempt, max_attempts, started, backoff, exc)
        return self.record(job, decision)

    # The outcomes other than success: off the hot path, one method each.
    def _run_throttled(self, msg_id: str, started: float, exc: RateLimited) -> Throttle:
        self.counters.latencies.append(time.perf_counter() - started)
        log.warning(
            "handler=%s key=%s id=%s rate limited: holding every worker off for %.2fs",
            self.handler.name,
            self.handler.key,
            msg_id,
            exc.delay,
        )
        return Throttle(exc.delay)

    def _run_refused(
        self, msg_id: str, attempt: int, started: float, exc: Reject | Cancelled
    ) -> Dead:
        """The handler refused the message for good (Reject, Cancelled): dead at once."""
        self.counters.latencies.append(time.perf_counter() - started)
        self.counters.failed += 1
        if isinstance(exc, Reject):
            return self._dead_letter(msg_id, attempt, f"Reject: {exc.reason}")
        self.counters.cancelled += 1
        return self._dead_letter(msg_id, attempt, error_text(exc))

    def _run_cancelled(self, msg_id: str, attempt: int, started: float) -> Dead:
        """Interrupted by ``app.cancel`` while it ran."""
        self.counters.latencies.append(time.perf_counter() - started)
        self.counters.failed += 1
        return self._cancelled(msg_id, attempt)

    def _run_failed(
        self,
        msg_id: str,
        attempt: int,
        max_attempts: int,
        started: float,
        backoff: Backoff,
        exc: BaseException,
    ) -> Decision:
        """A failed run: again after a delay, or dead once its attempts are spent."""
        if isinstance(exc, Retry):
            delay = backoff.delay(attempt) if exc.delay is None else exc.delay
            error = "Retry: the handler asked for a retry"
        elif isinstance(exc, asyncio.CancelledError):
            # A cancellation leaking out of the handler's own work: a failure like another.
            delay = backoff.delay(attempt)
            error = "CancelledError: the handler raised CancelledError"
        else:
            if isinstance(exc, HandlerTimeout):
                self.counters.timed_out += 1
            delay = backoff.delay(attempt)
            error = error_text(exc)
        self.counters.latencies.append(time.perf_counter() - started)
        self.counters.failed += 1
        if attempt >= max_attempts:
            return self._dead_letter(msg_id, attempt, error)
        return self._again(Again(delay), msg_id, attempt, max_attempts, error, exc)

    def _exceeded(self, msg_id: str, attempt: int, max_attempts: int) -> Dead:
        return self._dead_letter(
            msg_id,
            attempt,
            f"AttemptsExceeded: delivered {attempt} times without completing "
            f"(limit {max_attempts}); the consumer may have crashed while running it",
        )

    def _again(
        self,
        outcome: Again,
        msg_id: str,
        attempt: int,
        max_attempts: int,
        error: str,
        raised: BaseException,
    ) -> Again:
        self.counters.retried += 1
        log.warning(
            "handler=%s key=%s id=%s attempt=%d/%d failed: %s; retrying in %.2fs",
            self.handler.name,
            self.handler.key,
            msg_id,
            attempt,
            max_attempts,
            error,
            outcome.delay,
            exc_info=raised if log.isEnabledFor(logging.DEBUG) else None,
            extra=self._fields(msg_id, attempt, error),
        )
        return outcome

    def _cancelled(self, msg_id: str, attempt: int) -> Dead:
        self.counters.cancelled += 1
        return self._dead_letter(msg_id, attempt, f"Cancelled: job {msg_id} was cancelled")

    def _dead_letter(self, msg_id: str, attempt: int, error: str) -> Dead:
        self.counters.dead_lettered += 1
        log.error(
            "handler=%s key=%s id=%s attempt=%d dead-lettered: %s",
            self.handler.name,
            self.handler.key,
            msg_id,
            attempt,
            error,
            extra=self._fields(msg_id, attempt, error),
        )
        return Dead(error)

    def _fields(self, msg_id: str, attempt: int, error: str) -> dict[str, Any]:
        """A log record's fields for structured (JSON) logs."""
        handler = self.handler
        return {
            "handler": handler.name,
            "key": handler.key,
            "message_id": msg_id,
            "attempt": attempt,
            "error": error,
        }
