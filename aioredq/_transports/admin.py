"""Read-only figures for ``inspect``, and the dead-letter operations of ``dead``."""

from __future__ import annotations

import json
from typing import Any

from . import keys
from .pubsub import subscriber_counts
from .stream import StreamTransport

# KEYS: dead list, queue; ARGV: letter, item. Atomic, so an interrupted requeue loses nothing.
REQUEUE_ITEM = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

# KEYS: stream, dead stream; ARGV: dead entry id, field, value, ...
REQUEUE_ENTRY = """
if redis.call('XDEL', KEYS[2], ARGV[1]) == 1 then
  return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
end
return false
"""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


async def server_ms(client: Any) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def task_figures(client: Any, queue: str) -> dict[str, Any]:
    now = await server_ms(client)
    members = await client.zrange(keys.consumers(queue), 0, -1, withscores=True)
    alive = sum(1 for _, score in members if score >= now)
    pipe = client.pipeline(transaction=False)
    pipe.llen(queue)
    pipe.zcard(keys.delayed(queue))
    pipe.llen(keys.dead(queue))
    for name, _ in members:
        pipe.llen(keys.processing(queue, _text(name)))
    length, delayed, dead, *processing = await pipe.execute()
    return {
        "length": int(length),
        "lag": None,
        "pending": None,
        "processing": sum(int(n) for n in processing),
        "delayed": int(delayed),
        "dead": int(dead),
        "consumers": {"alive": alive, "dead": len(members) - alive},
        "oldest_pending_s": None,
        "subscribers": None,
    }


async def stream_figures(client: Any, stream: str, group: str | None) -> dict[str, Any]:
    length = int(await client.xlen(stream))
    dead = int(await client.xlen(keys.dead(stream)))
    figures: dict[str, Any] = {
        "length": length,
        "lag": None,
        "pending": None,
        "processing": None,
        "delayed": None,
        "dead": dead,
        "consumers": None,
        "oldest_pending_s": None,
        "subscribers": None,
    }
    if group is None or (not length and not await client.exists(stream)):
        return figures
    transport = StreamTransport(client, stream, group)
    info = await transport.group_info()
    if info is None:
        return figures
    lag = info.get("lag")
    if lag is None:
        lag = await transport.count_after(_text(info.get("last-delivered-id", "0-0")), 100_000)
    figures["lag"] = int(lag)
    figures["pending"] = int(info.get("pending", 0))
    now = await server_ms(client)
    live = {
        _text(n) for n in await client.zrangebyscore(keys.consumers(stream, group), now, "+inf")
    }
    names = {_text(c.get("name", "")) for c in await client.xinfo_consumers(stream, group)}
    alive = len(names & live)
    figures["consumers"] = {"alive": alive, "dead": len(names) - alive}
    if figures["pending"]:
        oldest = await client.xpending_range(stream, group, "-", "+", 1)
        if oldest:
            figures["oldest_pending_s"] = round(int(oldest[0]["time_since_delivered"]) / 1000, 3)
    return figures


async def subscribe_figures(client: Any, channels: list[str], sharded: bool) -> dict[str, Any]:
    counts = await subscriber_counts(client, channels, sharded)
    return {
        "length": None,
        "lag": None,
        "pending": None,
        "processing": None,
        "delayed": None,
        "dead": None,
        "consumers": None,
        "oldest_pending_s": None,
        "subscribers": sum(counts.values()) if channels else None,
    }


# dead letters --------------------------------------------------------------------------------
async def queue_dead_letters(client: Any, queue: str, count: int | None) -> list[bytes]:
    return list(await client.lrange(keys.dead(queue), 0, -1 if count is None else count - 1))


async def requeue_queue_letter(client: Any, queue: str, letter: bytes) -> bool:
    body = json.loads(letter)["body"].encode("utf-8", "surrogateescape")
    script = client.register_script(REQUEUE_ITEM)
    return bool(await script(keys=[keys.dead(queue), queue], args=[letter, body]))


async def stream_dead_letters(
    client: Any, stream: str, count: int | None
) -> list[tuple[str, dict[str, str]]]:
    rows = await client.xrevrange(keys.dead(stream), count=count)
    return [(_text(i), {_text(k): _text(v) for k, v in f.items()}) for i, f in rows]


async def requeue_stream_letter(
    client: Any, stream: str, dead_id: str, fields: dict[str, str]
) -> str | None:
    original = json.loads(fields.get("fields", "{}"))
    args: list[Any] = [dead_id]
    for k, v in original.items():
        args += [k, v]
    script = client.register_script(REQUEUE_ENTRY)
    new_id = await script(keys=[stream, keys.dead(stream)], args=args)
    return None if new_id is None else _text(new_id)


async def purge(client: Any, name: str) -> int:
    key = keys.dead(name)
    kind = _text(await client.type(key))
    size = (
        int(await (client.llen(key) if kind == "list" else client.xlen(key)))
        if kind in ("list", "stream")
        else 0
    )
    await client.delete(key)
    return size
