"""App: the facade users hold. Its parts live in modules named by what they do:
``_registry`` (declaring handlers), ``_producer`` (enqueue, append, publish),
``_runner`` (start, stop, run, signals) and ``_observer`` (stats, lag)."""

from __future__ import annotations

from collections.abc import Iterable
from ssl import SSLContext
from typing import Any

from . import _observer
from ._connection import DEFAULT_MAX_CONNECTIONS, DEFAULT_POOL_TIMEOUT
from ._exceptions import ConfigurationError
from ._handlers import StreamHandler, TaskHandler
from ._middleware import Middleware
from ._runner import NOTHING_TO_RUN, Runner
from ._stats import Stats
from ._transports import keys
from ._url import parse_url, resolve_url

__all__ = ["NOTHING_TO_RUN", "App"]


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
        await conn.produce(f"pause {name!r}", lambda: conn.command.set(key, "1"))

    async def resume(self, name: str) -> None:
        """Undo ``pause``: workers start ``name``'s messages again within about a second."""
        key = self.pause_key(name)
        conn = self.connection
        await conn.produce(f"resume {name!r}", lambda: conn.command.delete(key))

    async def is_paused(self, name: str) -> bool:
        key = self.pause_key(name)
        conn = self.connection
        return bool(await conn.produce(f"read {key!r}", lambda: conn.command.exists(key)))

    def stats(self) -> Stats:
        """A snapshot of every handler's counters and latency in this process."""
        return _observer.stats(self.handlers, self._counters)

    def dashboard(self, token: str | None = None, *, interval: float = 1.0) -> Any:
        """The dashboard as an ASGI app (``api.mount("/aioredq", app.dashboard())``):
        read-only without ``token``; figures read once per ``interval`` for every open page."""
        from ._dashboard import Dashboard

        return Dashboard(self, token=token, interval=interval)
