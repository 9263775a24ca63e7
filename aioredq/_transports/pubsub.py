"""Pub/Sub: one subscriber connection for all of an app's channels, patterns and shard
channels, and publishing.

The subscriber reads raw reply frames (``[kind, channel, data]`` or ``[kind, pattern,
channel, data]``, all bytes) straight from redis-py's ``PubSub.parse_response``: its
``get_message`` builds a dict, decodes the kind and checks handler tables for every message,
which costs about as much as everything aioredq then does with the message. redis-py's
``PubSub`` keeps the subscriptions and replays them from ``on_connect`` whenever the
connection is re-established (plain, pattern and shard channels alike), so a reconnect needs
nothing from the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import redis.exceptions as rexc
from redis.asyncio.cluster import ClusterPubSub, RedisCluster

from . import clients

try:
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
    from redis._parsers.hiredis import _AsyncHiredisParser as _HIREDIS
except ImportError:  # pragma: no cover - another redis-py layout: always parse_response
    _HIREDIS = None  # type: ignore[assignment,misc]
    _NOT_ENOUGH_DATA = object()

PUBLISH = "PUBLISH"
PUBLISH_SHARDED = "SPUBLISH"
# The commands of each kind of subscription, producing and ``inspect``'s counts included
# (see queue.COMMANDS).
COMMANDS = {
    "channels": ("subscribe", "unsubscribe", "publish", "pubsub|numsub"),
    "pattern": ("psubscribe", "punsubscribe", "publish"),
    "sharded": ("ssubscribe", "sunsubscribe", "spublish", "pubsub|shardnumsub"),
}
MESSAGE = b"message"
PMESSAGE = b"pmessage"
SMESSAGE = b"smessage"
_MESSAGES = frozenset((MESSAGE, PMESSAGE, SMESSAGE))

# A reply frame as the server sent it. Messages are [kind, channel, data] for MESSAGE and
# SMESSAGE, [kind, pattern, channel, data] for PMESSAGE: the subscribed name is always
# frame[1], the channel frame[-2] and the payload frame[-1]. Other frames are subscription
# confirmations.
Frame = list[Any]


def text(value: Any) -> str:
    """A channel or pattern name as text (names that are not UTF-8 stay readable)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def wire(name: str) -> bytes:
    """A channel or pattern name as it appears in frames (the inverse of ``text``)."""
    return name.encode("utf-8", "surrogateescape")


async def _pass_through(response: Any) -> Any:
    # RESP3 delivers messages as push frames; redis-py's default push handler formats every
    # frame into a debug log line (``str(frame)``) before returning it, logging off or not.
    return response


class Source:
    """One subscribed connection to read frames from. Not safe for concurrent readers."""

    __slots__ = ("_held", "name", "pubsub")

    def __init__(self, pubsub: Any, name: str) -> None:
        self.pubsub = pubsub
        self.name = name
        self._held: Frame | None = None  # taken from the reader, for ``read`` to hand over

    def switch(self, pubsub: Any) -> None:
        """Read ``pubsub`` from now on (nothing held from the old one is handed over)."""
        self.pubsub = pubsub
        self._held = None

    def take(self) -> Frame | None:
        """The next frame if it is already received and needs nothing more, else None (then
        ``read``): no coroutine, no waiting."""
        conn = self.pubsub.connection
        if conn is None or self._held is not None:
            return None
        frame = buffered(conn)
        if frame is None or _as_is(conn._parser, frame):
            return frame
        self._held = frame  # a push frame for redis-py's handler: ``read`` passes it on
        return None

    async def read(self) -> Frame | None:
        """The next frame, waiting as long as it takes (cancel to stop waiting).

        A dropped connection is re-established here and its subscriptions replayed; when that
        fails, the redis-py ``ConnectionError`` is raised and the next call tries again.
        """
        pubsub = self.pubsub
        conn = pubsub.connection
        if conn is None:
            raise rexc.ConnectionError(f"{self.name} is not connected")
        frame: Frame | None = self._held
        self._held = None
        if frame is None:
            frame = buffered(conn)
        if frame is None:
            frame = await pubsub.parse_response(block=True)
        elif not _as_is(conn._parser, frame):
            frame = await conn._parser.handle_push_response(frame)  # as redis-py's reader does
        return frame


def _as_is(parser: Any, frame: Any) -> bool:
    """Whether redis-py's reader would hand ``frame`` over unchanged: anything but a RESP3
    push frame, and a message pushed to our pass-through handler."""
    push = parser._hiredis_PushNotificationType
    if push is None or not isinstance(frame, push):
        return True
    return frame[0] in _MESSAGES and parser.pubsub_push_handler_func is _pass_through


def buffered(conn: Any) -> Frame | None:
    """A frame already read from the socket and waiting in the hiredis reader, or None.

    One socket read holds many frames; redis-py's ``parse_response`` hands each over through
    a retry wrapper, a health check and several coroutine frames, none of which can matter
    for bytes already received: no I/O happens here. The frame is checked as redis-py's own
    reader checks it. Anything else (no hiredis, health checks on, not connected, a partial
    frame) is left to ``parse_response``."""
    parser = conn._parser
    if (
        _HIREDIS is None
        or type(parser) is not _HIREDIS
        or conn.health_check_interval
        or not parser._connected
        or not conn.is_connected
    ):
        return None
    reader: Any = parser._reader
    frame = reader.gets()
    if frame is _NOT_ENOUGH_DATA:
        return None
    if isinstance(frame, rexc.ConnectionError):
        raise frame
    if isinstance(frame, list) and frame and isinstance(frame[0], rexc.ConnectionError):
        raise frame[0]
    return frame  # type: ignore[no-any-return]


class Subscription:
    """Every subscription of an app. On a single server (or Sentinel's master) that is one
    connection. In a cluster, plain channels and patterns share one connection to any node (a
    cluster delivers PUBLISH on every node), while shard channels need one connection per node
    that owns some of them; redis-py moves those when slots move, so ``sources()`` can change
    over time."""

    def __init__(self, client: Any) -> None:
        client = clients.producing(client)
        self._client = client
        self.pubsub: Any = client.pubsub(push_handler_func=_pass_through)
        self.sharded_per_node = isinstance(self.pubsub, ClusterPubSub)
        # In a cluster, plain channels and patterns get a pubsub of their own, so that it can
        # be moved to another node without touching the shard channels.
        self._plain: Any = (
            client.pubsub(push_handler_func=_pass_through) if self.sharded_per_node else self.pubsub
        )
        self._channels: list[str] = []
        self._patterns: list[str] = []
        self._next_node = 0
        self._main = Source(self._plain, "subscriber")
        self._nodes: dict[str, Source] = {}

    async def subscribe(
        self, channels: Sequence[str], patterns: Sequence[str], shard_channels: Sequence[str]
    ) -> None:
        """Subscribe to everything (what was already subscribed is simply subscribed again)."""
        self._channels, self._patterns = list(channels), list(patterns)
        await self._subscribe_plain()
        if shard_channels:
            await self.pubsub.ssubscribe(*shard_channels)

    async def _subscribe_plain(self) -> None:
        if self._channels:
            await self._plain.subscribe(*self._channels)
        if self._patterns:
            await self._plain.psubscribe(*self._patterns)

    async def recover(self, source: Source) -> None:
        """After a connection error on ``source``. In a cluster, plain channels and patterns
        move to the next node: their node may be gone for good (a crashed master), and redis-py
        would only ever reconnect to it. Elsewhere (and for shard channels) redis-py reconnects
        by itself on the next read. Raises the redis-py error when the next node fails too."""
        if not self.sharded_per_node or source is not self._main:
            return
        nodes = self._client.get_nodes()
        node = nodes[self._next_node % len(nodes)]
        self._next_node += 1
        old, self._plain = (
            self._plain,
            self._client.pubsub(node=node, push_handler_func=_pass_through),
        )
        source.switch(self._plain)
        with contextlib.suppress(Exception):
            await old.aclose()
        await self._subscribe_plain()

    def sources(self) -> list[Source]:
        """The connections to read now."""
        if not self.sharded_per_node:
            return [self._main]
        sources = [self._main] if self._channels or self._patterns else []
        nodes = self.pubsub.node_pubsub_mapping
        for name in list(self._nodes):
            if name not in nodes or nodes[name] is not self._nodes[name].pubsub:
                del self._nodes[name]
        for name, pubsub in nodes.items():
            if name not in self._nodes:
                self._nodes[name] = Source(pubsub, f"subscriber (shard channels on {name})")
        return sources + list(self._nodes.values())

    async def aclose(self) -> None:
        if self._plain is not self.pubsub:
            await self._plain.aclose()
        await self.pubsub.aclose()


async def publish(client: Any, channel: str, payloads: Sequence[bytes], sharded: bool) -> int:
    """Publish payloads in one round trip; returns the receivers of all of them, summed.

    In a cluster PUBLISH reaches subscribers on every node but counts only those connected to
    the node that ran it; SPUBLISH counts every subscriber of the shard channel.
    """
    client = clients.producing(client)
    command = PUBLISH_SHARDED if sharded else PUBLISH
    if len(payloads) == 1:
        return int(await client.execute_command(command, channel, payloads[0]))
    # execute_command, not pipe.publish(): the cluster pipeline refuses publish() by name.
    pipe = client.pipeline(transaction=False)
    for payload in payloads:
        pipe.execute_command(command, channel, payload)
    return sum(int(n) for n in await pipe.execute())


async def subscriber_counts(client: Any, channels: Sequence[str], sharded: bool) -> dict[str, int]:
    """Subscribers per channel (PUBSUB NUMSUB / SHARDNUMSUB), over the whole cluster.

    A server counts only the clients connected to it, and redis-py sends these commands to one
    node of a cluster; each subscriber is connected to exactly one node, so the cluster's figure
    is the sum over every node (replicas included: clients may subscribe there too).
    """
    client = clients.producing(client)
    if not channels:
        return {}
    command = "PUBSUB SHARDNUMSUB" if sharded else "PUBSUB NUMSUB"
    if isinstance(client, RedisCluster):
        await client.initialize()
        replies = await asyncio.gather(
            *(
                client.execute_command(command, *channels, target_nodes=node)
                for node in client.get_nodes()
            )
        )
    else:
        replies = [await client.execute_command(command, *channels)]
    counts = dict.fromkeys(channels, 0)
    for reply in replies:
        for name, count in _pairs(reply):
            counts[text(name)] = counts.get(text(name), 0) + int(count)
    return counts


def _pairs(reply: Any) -> list[tuple[Any, Any]]:
    """A NUMSUB reply as (channel, count) pairs, whatever shape redis-py gave it."""
    if isinstance(reply, dict):
        return list(reply.items())
    if reply and isinstance(reply[0], (list, tuple)):
        return [(k, v) for k, v in reply]
    return list(zip(reply[::2], reply[1::2], strict=True))
