"""Pub/Sub: one subscriber connection for all of an app's channels, patterns and shard
channels. redis-py's PubSub resubscribes everything on reconnect (``on_connect``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PUBLISH_SHARDED = "SPUBLISH"


@dataclass(frozen=True, slots=True)
class Received:
    kind: str  # "message", "pmessage" or "smessage"
    channel: str
    pattern: str | None
    data: bytes


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


class Subscription:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.pubsub: Any = client.pubsub(ignore_subscribe_messages=True)

    async def subscribe(
        self, channels: Sequence[str], patterns: Sequence[str], shard_channels: Sequence[str]
    ) -> None:
        if channels:
            await self.pubsub.subscribe(*channels)
        if patterns:
            await self.pubsub.psubscribe(*patterns)
        if shard_channels:
            await self.pubsub.ssubscribe(*shard_channels)

    async def receive(self, timeout: float) -> Received | None:
        msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
        if msg is None or msg.get("type") not in ("message", "pmessage", "smessage"):
            return None
        pattern = msg.get("pattern")
        data = msg["data"]
        return Received(
            msg["type"],
            _text(msg["channel"]),
            None if pattern is None else _text(pattern),
            data if isinstance(data, bytes) else str(data).encode(),
        )

    async def aclose(self) -> None:
        await self.pubsub.aclose()


async def publish(client: Any, channel: str, payloads: Sequence[bytes], sharded: bool) -> int:
    """Publish payloads in one round trip; returns the receivers of all of them, summed."""
    if len(payloads) == 1:
        if sharded:
            return int(await client.execute_command(PUBLISH_SHARDED, channel, payloads[0]))
        return int(await client.publish(channel, payloads[0]))
    pipe = client.pipeline(transaction=False)
    for payload in payloads:
        if sharded:
            pipe.execute_command(PUBLISH_SHARDED, channel, payload)
        else:
            pipe.publish(channel, payload)
    return sum(int(n) for n in await pipe.execute())


async def subscriber_counts(client: Any, channels: Sequence[str], sharded: bool) -> dict[str, int]:
    if not channels:
        return {}
    if sharded:
        reply = await client.execute_command("PUBSUB SHARDNUMSUB", *channels)
    else:
        reply = await client.execute_command("PUBSUB NUMSUB", *channels)
    if isinstance(reply, dict):
        return {_text(k): int(v) for k, v in reply.items()}
    pairs = (
        reply
        if reply and isinstance(reply[0], (list, tuple))
        else zip(reply[::2], reply[1::2], strict=True)
    )
    return {_text(k): int(v) for k, v in pairs}
