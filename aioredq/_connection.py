"""Redis clients (built from a parsed URL, see _url.py) and Redis error translation.

Three clients per app, each with its own connections:

- ``command``, for producing (and tools such as ``inspect``). At most ``max_connections``
  producing calls run at once; more wait, in order, for up to ``pool_timeout`` seconds and then
  fail with a ConnectError that says so. The bound is a semaphore in front of the client rather
  than redis-py's ``BlockingConnectionPool``, because it must hold on every scheme: Sentinel
  and Cluster build their own pools, and a cluster node's pool raises ``MaxConnectionsError``
  at once when full instead of waiting.
- ``bookkeeping``, for consumers: fetch scripts, heartbeats, acks, recovery. A burst of
  producers therefore never delays a heartbeat or an ack. The consumer puts an asyncio-level
  deadline on these calls: a finite socket timeout would tax every call, the hot ones included.
- ``blocking``, for consumers' blocking reads, so a consumer parked in a read never holds a
  connection that acks or producers need. Blocking reads are short server-side blocks
  (``BLOCK_SECONDS``), and this client's socket timeout is larger than the block: redis-py 8
  re-sends a command that outlives its socket timeout, and a finite timeout still finds a dead
  peer within seconds.

``command`` and ``bookkeeping`` have no socket timeout (a finite one costs about 40 % of
throughput in redis-py 8); TCP keepalive finds dead peers there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry as RedisRetry
from redis.backoff import ExponentialWithJitterBackoff

from ._exceptions import ConnectError, RedisCommandError
from ._url import (
    ContextSSLConnection,
    Target,
    auth_kwargs,
    redis_kwargs,
    sentinel_kwargs,
    tls_kwargs,
)

DEFAULT_MAX_CONNECTIONS = 50
DEFAULT_POOL_TIMEOUT = 10.0
# Connections of the command client beyond the producing bound: the subscriber's, inspect's.
SPARE_CONNECTIONS = 16
BLOCK_SECONDS = 1.0
BLOCKING_SOCKET_TIMEOUT = BLOCK_SECONDS + 9.0

T = TypeVar("T")
Client = aioredis.Redis | RedisCluster
# What the clients send besides the transports' commands (see _transports/queue.COMMANDS):
# the handshake and health checks, SELECT for a db other than 0, and a cluster client's
# discovery of its nodes and slots.
COMMANDS = ("hello", "ping")
DB_COMMANDS = ("select",)
CLUSTER_COMMANDS = ("cluster|slots", "cluster|shards", "command", "asking")


def translate(exc: BaseException, what: str) -> Exception:
    """The aioredq error for a redis-py error (the original is chained by the caller)."""
    if is_connection_error(exc):
        return ConnectError(f"{what}: {type(exc).__name__}: {exc}")
    if isinstance(exc, rexc.RedisError):
        return RedisCommandError(f"{what}: {type(exc).__name__}: {exc}")
    return exc if isinstance(exc, Exception) else RuntimeError(str(exc))


async def translated(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call`` with redis-py errors translated into aioredq's (chained)."""
    try:
        return await call()
    except rexc.RedisError as exc:
        raise translate(exc, what) from exc


def is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, rexc.RedisClusterException):
        # The cluster client's way of saying that no seed node answers.
        return str(exc).startswith("Redis Cluster cannot be connected")
    return isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError, ConnectError, OSError))


class Connection:
    """The clients of one app, created lazily on first use (and again after ``aclose``).

    ``max_connections`` bounds the producing calls in flight at once (each holds one
    connection); ``pool_timeout`` is how long a producing call waits for its turn.
    ``consumers`` sizes the consumers' pools (each consumer holds a few connections at most).
    For memory:// the fake server lives as long as this object, so data survives ``aclose``.
    """

    def __init__(
        self,
        target: Target,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        consumers: int = 0,
    ) -> None:
        self.target = target
        self.max_connections = max_connections
        self.pool_timeout = pool_timeout
        self._consumer_connections = max(DEFAULT_MAX_CONNECTIONS, consumers * 4 + 20)
        self._command: Any = None
        self._bookkeeping: Any = None
        self._blocking: Any = None
        self._fake_server: Any = None
        self._extra: list[Any] = []  # clients to close with the others (sentinels)
        self._slots: asyncio.Semaphore | None = None
        self._slots_loop: asyncio.AbstractEventLoop | None = None
        self._topology: asyncio.Lock | None = None  # a cluster's clients learn it once
        self._topology_known = False

    @property
    def is_open(self) -> bool:
        return any(c is not None for c in (self._command, self._bookkeeping, self._blocking))

    @property
    def can_block(self) -> bool:
        """False for memory://: fakeredis cannot block, consumers poll instead."""
        return self.target.scheme != "memory"

    @property
    def is_cluster(self) -> bool:
        return self.target.scheme == "cluster"

    @property
    def command(self) -> Any:
        if self._command is None:
            self._command = self._make(
                socket_timeout=None,
                retries=3,
                max_connections=self.max_connections + SPARE_CONNECTIONS,
            )
        return self._command

    @property
    def bookkeeping(self) -> Any:
        """Consumers' own client: fetch scripts, heartbeats, acks, recovery."""
        if self._bookkeeping is None:
            self._bookkeeping = self._make(
                socket_timeout=None, retries=3, max_connections=self._consumer_connections
            )
        return self._bookkeeping

    @property
    def blocking(self) -> Any:
        if self._blocking is None:
            if self.target.scheme == "memory":
                self._blocking = self.bookkeeping
            else:
                self._blocking = self._make(
                    socket_timeout=BLOCKING_SOCKET_TIMEOUT,
                    retries=1,
                    max_connections=self._consumer_connections,
                )
        return self._blocking

    async def produce(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run a producing call on ``command`` once one of the ``max_connections`` slots is
        free (waiting at most ``pool_timeout`` seconds), redis-py errors translated."""
        if self.is_cluster and not self._topology_known:
            await self.learn_topology()
        loop = asyncio.get_running_loop()
        slots = self._slots
        if slots is None or self._slots_loop is not loop:
            # A semaphore belongs to one event loop; an app may produce from another later.
            slots = self._slots = asyncio.Semaphore(self.max_connections)
            self._slots_loop = loop
        if slots.locked():
            try:
                async with asyncio.timeout(self.pool_timeout):
                    await slots.acquire()
            except TimeoutError:
                raise ConnectError(
                    f"{what}: waited {self.pool_timeout:g} s for a connection: all "
                    f"{self.max_connections} producing connections stayed busy (Redis slow "
                    "or unreachable?); raise App(max_connections=...) or App(pool_timeout=...)"
                    ", or produce in batches (enqueue_many, append_many, publish_many)"
                ) from None
        else:
            await slots.acquire()  # free: returns at once
        try:
            return await call()
        except rexc.RedisError as exc:
            raise translate(exc, what) from exc
        finally:
            slots.release()

    def _make(self, *, socket_timeout: float | None, retries: int, max_connections: int) -> Any:
        retry = RedisRetry(
            ExponentialWithJitterBackoff(base=0.05, cap=1.0),
            retries,
            supported_errors=(rexc.ConnectionError,),
        )
        common: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": 5.0,
            "retry": retry,
        }
        scheme = self.target.scheme
        if scheme == "memory":
            import fakeredis

            if self._fake_server is None:
                self._fake_server = fakeredis.FakeServer(version=(7, 0))
            return fakeredis.FakeAsyncRedis(
                server=self._fake_server, max_connections=max_connections
            )
        if scheme == "cluster":
            return _cluster(self.target, max_connections, common)
        if scheme == "sentinel":
            sentinel = _sentinel(self.target, common)
            self._extra.extend(sentinel.sentinels)
            return _master_for(sentinel, self.target, max_connections)
        pool = aioredis.ConnectionPool(
            max_connections=max_connections, **redis_kwargs(self.target), **common
        )
        client = aioredis.Redis.from_pool(pool)
        # The URL picks the class (TCP, TLS, unix socket); use its hiredis-packing variant.
        pool.connection_class = _PACKING.get(pool.connection_class, pool.connection_class)
        return client

    async def learn_topology(self) -> None:
        """A cluster client learns the slots on its first command. Many first commands at
        once would each refresh them, and redis-py recycles every connection on a refresh,
        in-use ones included: a command then fails half way and its retry may write twice.
        So the clients learn the topology once, before any traffic."""
        if self._topology is None:
            self._topology = asyncio.Lock()
        async with self._topology:
            if not self._topology_known:
                for client in (self.command, self.bookkeeping, self.blocking):
                    await client.initialize()
                self._topology_known = True

    async def ping(self) -> None:
        if self.is_cluster and not self._topology_known:
            await self.learn_topology()
        await self.command.ping()

    async def aclose(self) -> None:
        clients = (self._command, self._bookkeeping, self._blocking, *self._extra)
        self._command, self._bookkeeping, self._blocking, self._extra = None, None, None, []
        self._slots = self._slots_loop = self._topology = None
        self._topology_known = False
        for client in {id(c): c for c in clients if c is not None}.values():
            await client.aclose()


def _cluster(target: Target, max_connections: int, common: dict[str, Any]) -> RedisCluster:
    tls = tls_kwargs(target.tls)
    cls = tls.pop("connection_class", None)
    context = tls.pop("ssl_context", None)
    seeds = [ClusterNode(host, port) for host, port in target.hosts]
    auth = {k: v for k, v in auth_kwargs(target).items() if k != "db"}
    client = RedisCluster(
        startup_nodes=seeds,
        max_connections=max_connections,
        ssl=cls is not None,
        **auth,
        **tls,
        **common,
    )
    if context is not None:  # redis-py's cluster takes no SSLContext: give its nodes ours
        client.connection_kwargs.update(connection_class=ContextSSLConnection, ssl_context=context)
        for node in client.nodes_manager.startup_nodes.values():
            node.connection_class = ContextSSLConnection
            node.connection_kwargs["ssl_context"] = context
    return client


def _sentinel(target: Target, common: dict[str, Any]) -> Any:
    from redis.asyncio.sentinel import Sentinel

    sentinel = Sentinel([], **common)  # type: ignore[no-untyped-call]
    # The sentinels speak TLS like the masters they watch, with the same options.
    options = sentinel_kwargs(target)
    sentinel.sentinels = [
        aioredis.Redis.from_pool(
            aioredis.ConnectionPool(host=host, port=port, socket_connect_timeout=5.0, **options)
        )
        for host, port in target.hosts
    ]
    return sentinel


def _master_for(sentinel: Any, target: Target, max_connections: int) -> Any:
    return sentinel.master_for(
        target.master,
        max_connections=max_connections,
        **auth_kwargs(target),
        **tls_kwargs(target.tls, sentinel_managed=True),
    )


class _HiredisPacking:
    """Commands packed by hiredis in C, as redis-py's synchronous client does. redis-py's
    asyncio connection packs in Python, re-joining its buffer for every argument: for a
    batch of 100 acks that costs more than running the handlers. Anything hiredis refuses
    (memoryview, or a type Redis cannot take), and clients set to an encoding other than
    strict UTF-8, go the usual way, errors included."""

    encoder: Any

    def pack_command(self, *args: Any) -> list[bytes]:
        encoder = self.encoder
        if (
            encoder.encoding.lower().replace("-", "") == "utf8"
            and encoder.encoding_errors == "strict"
        ):
            head = args[0]
            if isinstance(head, str):
                head_args = (*head.encode().split(), *args[1:])
            elif b" " in head:
                head_args = (*head.split(), *args[1:])
            else:
                head_args = args
            try:
                return [hiredis.pack_command(head_args)]
            except TypeError:
                pass
        return super().pack_command(*args)  # type: ignore[misc, no-any-return]


_PACKING: dict[type, type] = {}
try:
    import hiredis
except ImportError:  # redis[hiredis] is a dependency, but stay correct without it
    pass
else:
    for _plain in (
        aioredis.Connection,
        aioredis.SSLConnection,
        ContextSSLConnection,
        aioredis.UnixDomainSocketConnection,
    ):
        _PACKING[_plain] = type(f"Packed{_plain.__name__}", (_HiredisPacking, _plain), {})
