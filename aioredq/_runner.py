"""Running: connect, start the consumers, stop them within the bound, signals and lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol, Self

import anyio
from anyio.abc import TaskStatus

from ._connection import is_connection_error
from ._exceptions import ConfigurationError, ConnectError
from ._handlers import Handler, StreamHandler, SubscribeHandler, TaskHandler
from ._outage import Outage
from ._producer import Producer
from ._schedule import Scheduler, schedule_of
from ._startup import auth_error, connect_refused, first_error, refused_at_start
from ._stream import GroupConsumer, TailConsumer
from ._subscribe import Subscriber
from ._task import TaskConsumer

log = logging.getLogger("aioredq")
NOTHING_TO_RUN = (
    'declare one with @app.task("queue"), @app.stream("stream") or @app.subscribe("channel")'
)


class _Worker(Protocol):
    """What the app needs of a consumer: run it, ask it to stop, see whether it is idle."""

    async def run(self, shutdown_timeout: float, *, task_status: TaskStatus[None]) -> None: ...

    def request_stop(self) -> None: ...

    @property
    def idle(self) -> bool: ...


class Runner(Producer):
    """The lifecycle: one consumer per handler (one for all subscribers), started together,
    stopped within ``shutdown_timeout``."""

    shutdown_timeout: float
    connect_timeout: float
    _workers: list[_Worker]

    def __init__(self) -> None:
        super().__init__()
        self._workers = []

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
                schedule = schedule_of(h)
                if schedule is not None:  # its ticks, fired by every app that runs it
                    workers.append(Scheduler(h, conn, schedule))
                    served.append([h])
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

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @contextlib.asynccontextmanager
    async def lifespan(self, asgi_app: object = None) -> AsyncIterator[None]:
        """An ASGI lifespan: ``FastAPI(lifespan=app.lifespan)``."""
        async with self:
            yield

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
