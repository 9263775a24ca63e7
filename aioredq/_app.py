"""App: the facade users hold. Its parts live in modules named by what they do:
``_registry`` (declaring handlers), ``_producer`` (enqueue, append, publish),
``_runner`` (start, stop, run, signals) and ``_observer`` (stats, lag)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from ssl import SSLContext
from typing import Any

from . import _observer
from ._connection import DEFAULT_MAX_CONNECTIONS, DEFAULT_POOL_TIMEOUT
from ._exceptions import ConfigurationError
from ._handlers import StreamHandler, TaskHandler
from ._keeping import result_json
from ._middleware import Middleware
from ._results import close_readers, wait_result
from ._runner import NOTHING_TO_RUN, Runner
from ._stats import Stats
from ._transports import admin, keys
from ._transports.cancel import cancel as cancel_job
from ._url import parse_url, resolve_url

__all__ = ["NOTHING_TO_RUN", "App"]

# ``result_type`` not given: the type declared by the queue's handler in this app, if any.
_DECLARED: Any = object()


class App(Runner):
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
    ``middleware``: ``async def m(message, call_next)`` around every handler call, the first
    outermost (see ``add_middleware``).
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
        middleware: Iterable[Middleware] = (),
    ) -> None:
        if shutdown_timeout < 0 or connect_timeout < 0 or pool_timeout < 0:
            raise ConfigurationError(
                "shutdown_timeout, connect_timeout and pool_timeout must be >= 0"
            )
        if max_connections < 1:
            raise ConfigurationError("max_connections must be >= 1")
        if max_body_bytes < 1:
            raise ConfigurationError("max_body_bytes must be >= 1")
        super().__init__()
        self._explicit_url = url is not None
        self.url = resolve_url(url)
        self.ssl = ssl
        self.target = parse_url(self.url, ssl)
        self.shutdown_timeout = float(shutdown_timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_body_bytes = max_body_bytes
        self.max_connections = max_connections
        self.pool_timeout = float(pool_timeout)
        for layer in middleware:
            self.add_middleware(layer)

    def __repr__(self) -> str:
        return f"<App {self.target.safe_url} handlers={[h.name for h in self.handlers]}>"

    def set_url(self, url: str) -> None:
        """Point the app at another Redis before it connects (the CLI's ``--url``)."""
        if self._conn is not None and self._conn.is_open:
            raise ConfigurationError("set_url() must be called before the app connects")
        self.target = parse_url(url, self.ssl)
        self.url = url
        self._conn = None

    async def lag(self, name: str) -> int | None:
        """Entries of a stream handler's group not yet delivered to it: XINFO GROUPS ``lag``,
        or, where Redis reports nil (after an XDEL), counted up to 100,000. None if the group
        does not exist yet."""
        try:
            handler = self.handler(name)
        except KeyError as exc:
            raise ConfigurationError(exc.args[0]) from None
        return await _observer.lag(self.connection, handler, name)

    def pause_key(self, name: str) -> str:
        """The Redis key whose presence pauses handler ``name`` (or the handler on queue or
        stream ``name``): ``{q}:paused`` for a queue, ``{s}:paused:<group>`` for a group."""
        try:
            handler = self.handler(name)
        except KeyError as exc:
            raise ConfigurationError(exc.args[0]) from None
        if isinstance(handler, TaskHandler):
            return keys.paused(handler.key)
        if isinstance(handler, StreamHandler):
            return keys.paused(handler.key, handler.spec.group)
        raise ConfigurationError(
            f"{handler.name!r} subscribes to pub/sub, which keeps nothing to resume from: "
            "only task and stream handlers can be paused"
        )

    async def pause(self, name: str) -> None:
        """Every worker stops starting the messages of handler ``name`` within about a
        second, until ``resume``: in-flight ones finish, nothing is lost. The state is a key
        in Redis (``pause_key``), so it outlives worker restarts, and Redis restarts with
        persistence. Handlers sharing the queue (or stream and group) pause together."""
        key = self.pause_key(name)
        conn = self.connection
        await conn.produce(f"pause {name!r}", lambda: admin.pause(conn, key))

    async def resume(self, name: str) -> None:
        """Undo ``pause``: workers start ``name``'s messages again within about a second."""
        key = self.pause_key(name)
        conn = self.connection
        await conn.produce(f"resume {name!r}", lambda: admin.resume(conn, key))

    async def is_paused(self, name: str) -> bool:
        key = self.pause_key(name)
        conn = self.connection
        return await conn.produce(f"read {key!r}", lambda: admin.is_paused(conn, key))

    async def result(
        self,
        queue: str,
        id: str,
        *,
        timeout: float | None = None,
        result_type: Any = _DECLARED,
    ) -> Any:
        """Wait for job ``id`` of ``queue`` to finish and return what its handler returned
        (validated against ``result_type``, by default the handler's ``result_type=``).
        Raises JobFailed when the job was dead-lettered, TimeoutError after ``timeout``
        seconds. Needs ``result_ttl=`` on the queue's handler (wherever it runs)."""
        if result_type is _DECLARED:
            handler = self._task_handler(queue)
            result_type = None if handler is None else handler.spec.result_type
        async with asyncio.timeout(timeout):
            return await wait_result(self, queue, id, result_type)

    async def request(
        self,
        queue: str,
        body: Any,
        *,
        timeout: float | None = None,
        result_type: Any = _DECLARED,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Enqueue ``body`` and wait for its result (``result``): request/reply over a task
        queue whose handler keeps results. ``timeout`` bounds the whole call."""
        handler = self._task_handler(queue)
        if handler is not None and handler.spec.result_ttl is None:
            raise ConfigurationError(
                f"handler {handler.name!r} keeps no results: give it result_ttl= to request"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        async with asyncio.timeout(timeout):
            job_id = await self.enqueue(queue, body, headers=headers)
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        return await self.result(queue, job_id, timeout=left, result_type=result_type)

    async def cancel(self, queue: str, id: str) -> bool:
        """Cancel job ``id`` of ``queue``: a job still waiting (queued or delayed) never runs;
        a running one is interrupted within about a second, wherever it runs. Either way it
        ends as a dead letter with error ``Cancelled`` (never retried). False when no waiting
        or running job has that id (unknown, or finished already)."""
        handler = self._task_handler(queue)
        ttl = None if handler is None else handler.spec.result_ttl
        error = f"Cancelled: job {id} was cancelled"
        conn = self.connection
        found = await conn.produce(
            f"cancel job {id!r} of {queue!r}",
            lambda: cancel_job(
                conn,
                queue,
                id,
                failed_at=datetime.now(UTC).isoformat(),
                result_ttl_ms=0 if ttl is None else max(int(ttl * 1000), 1),
                result=result_json("dead", error=error),
                error=error,
            ),
        )
        self._wake(keys.finished(queue))
        return found is not None

    async def aclose(self) -> None:
        """Stop (if running) and release the connections."""
        await close_readers(self)
        await super().aclose()

    def _task_handler(self, queue: str) -> TaskHandler | None:
        for handler in self.handlers:
            if isinstance(handler, TaskHandler) and handler.key == queue:
                return handler
        return None

    def stats(self) -> Stats:
        """A snapshot of every handler's counters and latency in this process."""
        return _observer.stats(self.handlers, self._counters)

    def dashboard(self, token: str | None = None, *, interval: float = 1.0) -> Any:
        """The dashboard as an ASGI app (``api.mount("/aioredq", app.dashboard())``):
        read-only without ``token``; figures read once per ``interval`` for every open page."""
        from ._dashboard import Dashboard

        return Dashboard(self, token=token, interval=interval)
