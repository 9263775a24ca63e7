"""App: the handler registry, the producing API and the lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import datetime
from ssl import SSLContext
from typing import Any, Literal, Protocol, TypeVar

import anyio
from anyio.abc import TaskStatus

from ._backoff import Backoff
from ._codec import check_size, encode_body, encode_envelope, encode_fields, new_ids
from ._connection import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_POOL_TIMEOUT,
    Connection,
    is_connection_error,
)
from ._exceptions import ConfigurationError, ConnectError
from ._handlers import (
    Handler,
    HandlerFunc,
    StreamHandler,
    StreamSpec,
    SubscribeHandler,
    TaskHandler,
    stream_spec,
    subscribe_spec,
    task_spec,
)
from ._outage import Outage
from ._startup import auth_error, connect_refused, first_error, refused_at_start
from ._stats import Counters, Stats
from ._stream import GroupConsumer, TailConsumer
from ._subscribe import Subscriber
from ._task import TaskConsumer
from ._transports import pubsub
from ._transports.queue import QueueTransport
from ._transports.stream import StreamTransport, group_lag
from ._url import parse_url, resolve_url

log = logging.getLogger("aioredq")
TRANSPORT_CACHE = 256
NOTHING_TO_RUN = (
    'declare one with @app.task("queue"), @app.stream("stream") or @app.subscribe("channel")'
)


class _Worker(Protocol):
    """What the app needs of a consumer: run it, ask it to stop, see whether it is idle."""

    async def run(self, shutdown_timeout: float, *, task_status: TaskStatus[None]) -> None: ...

    def request_stop(self) -> None: ...

    @property
    def idle(self) -> bool: ...


H = TypeVar("H", bound=Handler)
T = TypeVar("T", QueueTransport, StreamTransport)
N = TypeVar("N", int, float)
DEFAULT_BACKOFF = Backoff()


class App:
    """One app: declare handlers with ``@app.subscribe``, ``@app.task`` and ``@app.stream``,
    produce with ``publish`` / ``enqueue`` / ``append``, run with ``async with app`` or
    ``await app.run()``.

    ``url``: ``redis://``, ``rediss://``, ``unix://``, ``redis+cluster://``,
    ``redis+sentinel://host:port/master`` or ``memory://`` (in-process, for demos and tests);
    default ``$AIOREDQ_URL``, else ``redis://localhost:6379/0``. ``ssl``: an ``SSLContext``
    for TLS (instead of the URL's ``ssl_*`` parameters). A password is never printed.

    ``max_connections``: producing calls (``enqueue``, ``append``, ``publish``, ...) in flight
    at once, one connection each; more wait their turn, at most ``pool_timeout`` seconds,
    then raise ConnectError. Consumers have connections of their own.
    ``shutdown_timeout``: the bound on a whole stop, Redis up or down.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        shutdown_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        max_body_bytes: int = 512 * 1024,
        ssl: SSLContext | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
    ) -> None:
        if shutdown_timeout < 0 or connect_timeout < 0 or pool_timeout < 0:
            raise ConfigurationError(
                "shutdown_timeout, connect_timeout and pool_timeout must be >= 0"
            )
        if max_connections < 1:
            raise ConfigurationError("max_connections must be >= 1")
        if max_body_bytes < 1:
            raise ConfigurationError("max_body_bytes must be >= 1")
        self._explicit_url = url is not None
        self.url = resolve_url(url)
        self.ssl = ssl
        self.target = parse_url(self.url, ssl)
        self.shutdown_timeout = float(shutdown_timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_body_bytes = max_body_bytes
        self.max_connections = max_connections
        self.pool_timeout = float(pool_timeout)
        self.handlers: list[Handler] = []
        self._conn: Connection | None = None
        self._counters: dict[str, Counters] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._serving: asyncio.Task[None] | None = None
        self._workers: list[_Worker] = []
        # Producers' transports by key, for the current client (they hold script objects).
        self._queues: dict[str, QueueTransport] = {}
        self._streams: dict[str, StreamTransport] = {}

    def __repr__(self) -> str:
        return f"<App {self.target.safe_url} handlers={[h.name for h in self.handlers]}>"

    def set_url(self, url: str) -> None:
        """Point the app at another Redis before it connects (the CLI's ``--url``)."""
        if self._conn is not None and self._conn.is_open:
            raise ConfigurationError("set_url() must be called before the app connects")
        self.target = parse_url(url, self.ssl)
        self.url = url
        self._conn = None

    # declaring handlers --------------------------------------------------------------------
    def task(
        self,
        queue: str,
        *,
        concurrency: int = 16,
        max_attempts: int = 5,
        backoff: Backoff = DEFAULT_BACKOFF,
        lease: float = 30.0,
        batch: int = 100,
    ) -> Callable[[HandlerFunc], TaskHandler]:
        """Consume the reliable list queue ``queue`` (at-least-once)."""
        _named("task", "queue", queue)

        def decorate(func: HandlerFunc) -> TaskHandler:
            return self.add_task(
                func,
                queue,
                concurrency=concurrency,
                max_attempts=max_attempts,
                backoff=backoff,
                lease=lease,
                batch=batch,
            )

        return decorate

    def add_task(self, func: HandlerFunc, queue: str, **options: Any) -> TaskHandler:
        where = f"handler {getattr(func, '__name__', func)!r}"
        spec = task_spec(queue, where=where, **{**_TASK_DEFAULTS, **options})
        return self._add(TaskHandler(self, func, spec, spec.queue))

    def stream(
        self,
        stream: str,
        *,
        group: str | None = None,
        concurrency: int = 16,
        max_deliveries: int = 5,
        backoff: Backoff = DEFAULT_BACKOFF,
        lease: float = 30.0,
        maxlen: int | None = None,
        start: Literal["latest", "earliest"] = "latest",
        lag_warning: int = 1000,
        batch: int = 100,
        max_age: float | None = None,
    ) -> Callable[[HandlerFunc], StreamHandler]:
        """Consume the stream ``stream``: in consumer group ``group`` (at-least-once, acked,
        claimed, dead-lettered), or without a group as a tail of new entries.

        ``maxlen`` and ``max_age`` (seconds) bound what the stream keeps: every append made
        through the app trims with ``MAXLEN ~`` / ``MINID ~``."""
        _named("stream", "stream", stream)

        def decorate(func: HandlerFunc) -> StreamHandler:
            return self.add_stream(
                func,
                stream,
                group=group,
                concurrency=concurrency,
                max_deliveries=max_deliveries,
                backoff=backoff,
                lease=lease,
                maxlen=maxlen,
                start=start,
                lag_warning=lag_warning,
                batch=batch,
                max_age=max_age,
            )

        return decorate

    def add_stream(self, func: HandlerFunc, stream: str, **options: Any) -> StreamHandler:
        where = f"handler {getattr(func, '__name__', func)!r}"
        spec = stream_spec(stream, where=where, **{**_STREAM_DEFAULTS, **options})
        return self._add(StreamHandler(self, func, spec, spec.stream))

    def subscribe(
        self,
        *channels: str,
        pattern: str | None = None,
        sharded: bool = False,
        buffer: int = 1000,
        concurrency: int = 1,
    ) -> Callable[[HandlerFunc], SubscribeHandler]:
        """Receive what is published on ``channels`` (or ``pattern``); at-most-once."""
        if channels:
            _named("subscribe", "channel", channels[0])

        def decorate(func: HandlerFunc) -> SubscribeHandler:
            return self.add_subscribe(
                func,
                *channels,
                pattern=pattern,
                sharded=sharded,
                buffer=buffer,
                concurrency=concurrency,
            )

        return decorate

    def add_subscribe(self, func: HandlerFunc, *channels: str, **options: Any) -> SubscribeHandler:
        where = f"handler {getattr(func, '__name__', func)!r}"
        spec = subscribe_spec(channels, where=where, **{**_SUBSCRIBE_DEFAULTS, **options})
        key = spec.pattern if spec.pattern is not None else ",".join(spec.channels)
        return self._add(SubscribeHandler(self, func, spec, key))

    def _add(self, handler: H) -> H:
        if self._serving is not None:
            raise ConfigurationError("handlers must be declared before the app starts")
        for other in self.handlers:
            if other.name == handler.name:
                raise ConfigurationError(
                    f"two handlers are named {handler.name!r}; give the functions distinct names"
                )
            if {other.kind, handler.kind} == {"task", "stream"} and other.key == handler.key:
                raise ConfigurationError(
                    f"{handler.key!r} cannot be both a task queue (a list) and a stream: "
                    f"rename the queue of {other.name if other.kind == 'task' else handler.name!r}"
                )
            if (
                other.kind == handler.kind != "subscribe"
                and other.key == handler.key
                and getattr(other.spec, "group", None) == getattr(handler.spec, "group", None)
                and other.body_type != handler.body_type
            ):
                raise ConfigurationError(
                    f"handlers {other.name!r} and {handler.name!r} consume {handler.key!r} "
                    f"with different body types ({other.body_type!r} vs {handler.body_type!r})"
                )
        self.handlers.append(handler)
        self._counters[handler.name] = Counters()
        return handler

    def handler(self, name: str) -> Handler:
        """The handler named ``name`` (the function's name), or the first on key ``name``."""
        for handler in self.handlers:
            if handler.name == name:
                return handler
        for handler in self.handlers:
            if handler.key == name:
                return handler
        known = ", ".join(h.name for h in self.handlers) or "none"
        raise KeyError(f"no handler or key named {name!r} (handlers: {known})")

    # producing -----------------------------------------------------------------------------
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
        return await conn.produce(
            f"publish to {channel!r}",
            lambda: pubsub.publish(conn.command, channel, payloads, sharded),
        )

    async def enqueue(
        self,
        queue: str,
        body: Any,
        *,
        delay: float = 0,
        at: datetime | None = None,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Put ``body`` on ``queue`` (after ``delay`` seconds, or at ``at``); returns its id."""
        return (await self._enqueue(queue, [body], delay=delay, at=at, headers=headers))[0]

    async def enqueue_many(
        self, queue: str, bodies: Iterable[Any], *, delay: float = 0, at: datetime | None = None
    ) -> list[str]:
        """Enqueue every body in one round trip; returns their ids."""
        return await self._enqueue(queue, list(bodies), delay=delay, at=at, headers=None)

    async def _enqueue(
        self,
        queue: str,
        bodies: list[Any],
        *,
        delay: float,
        at: datetime | None,
        headers: dict[str, str] | None,
    ) -> list[str]:
        if delay < 0:
            raise ValueError("delay must be >= 0")
        ids = new_ids(len(bodies))
        now = time.time()
        items = [
            encode_envelope(b, msg_id=i, headers=headers, now=now)
            for b, i in zip(bodies, ids, strict=True)
        ]
        for item in items:
            check_size(item, self.max_body_bytes, queue)
        if not items:
            return []
        produce = self.connection.produce
        if at is not None:
            at_ms = int(at.timestamp() * 1000)
            await produce(f"enqueue on {queue!r}", lambda: self._queue(queue).push_at(items, at_ms))
        elif delay > 0:
            delay_ms = int(delay * 1000)
            await produce(
                f"enqueue on {queue!r}", lambda: self._queue(queue).push_delayed(items, delay_ms)
            )
        else:
            await produce(f"enqueue on {queue!r}", lambda: self._queue(queue).push(items))
        self._wake(queue)
        return ids

    async def append(self, stream: str, body: Any, *, maxlen: int | None = None) -> str:
        """Append ``body`` to ``stream``; returns the entry id. Trims with ``MAXLEN ~``."""
        return (await self.append_many(stream, [body], maxlen=maxlen))[0]

    async def append_many(
        self, stream: str, bodies: Iterable[Any], *, maxlen: int | None = None
    ) -> list[str]:
        """Append every body in one round trip; returns the entry ids."""
        entries = [encode_fields(body) for body in bodies]
        for fields in entries:
            check_size(fields, self.max_body_bytes, stream)
        if not entries:
            return []
        limit = maxlen if maxlen is not None else self._maxlen(stream)
        max_age = self._max_age(stream)
        min_ms = None if max_age is None else max(0, int((time.time() - max_age) * 1000))
        ids = await self.connection.produce(
            f"append to {stream!r}", lambda: self._stream(stream).append(entries, limit, min_ms)
        )
        self._wake(stream)
        return ids

    def _queue(self, queue: str) -> QueueTransport:
        return _cached(self._queues, queue, self.connection.command, QueueTransport)

    def _stream(self, stream: str) -> StreamTransport:
        return _cached(self._streams, stream, self.connection.command, StreamTransport)

    def _max_age(self, stream: str) -> float | None:
        return self._widest(stream, lambda spec: spec.max_age)

    def _maxlen(self, stream: str) -> int | None:
        return self._widest(stream, lambda spec: spec.maxlen)

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

    # observing -----------------------------------------------------------------------------
    async def lag(self, name: str) -> int | None:
        """Entries of a stream handler's group not yet delivered to it: XINFO GROUPS ``lag``,
        or, where Redis reports nil (after an XDEL), counted up to 100,000. None if the group
        does not exist yet."""
        try:
            handler = self.handler(name)
        except KeyError as exc:
            raise ConfigurationError(exc.args[0]) from None
        if not isinstance(handler, StreamHandler) or handler.spec.group is None:
            raise ConfigurationError(f"{name!r} is not a stream handler with a group")
        conn = self.connection
        return await conn.produce(
            f"lag of {name!r}",
            lambda: group_lag(StreamTransport(conn.command, handler.key, handler.spec.group)),
        )

    def stats(self) -> Stats:
        """A snapshot of every handler's counters and latency in this process."""
        return Stats(
            {h.name: self._counters[h.name].snapshot(h.name, h.kind, h.key) for h in self.handlers}
        )

    # lifecycle -----------------------------------------------------------------------------
    def _idle(self) -> bool:
        """True when no consumer of this process holds unfinished or unsettled messages."""
        return self._serving is not None and all(w.idle for w in self._workers)

    async def connect(self) -> None:
        """Check that Redis answers, retrying for ``connect_timeout`` seconds."""
        deadline = time.monotonic() + self.connect_timeout
        while True:
            try:
                await self.connection.ping()
                return
            except Exception as exc:
                # A wrong password or a bad URL value does not get better by waiting.
                auth = auth_error(exc, self.target)
                if auth is not None:
                    raise auth from exc
                if not is_connection_error(exc):
                    error = connect_refused(exc, self.target)
                    if error is exc:
                        raise
                    raise error from exc
                if time.monotonic() >= deadline:
                    raise ConnectError(
                        f"cannot reach Redis at {self.target.safe_url}: {exc}"
                    ) from exc
                await anyio.sleep(0.2)

    async def start(self, *, only: Sequence[str] | None = None) -> None:
        """Connect and start every consumer (or those named in ``only``) in the background.

        Returns once every consumer is ready. Raises ``ConnectError`` when Redis cannot be
        reached within ``connect_timeout``, and one ``ConfigurationError`` naming the handler
        and what to do when Redis refuses what a consumer needs (a wrong password, a key of
        another type, an ACL user without a command, key or channel)."""
        if self._serving is not None:
            raise RuntimeError("the app is already running")
        selected = self._select(only)
        await self.connect()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._serving = asyncio.get_running_loop().create_task(self._serve(selected, ready))
        # Return once every consumer is subscribed / has its group, so nothing produced
        # right after start() is missed; or raise what stopped it from getting there.
        await asyncio.wait({ready, self._serving}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            serving, self._serving = self._serving, None
            ready.cancel()
            try:
                await serving
            except BaseExceptionGroup as group:
                # One error that says which handler and what to do, not the task group's tree.
                error = first_error(group)
                raise error from error.__cause__

    def _select(self, only: Sequence[str] | None) -> list[Handler]:
        if not only:
            return list(self.handlers)
        selected = []
        for name in only:
            matches = [h for h in self.handlers if name in (h.name, h.key)]
            if not matches:
                known = ", ".join(h.name for h in self.handlers) or "none"
                raise ConfigurationError(f"no handler named {name!r} (handlers: {known})")
            selected += [h for h in matches if h not in selected]
        return selected

    async def _serve(self, handlers: list[Handler], ready: asyncio.Future[None]) -> None:
        conn = self.connection
        # Each handler is its own consumer (its own processing list, its own name in a group):
        # two handlers on one queue or group never take each other's messages for strays.
        base = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        workers: list[_Worker] = []
        served: list[list[Handler]] = []  # the handlers of each worker, for error messages
        subscribers: list[SubscribeHandler] = []
        self._wakeups = {}  # events of this run's loop (an app may run again on another loop)
        # One warning per outage for all consumers, not one per handler and loop.
        outage = Outage(log, "consumers", conn.target.safe_url)
        for h in handlers:
            # A local enqueue wakes the consumers of its key: on memory:// (fakeredis cannot
            # block) always, on Redis for delayed jobs due before the blocking read ends.
            local = not conn.can_block or isinstance(h, TaskHandler)
            wakeup = self._wakeups.setdefault(h.key, asyncio.Event()) if local else None
            counters = self._counters[h.name]
            common: dict[str, Any] = {
                "consumer": f"{base}:{h.name}",
                "counters": counters,
                "wakeup": wakeup,
                "outage": outage,
            }
            if isinstance(h, TaskHandler):
                c: Any = TaskConsumer(h, conn, **common)
            elif isinstance(h, StreamHandler):
                cls = GroupConsumer if h.spec.group is not None else TailConsumer
                c = cls(h, conn, **common)
            else:
                assert isinstance(h, SubscribeHandler)
                subscribers.append(h)
                continue
            workers.append(c)
            served.append([h])
        if subscribers:
            workers.append(Subscriber(subscribers, conn, self._counters))
            served.append(list(subscribers))
        self._workers = workers
        async with anyio.create_task_group() as tg:
            for worker, its_handlers in zip(workers, served, strict=True):
                await tg.start(self._run_worker, worker, its_handlers)
            ready.set_result(None)

    async def _run_worker(
        self, worker: _Worker, handlers: list[Handler], *, task_status: TaskStatus[None]
    ) -> None:
        """Run one consumer; a command Redis refuses (WRONGTYPE, NOPERM) ends it with one
        error that names its handlers and says what to do."""
        status = _Started(task_status)
        try:
            await worker.run(self.shutdown_timeout, task_status=status)
        except Exception as exc:
            error = refused_at_start(exc, handlers, self.target, started=status.done)
            if error is exc:
                raise
            raise error from exc

    async def stop(self) -> None:
        """Stop fetching, finish in-flight work within ``shutdown_timeout``, hand back the
        rest. Safe to call when not running."""
        serving, self._serving = self._serving, None
        if serving is None:
            return
        for worker in self._workers:
            worker.request_stop()
        with anyio.CancelScope(shield=True):
            try:
                try:
                    await asyncio.shield(serving)
                except asyncio.CancelledError:
                    await serving
            except BaseExceptionGroup as group:
                error = first_error(group)
                raise error from error.__cause__

    async def aclose(self) -> None:
        """Stop (if running) and release the connections."""
        await self.stop()
        if self._conn is not None:
            await self._conn.aclose()

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @contextlib.asynccontextmanager
    async def lifespan(self, asgi_app: object = None) -> AsyncIterator[None]:
        """An ASGI lifespan: ``FastAPI(lifespan=app.lifespan)``."""
        async with self:
            yield

    def dashboard(self, token: str | None = None, *, interval: float = 1.0) -> Any:
        """The dashboard as an ASGI app (``api.mount("/aioredq", app.dashboard())``):
        read-only without ``token``; figures read once per ``interval`` for every open page."""
        from ._dashboard import Dashboard

        return Dashboard(self, token=token, interval=interval)

    async def run(self, *, only: Sequence[str] | None = None) -> None:
        """Run until cancelled, SIGINT or SIGTERM, then stop gracefully. After the first
        signal the default handlers are restored, so a second one exits at once."""
        if not self._select(only):
            raise ConfigurationError(f"nothing to run: the app has no handlers; {NOTHING_TO_RUN}")
        await self.start(only=only)
        try:
            serving = self._serving
            assert serving is not None
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                received = asyncio.ensure_future(signals.__anext__())
                try:
                    await asyncio.wait({received, serving}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    received.cancel()
                if received.done() and not received.cancelled():
                    log.info(
                        "received %s: stopping (a second signal exits at once)",
                        signal.Signals(received.result()).name,
                    )
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        finally:
            await self.aclose()


class _Started:
    """Passes ``started()`` on to a task group and remembers that it was called."""

    def __init__(self, status: TaskStatus[None]) -> None:
        self._status = status
        self.done = False

    def started(self, value: None = None) -> None:
        self.done = True
        self._status.started(value)


def _named(decorator: str, what: str, name: object) -> None:
    """``@app.task`` without parentheses hands the function over as the queue name, and the
    function would silently be replaced by the inner decorator: say so at import time."""
    if callable(name):
        func = getattr(name, "__name__", "handler")
        raise ConfigurationError(
            f"@app.{decorator} needs the {what} name in parentheses: "
            f'write @app.{decorator}("{func}") above {func!r}, not @app.{decorator}'
        )


_TASK_DEFAULTS: dict[str, Any] = {
    "concurrency": 16,
    "max_attempts": 5,
    "backoff": DEFAULT_BACKOFF,
    "lease": 30.0,
    "batch": 100,
}


def _cached(cache: dict[str, T], key: str, client: Any, make: Callable[[Any, str], T]) -> T:
    """A producer's transport for ``key`` on ``client`` (transports hold script objects, made
    once); rebuilt after a reconnect, and the cache stays bounded for names made on the fly."""
    transport = cache.get(key)
    if transport is None or transport.client is not client:
        if len(cache) >= TRANSPORT_CACHE:
            cache.clear()
        transport = cache[key] = make(client, key)
    return transport


_STREAM_DEFAULTS: dict[str, Any] = {
    "group": None,
    "concurrency": 16,
    "max_deliveries": 5,
    "backoff": DEFAULT_BACKOFF,
    "lease": 30.0,
    "maxlen": None,
    "start": "latest",
    "lag_warning": 1000,
    "batch": 100,
    "max_age": None,
}
_SUBSCRIBE_DEFAULTS: dict[str, Any] = {
    "pattern": None,
    "sharded": False,
    "buffer": 1000,
    "concurrency": 1,
}
