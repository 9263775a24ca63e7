"""The app's subscriber: one connection reads every subscription at full speed into a bounded
buffer per handler; each handler drains its buffer with its own concurrency."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from ._codec import DecodeError
from ._connection import Connection, is_connection_error
from ._handlers import SubscribeHandler
from ._message import Message
from ._outage import Outage
from ._pool import Pool
from ._stats import Counters
from ._transports.pubsub import Received, Subscription

log = logging.getLogger("aioredq")
RECEIVE_TIMEOUT = 1.0
DROP_LOG_EVERY = 5.0


@dataclass(slots=True)
class _Sink:
    handler: SubscribeHandler
    counters: Counters
    pool: Pool[Received]
    dropped_since_log: int = 0
    next_drop_log: float = 0.0


class Subscriber:
    def __init__(
        self, handlers: list[SubscribeHandler], conn: Connection, counters: dict[str, Counters]
    ) -> None:
        self.conn = conn
        self.stopping = False
        self._outage = Outage(log, "subscriber", conn.target.safe_url)
        self._by_channel: dict[str, list[_Sink]] = defaultdict(list)
        self._by_pattern: dict[str, list[_Sink]] = defaultdict(list)
        self._by_shard: dict[str, list[_Sink]] = defaultdict(list)
        self._sinks: list[_Sink] = []
        for handler in handlers:
            spec = handler.spec
            runner = _runner(handler, counters[handler.name])
            pool = Pool(spec.concurrency, spec.concurrency + spec.buffer, runner)
            sink = _Sink(handler, counters[handler.name], pool)
            self._sinks.append(sink)
            if spec.pattern is not None:
                self._by_pattern[spec.pattern].append(sink)
            for channel in spec.channels:
                (self._by_shard if spec.sharded else self._by_channel)[channel].append(sink)

    def request_stop(self) -> None:
        self.stopping = True

    @property
    def idle(self) -> bool:
        return all(sink.pool.outstanding == 0 for sink in self._sinks)

    async def run(
        self, shutdown_timeout: float, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        for sink in self._sinks:
            sink.pool.start()
        subscription = Subscription(self.conn.command)
        try:
            await self._subscribe(subscription)
            task_status.started()
            while not self.stopping:
                try:
                    received = await subscription.receive(RECEIVE_TIMEOUT)
                except Exception as exc:
                    if not is_connection_error(exc):
                        raise
                    await self._outage.failed(exc)
                    continue
                self._outage.ok()
                if received is not None:
                    self._dispatch(received)
        finally:
            await subscription.aclose()
            for sink in self._sinks:
                await sink.pool.close(shutdown_timeout)

    async def _subscribe(self, subscription: Subscription) -> None:
        while True:
            try:
                await subscription.subscribe(
                    list(self._by_channel), list(self._by_pattern), list(self._by_shard)
                )
                return
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                await self._outage.failed(exc)

    def _dispatch(self, received: Received) -> None:
        if received.kind == "pmessage":
            sinks = self._by_pattern.get(received.pattern or "", ())
        elif received.kind == "smessage":
            sinks = self._by_shard.get(received.channel, ())
        else:
            sinks = self._by_channel.get(received.channel, ())
        for sink in sinks:
            if sink.pool.offer(received, sink.handler.spec.buffer) is not None:
                self._dropped(sink)

    def _dropped(self, sink: _Sink) -> None:
        sink.counters.dropped += 1
        sink.dropped_since_log += 1
        now = time.monotonic()
        if now >= sink.next_drop_log:
            log.warning(
                "handler=%s: buffer of %d full, dropped %d oldest message(s); the handler is "
                "slower than its publishers (raise concurrency or buffer)",
                sink.handler.name,
                sink.handler.spec.buffer,
                sink.dropped_since_log,
            )
            sink.dropped_since_log = 0
            sink.next_drop_log = now + DROP_LOG_EVERY


def _runner(handler: SubscribeHandler, counters: Counters) -> Callable[[Received], Awaitable[None]]:
    """The job that runs ``handler`` on one received message (at most once)."""

    async def run(received: Received) -> None:
        counters.received += 1
        message = Message(
            id="",
            kind="subscribe",
            name=received.pattern or received.channel,
            channel=received.channel,
            attempt=1,
            raw=received.data,
            pattern=received.pattern,
        )
        try:
            body = handler.codec.decode_text(received.data)
        except DecodeError as exc:
            counters.failed += 1
            log.error(
                "handler=%s channel=%s: message not handled: %s",
                handler.name,
                received.channel,
                exc,
            )
            return
        started = time.perf_counter()
        try:
            await handler.invoke(body, message)
        except Exception as exc:
            counters.failed += 1
            log.error(
                "handler=%s channel=%s failed: %s: %s",
                handler.name,
                received.channel,
                type(exc).__name__,
                exc,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
        else:
            counters.succeeded += 1
        counters.latencies.append(time.perf_counter() - started)

    return run
