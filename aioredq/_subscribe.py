"""The app's subscriber: one connection reads every subscription at full speed into a bounded
buffer per handler; each handler drains its buffer with its own concurrency.

Pub/sub is at-most-once and Redis does not wait for slow readers: once a subscriber's output
buffer passes ``client-output-buffer-limit pubsub`` the server disconnects it and everything in
flight is lost. So the reader never waits for a handler. When a handler's buffer is full the
oldest buffered message is dropped (for live updates the freshest state matters most), counted
in ``app.stats()`` and logged at most every ``DROP_LOG_EVERY`` seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.lowlevel
from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from ._codec import DecodeError
from ._connection import Connection, is_connection_error
from ._exceptions import HandlerTimeout
from ._handlers import SubscribeHandler
from ._limits import within
from ._message import Message
from ._middleware import chain
from ._outage import Outage
from ._pool import Pool
from ._stats import Counters
from ._transports.pubsub import (
    MESSAGE,
    PMESSAGE,
    SMESSAGE,
    Frame,
    Source,
    Subscription,
    text,
    wire,
)

log = logging.getLogger("aioredq")
DROP_LOG_EVERY = 5.0
# At a stop, how long handler calls cancelled at ``shutdown_timeout`` get to end, so that a
# handler that ignores its cancellation does not hold the stop up.
CANCEL_GRACE = 0.25
# Reads that find data already buffered do not suspend, so under a steady stream the reader
# keeps the event loop to itself, which is what keeps the socket drained. It hands the loop
# back (1) when a handler's buffer is full while one of its workers is idle, i.e. the handler
# keeps up but has not been scheduled, and (2) after holding it for ``HOLD_LOOP`` seconds,
# checked every ``CHECK_EVERY`` messages, so timers, other consumers and stop requests run.
HOLD_LOOP = 0.02
CHECK_EVERY = 64
# How often a cluster subscriber looks for shard connections that redis-py opened or closed.
RESCAN_SOURCES = 1.0


@dataclass(slots=True)
class _Sink:
    handler: SubscribeHandler
    counters: Counters
    buffer: int
    pool: Pool[Frame] = field(init=False)
    active: int = 0  # handler calls running now
    dropped_since_log: int = 0
    next_drop_log: float = 0.0
    max_size: int = 0
    oversized_since_log: int = 0
    next_oversized_log: float = 0.0


class Subscriber:
    """Reads the app's subscriptions on one connection and feeds each handler's buffer."""

    def __init__(
        self, handlers: list[SubscribeHandler], conn: Connection, counters: dict[str, Counters]
    ) -> None:
        self.conn = conn
        self._scope = anyio.CancelScope()
        self._outage = Outage(log, "subscriber", conn.target.safe_url)
        self._channels: dict[str, None] = {}
        self._patterns: dict[str, None] = {}
        self._shard_channels: dict[str, None] = {}
        # kind -> subscribed name (channel or pattern, as bytes) -> sinks; a lookup per frame
        # with no decoding and no allocation.
        self._routes: dict[bytes, dict[bytes, list[_Sink]]] = {
            MESSAGE: {},
            PMESSAGE: {},
            SMESSAGE: {},
        }
        self._sinks: list[_Sink] = []
        for handler in handlers:
            spec = handler.spec
            sink = _Sink(handler, counters[handler.name], spec.buffer)
            sink.max_size = handler.app.max_body_bytes
            sink.pool = Pool(spec.concurrency, spec.concurrency + spec.buffer, _runner(sink))
            self._sinks.append(sink)
            if spec.pattern is not None:
                self._route(PMESSAGE, spec.pattern, sink, self._patterns)
            for channel in spec.channels:
                if spec.sharded:
                    self._route(SMESSAGE, channel, sink, self._shard_channels)
                else:
                    self._route(MESSAGE, channel, sink, self._channels)

    def _route(self, kind: bytes, name: str, sink: _Sink, names: dict[str, None]) -> None:
        names[name] = None
        self._routes[kind].setdefault(wire(name), []).append(sink)

    def request_stop(self) -> None:
        """Stop reading now; buffered messages not yet started are discarded."""
        self._scope.cancel()

    @property
    def idle(self) -> bool:
        return all(sink.pool.outstanding == 0 for sink in self._sinks)

    async def run(
        self, shutdown_timeout: float, *, task_status: TaskStatus[None] = TASK_STATUS_IGNORED
    ) -> None:
        for sink in self._sinks:
            sink.pool.start()
        subscription = Subscription(self.conn)
        started = False
        try:
            with self._scope:
                await self._subscribe(subscription)
                task_status.started()
                started = True
                if subscription.sharded_per_node:
                    await self._read_every_node(subscription)
                else:
                    [source] = subscription.sources()
                    await self._read(source, self._outage, subscription)
        finally:
            with anyio.CancelScope(shield=True):
                await subscription.aclose()
                await self._drain(shutdown_timeout)
        if not started:
            task_status.started()

    async def _subscribe(self, subscription: Subscription) -> None:
        while True:
            try:
                await subscription.subscribe(
                    list(self._channels), list(self._patterns), list(self._shard_channels)
                )
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                await self._outage.failed(exc)
            else:
                self._outage.ok()
                return

    async def _read_every_node(self, subscription: Subscription) -> None:
        """One reader per connection; in a cluster, shard channels move with their slots."""
        readers: dict[Source, anyio.CancelScope] = {}

        async def read(source: Source, scope: anyio.CancelScope) -> None:
            with scope:
                outage = Outage(log, source.name, self.conn.target.safe_url)
                await self._read(source, outage, subscription)

        async with anyio.create_task_group() as tg:
            while True:
                sources = subscription.sources()
                for source in [s for s in readers if s not in sources]:
                    readers.pop(source).cancel()
                for source in sources:
                    if source not in readers:
                        readers[source] = anyio.CancelScope()
                        tg.start_soon(read, source, readers[source])
                await anyio.sleep(RESCAN_SOURCES)

    async def _read(self, source: Source, outage: Outage, subscription: Subscription) -> None:
        routes = self._routes
        checkpoint = anyio.lowlevel.checkpoint
        clock = time.monotonic
        unchecked = CHECK_EVERY
        hand_back_at = clock() + HOLD_LOOP
        while True:
            try:
                frame = source.take() or await source.read()
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                await outage.failed(exc)
                try:
                    await subscription.recover(source)
                except Exception as again:
                    if not is_connection_error(again):
                        raise
                continue
            if outage.active:
                outage.ok()
            if frame is None:
                continue
            by_name = routes.get(frame[0])
            if by_name is not None:
                for sink in by_name.get(frame[1], ()):
                    sink.counters.received += 1
                    if len(frame[-1]) > sink.max_size:
                        self._oversized(sink, frame)  # from another program: not buffered
                        continue
                    pool = sink.pool
                    if pool.outstanding - sink.active >= sink.buffer and sink.active < pool.size:
                        await checkpoint()  # let the idle workers empty the buffer
                    if pool.offer(frame, sink.buffer) is not None:
                        self._dropped(sink)
            unchecked -= 1
            if not unchecked:
                unchecked = CHECK_EVERY
                if clock() >= hand_back_at:
                    await checkpoint()
                    hand_back_at = clock() + HOLD_LOOP

    def _dropped(self, sink: _Sink) -> None:
        sink.counters.dropped += 1
        sink.dropped_since_log += 1
        now = time.monotonic()
        if now >= sink.next_drop_log:
            self._log_drops(sink)
            sink.next_drop_log = now + DROP_LOG_EVERY

    def _oversized(self, sink: _Sink, frame: Frame) -> None:
        """A payload over ``max_body_bytes`` (the app refuses to publish one): counted as a
        failure and logged (at most every ``DROP_LOG_EVERY`` seconds, with the count)."""
        sink.counters.failed += 1
        sink.oversized_since_log += 1
        now = time.monotonic()
        if now >= sink.next_oversized_log:
            sink.next_oversized_log = now + DROP_LOG_EVERY
            log.error(
                "handler=%s channel=%s: %d message(s) not handled: MessageTooLarge: "
                "payload is %d bytes, over max_body_bytes=%d",
                sink.handler.name,
                text(frame[-2]),
                sink.oversized_since_log,
                len(frame[-1]),
                sink.max_size,
            )
            sink.oversized_since_log = 0

    def _log_drops(self, sink: _Sink) -> None:
        log.warning(
            "handler=%s: buffer of %d full, dropped the %d oldest message(s) since the last "
            "report; the handler is slower than its publishers (raise concurrency or buffer)",
            sink.handler.name,
            sink.buffer,
            sink.dropped_since_log,
        )
        sink.dropped_since_log = 0

    async def _drain(self, shutdown_timeout: float) -> None:
        """Discard what no handler started (at-most-once: nothing to hand back), then give
        running handler calls ``shutdown_timeout`` seconds to finish."""
        for sink in self._sinks:
            unstarted = len(sink.pool.take_unstarted())
            if unstarted:
                sink.counters.dropped += unstarted
                log.info(
                    "handler=%s: stopping, discarded %d buffered message(s) not yet started",
                    sink.handler.name,
                    unstarted,
                )
            if sink.dropped_since_log:
                self._log_drops(sink)
        deadline = time.monotonic() + shutdown_timeout
        for sink in self._sinks:
            interrupted = await sink.pool.close(
                max(0.0, deadline - time.monotonic()), grace=CANCEL_GRACE
            )
            if interrupted:
                log.warning(
                    "handler=%s: %d call(s) still running after shutdown_timeout=%.1fs were "
                    "cancelled",
                    sink.handler.name,
                    len(interrupted),
                    shutdown_timeout,
                )


def _runner(sink: _Sink) -> Callable[[Frame], Awaitable[None]]:
    """The job that runs the sink's handler on one received frame (at most once)."""
    handler = sink.handler
    counters = sink.counters
    decode = handler.codec.decode_text
    func = handler.func
    message_param = handler.message_param
    through = chain(handler.app.middleware, handler)
    timeout = handler.spec.timeout
    latencies = counters.latencies
    perf_counter = time.perf_counter

    async def run(frame: Frame) -> None:
        sink.active += 1
        try:
            try:
                body = decode(frame[-1])
            except DecodeError as exc:
                counters.failed += 1
                log.error(
                    "handler=%s channel=%s: message not handled: %s",
                    handler.name,
                    text(frame[-2]),
                    exc,
                )
                return
            started = perf_counter()
            try:
                if through is not None:
                    call = through(_message(frame), body)
                elif message_param is None:
                    call = func(body)
                else:
                    call = func(body, **{message_param: _message(frame)})
                await (call if timeout is None else within(call, timeout, handler.name))
            except Exception as exc:
                _failed(sink, frame, exc)
            else:
                counters.succeeded += 1
            latencies.append(perf_counter() - started)
        finally:
            sink.active -= 1

    return run


def _failed(sink: _Sink, frame: Frame, exc: Exception) -> None:
    """Count and log a handler's failure on one frame (it is not run again)."""
    counters = sink.counters
    counters.failed += 1
    channel = text(frame[-2])
    if isinstance(exc, HandlerTimeout):
        counters.timed_out += 1
    name = sink.handler.name
    log.error(
        "handler=%s channel=%s failed: %s: %s",
        name,
        channel,
        type(exc).__name__,
        exc,
        exc_info=exc if log.isEnabledFor(logging.DEBUG) else None,
        extra={
            "handler": name,
            "key": channel,
            "attempt": 1,
            "error": f"{type(exc).__name__}: {exc}",
        },
    )


def _message(frame: Frame) -> Message:
    pattern = text(frame[1]) if frame[0] == PMESSAGE else None
    channel = text(frame[-2])
    return Message(
        id="",
        kind="subscribe",
        name=pattern or channel,
        channel=channel,
        attempt=1,
        raw=frame[-1],
        pattern=pattern,
    )
