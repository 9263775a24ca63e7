"""Running the handler on one message and deciding its outcome: ack, run again after a delay,
or dead-letter. The same decision for every model; the transports write it."""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ._backoff import Backoff
from ._codec import DecodeError
from ._exceptions import Cancelled, HandlerTimeout, Reject, Retry
from ._handlers import Handler
from ._limits import within
from ._message import Message
from ._stats import Counters

J = TypeVar("J")
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


Decision = Ack | Again | Dead
ACK = Ack()


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Decider(abc.ABC, Generic[J]):
    """Runs the handler on a job and turns what it did into a ``Decision``."""

    handler: Handler
    counters: Counters

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
                call = handler.func(body)
            else:
                call = handler.func(body, **{handler.message_param: self.message(job)})
            value = await within(call, handler.spec.timeout, handler.name)
        except Retry as exc:
            outcome = Again(backoff.delay(attempt) if exc.delay is None else exc.delay)
            error = "Retry: the handler asked for a retry"
            raised: BaseException = exc
        except Reject as exc:
            counters.latencies.append(time.perf_counter() - started)
            counters.failed += 1
            return self._dead_letter(msg_id, attempt, f"Reject: {exc.reason}")
        except Cancelled as exc:
            counters.latencies.append(time.perf_counter() - started)
            counters.failed += 1
            counters.cancelled += 1
            return self._dead_letter(msg_id, attempt, error_text(exc))
        except Exception as exc:
            if isinstance(exc, HandlerTimeout):
                counters.timed_out += 1
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
            return ACK if value is None else Ack(value)
        counters.latencies.append(time.perf_counter() - started)
        counters.failed += 1
        if attempt >= max_attempts:
            return self._dead_letter(msg_id, attempt, error)
        return self._again(outcome, msg_id, attempt, max_attempts, error, raised)

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
