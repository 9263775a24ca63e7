"""Producing: enqueue, append and publish (and their ``_many`` forms) over the app's pool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from ._codec import (
    check_size,
    encode_body,
    encode_envelope,
    encode_fields,
    new_ids,
    with_headers,
)
from ._connection import Connection
from ._handlers import StreamHandler, StreamSpec
from ._middleware import Middleware, ProduceHook, check, produce_hook, producing
from ._registry import Registry
from ._transports import pubsub
from ._transports.queue import QueueTransport
from ._transports.stream import StreamTransport
from ._url import Target

TRANSPORT_CACHE = 256
T = TypeVar("T", QueueTransport, StreamTransport)
N = TypeVar("N", int, float)


class Producer(Registry):
    """Sends messages: one pooled connection per call in flight, at most ``max_connections``
    at once; bodies are encoded and bounded by ``max_body_bytes`` before anything is sent."""

    target: Target
    max_body_bytes: int
    max_connections: int
    pool_timeout: float
    _conn: Connection | None
    _wakeups: dict[str, asyncio.Event]
    # Producers' transports by key, for the current client (they hold script objects).
    _queues: dict[str, QueueTransport]
    _streams: dict[str, StreamTransport]
    # Streams' retention limits from their handlers: (handlers counted, maxlen, max_age).
    _limits: dict[str, tuple[int, int | None, float | None]]
    _middleware: list[Middleware]
    _produce_hooks: list[ProduceHook]

    def __init__(self) -> None:
        super().__init__()
        self._middleware = []
        self._produce_hooks = []
        self._conn = None
        self._wakeups = {}
        self._queues = {}
        self._streams = {}
        self._limits = {}

    @property
    def connection(self) -> Connection:
        if self._conn is None:
            self._conn = Connection(
                self.target,
                max_connections=self.max_connections,
                pool_timeout=self.pool_timeout,
                consumers=len(self.handlers),
            )
        return self._conn

    @property
    def middleware(self) -> Sequence[Middleware]:
        """Around every handler call, first = outermost (read when a consumer starts)."""
        return tuple(self._middleware)

    def add_middleware(self, middleware: Middleware) -> None:
        """Add ``middleware`` inside those already added (the first added is outermost); its
        ``on_produce(name, headers)``, if it has one, is called on everything produced.
        Consumers started before keep the middleware they started with."""
        check(middleware)
        hook = produce_hook(middleware)
        self._middleware.append(middleware)
        if hook is not None:
            self._produce_hooks.append(hook)

    def _wake(self, key: str) -> None:
        event = self._wakeups.get(key)
        if event is not None:
            event.set()

    async def publish(self, channel: str, body: Any, *, sharded: bool = False) -> int:
        """Publish ``body`` on ``channel``; returns how many subscribers received it."""
        return await self.publish_many(channel, [body], sharded=sharded)

    async def publish_many(
        self, channel: str, bodies: Iterable[Any], *, sharded: bool = False
    ) -> int:
        """Publish every body in one round trip; returns the receivers, summed."""
        payloads = [self._encode(channel, body) for body in bodies]
        if not payloads:
            return 0
        conn = self.connection
        # A published payload has no room for headers: what hooks add is not sent.
        with producing(self._produce_hooks, channel, "publish", len(payloads), None):
            return await conn.produce(
                f"publish to {channel!r}",
                lambda: pubsub.publish(conn, channel, payloads, sharded),
            )

    async def enqueue(
        self,
        queue: str,
        body: Any,
        *,
        delay: float = 0,
        at: datetime | None = None,
        headers: dict[str, str] | None = None,
        priority: int = 0,
        key: str | None = None,
        key_ttl: float = 0,
    ) -> str:
        """Put ``body`` on ``queue`` (after ``delay`` seconds, or at ``at``); returns its id.
        ``priority`` 1 to 9 runs before lower ones among waiting jobs (0, the plain list, is
        the default), through its retries and requeues too. With ``key``, nothing is added
        while a job enqueued with that key is queued, delayed or running (its id is returned
        instead), nor for ``key_ttl`` seconds after it finished."""
        with producing(self._produce_hooks, queue, "enqueue", 1, headers) as headers:
            if key is not None:
                return await self._enqueue_keyed(
                    queue,
                    body,
                    key,
                    key_ttl,
                    delay=delay,
                    at=at,
                    headers=headers,
                    priority=priority,
                )
            ids, push = self._pushing(
                queue, [body], delay=delay, at=at, headers=headers, priority=priority
            )
            await self.connection.produce(f"enqueue on {queue!r}", push)
        self._wake(queue)
        return ids[0]

    async def enqueue_many(
        self,
        queue: str,
        bodies: Iterable[Any],
        *,
        delay: float = 0,
        at: datetime | None = None,
        priority: int = 0,
    ) -> list[str]:
        """Enqueue every body in one round trip; returns their ids."""
        items = list(bodies)
        with producing(self._produce_hooks, queue, "enqueue", len(items), None) as headers:
            ids, push = self._pushing(
                queue, items, delay=delay, at=at, headers=headers, priority=priority
            )
            if not ids:
                return ids
            await self.connection.produce(f"enqueue on {queue!r}", push)
        self._wake(queue)
        return ids

    async def _enqueue_keyed(
        self,
        queue: str,
        body: Any,
        key: str,
        key_ttl: float,
        *,
        delay: float,
        at: datetime | None,
        headers: dict[str, str] | None,
        priority: int,
    ) -> str:
        if not isinstance(key, str) or not key:
            raise ValueError("key must be a non-empty str")
        if key_ttl < 0 or delay < 0:
            raise ValueError("key_ttl and delay must be >= 0")
        if type(priority) is not int or not 0 <= priority <= 9:
            raise ValueError(f"priority must be an int from 0 to 9, not {priority!r}")
        (msg_id,) = new_ids(1)
        item = encode_envelope(
            body,
            msg_id=msg_id,
            headers=headers,
            priority=priority,
            dedup=(key, int(key_ttl * 1000)),
        )
        check_size(item, self.max_body_bytes, queue)
        at_ms = None if at is None else int(at.timestamp() * 1000)
        delay_ms = int(delay * 1000) if delay > 0 and at is None else None
        held = await self.connection.produce(
            f"enqueue on {queue!r}",
            lambda: self._queue(queue).push_keyed(
                item, msg_id, key, priority=priority, delay_ms=delay_ms, at_ms=at_ms
            ),
        )
        if held == msg_id:
            self._wake(queue)
        return held

    def _pushing(
        self,
        queue: str,
        bodies: list[Any],
        *,
        delay: float,
        at: datetime | None,
        headers: dict[str, str] | None,
        priority: int = 0,
    ) -> tuple[list[str], Callable[[], Awaitable[None]]]:
        """The ids of ``bodies`` and the write that enqueues them, checked and encoded (the
        caller runs it through the producing pool, unless there are no bodies)."""
        if delay < 0:
            raise ValueError("delay must be >= 0")
        if type(priority) is not int or not 0 <= priority <= 9:
            raise ValueError(f"priority must be an int from 0 to 9, not {priority!r}")
        ids = new_ids(len(bodies))
        now = time.time()
        items = [
            encode_envelope(b, msg_id=i, headers=headers, now=now, priority=priority)
            for b, i in zip(bodies, ids, strict=True)
        ]
        for item in items:
            check_size(item, self.max_body_bytes, queue)
        if at is not None:
            at_ms = int(at.timestamp() * 1000)
            return ids, lambda: self._queue(queue).push_at(items, at_ms)
        if delay > 0:
            delay_ms = int(delay * 1000)
            return ids, lambda: self._queue(queue).push_delayed(items, delay_ms)
        return ids, lambda: self._queue(queue).push(items, priority)

    async def append(self, stream: str, body: Any, *, maxlen: int | None = None) -> str:
        """Append ``body`` to ``stream``; returns the entry id. Trims with ``MAXLEN ~``."""
        fields = encode_fields(body)
        with producing(self._produce_hooks, stream, "append", 1, None) as headers:
            if headers:
                fields = with_headers(fields, headers)
            check_size(fields, self.max_body_bytes, stream)
            limit, min_ms = self._retention(stream, maxlen)
            entry_id = await self.connection.produce(
                f"append to {stream!r}",
                lambda: self._stream(stream).append_one(fields, limit, min_ms),
            )
        self._wake(stream)
        return entry_id

    async def append_many(
        self, stream: str, bodies: Iterable[Any], *, maxlen: int | None = None
    ) -> list[str]:
        """Append every body in one round trip; returns the entry ids."""
        entries = [encode_fields(body) for body in bodies]
        if not entries:
            return []
        with producing(self._produce_hooks, stream, "append", len(entries), None) as headers:
            if headers:
                entries = [with_headers(fields, headers) for fields in entries]
            for fields in entries:
                check_size(fields, self.max_body_bytes, stream)
            limit, min_ms = self._retention(stream, maxlen)
            ids = await self.connection.produce(
                f"append to {stream!r}", lambda: self._append(stream, entries, limit, min_ms)
            )
        self._wake(stream)
        return ids

    async def _append(
        self,
        stream: str,
        entries: list[dict[str, str | bytes]],
        maxlen: int | None,
        min_ms: int | None,
    ) -> list[str]:
        """A batch in one script (all or nothing), a batch of one as one XADD."""
        transport = self._stream(stream)
        if len(entries) == 1:
            return [await transport.append_one(entries[0], maxlen, min_ms)]
        return await transport.append(entries, maxlen, min_ms)

    def _queue(self, queue: str) -> QueueTransport:
        return _cached(self._queues, queue, self.connection, QueueTransport.for_producer)

    def _stream(self, stream: str) -> StreamTransport:
        return _cached(self._streams, stream, self.connection, StreamTransport.for_producer)

    def _retention(self, stream: str, maxlen: int | None) -> tuple[int | None, int | None]:
        """The ``MAXLEN ~`` (``maxlen``, else the handlers') and the ``MINID ~`` in ms since
        the epoch (from the handlers' ``max_age``) that an append to ``stream`` trims with."""
        limits = self._limits.get(stream)
        if limits is None or limits[0] != len(self.handlers):
            if len(self._limits) >= TRANSPORT_CACHE:
                self._limits.clear()
            limits = self._limits[stream] = (
                len(self.handlers),
                self._widest(stream, lambda spec: spec.maxlen),
                self._widest(stream, lambda spec: spec.max_age),
            )
        _, widest_maxlen, max_age = limits
        min_ms = None if max_age is None else max(0, int((time.time() - max_age) * 1000))
        return (widest_maxlen if maxlen is None else maxlen), min_ms

    def _widest(self, stream: str, limit: Callable[[StreamSpec], N | None]) -> N | None:
        """The most generous retention limit that the handlers of ``stream`` set, or None."""
        limits = [
            value
            for h in self.handlers
            if isinstance(h, StreamHandler) and h.key == stream and (value := limit(h.spec))
        ]
        return max(limits) if limits else None

    def _encode(self, key: str, body: Any) -> bytes:
        data = encode_body(body)
        check_size(data, self.max_body_bytes, key)
        return data


def _cached(
    cache: dict[str, T], key: str, conn: Connection, make: Callable[[Connection, str], T]
) -> T:
    """A producer's transport for ``key`` on ``conn`` (transports hold script objects, made
    once); rebuilt after a reconnect, and the cache stays bounded for names made on the fly."""
    transport = cache.get(key)
    if transport is None or not transport.produces_on(conn):
        if len(cache) >= TRANSPORT_CACHE:
            cache.clear()
        transport = cache[key] = make(conn, key)
    return transport
