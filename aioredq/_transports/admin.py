"""Read-only figures for ``inspect``, and the dead-letter operations of ``dead``."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from . import keys
from .pubsub import subscriber_counts
from .stream import LAG_COUNT_LIMIT, StreamTransport

# The commands of ``inspect`` and ``dead`` per model, their scripts' included (see
# queue.COMMANDS); pub/sub's counts are in pubsub.COMMANDS.
TASK_COMMANDS = (
    *("time", "zrange", "zcard", "llen", "lrange", "lpos", "lpush", "lrem", "type", "del"),
    *("evalsha", "script|load"),
)
STREAM_COMMANDS = (
    *("time", "exists", "zrangebyscore", "xlen", "xrange", "xrevrange", "xpending"),
    *("xinfo|groups", "xinfo|consumers", "xadd", "xdel", "type", "del", "evalsha", "script|load"),
)

# Both requeue scripts check first, then write the copy, then remove the letter: a script is not
# rolled back when a command fails half way, so a refused write (WRONGTYPE, OOM) must come
# before the removal. A letter is thus either still dead or requeued, never lost or doubled.

# KEYS: dead list, queue; ARGV: letter, item. The item's delivery count restarts at 0.
REQUEUE_ITEM = """
if not redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
local item = ARGV[2]
local prefix = '{"aioredq":1,"attempts":'
local n = string.match(item, '^{"aioredq":1,"attempts":(%d+),')
if n then item = prefix .. '0' .. string.sub(item, #prefix + #n + 1) end
redis.call('LPUSH', KEYS[2], item)
redis.call('LREM', KEYS[1], 1, ARGV[1])
return 1
"""

# KEYS: stream, dead stream; ARGV: dead entry id, field, value, ... Returns the new entry id.
REQUEUE_ENTRY = """
if #redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1]) == 0 then return false end
local new_id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('XDEL', KEYS[2], ARGV[1])
return new_id
"""

# KEYS: dead list or stream. Returns how many letters were deleted.
PURGE = """
local kind = redis.call('TYPE', KEYS[1])['ok']
local n = 0
if kind == 'list' then n = redis.call('LLEN', KEYS[1])
elseif kind == 'stream' then n = redis.call('XLEN', KEYS[1])
else return 0 end
redis.call('DEL', KEYS[1])
return n
"""


class BadLetter(ValueError):
    """A dead letter that cannot be requeued (written by another program in another shape)."""


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
    figures["lag"] = await transport.lag(info, LAG_COUNT_LIMIT)
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


def letter_item(letter: bytes) -> bytes:
    """The original item a queue's dead letter carries (``body``, or ``body_b64``)."""
    try:
        data = json.loads(letter)
        if "body_b64" in data:
            return base64.b64decode(data["body_b64"], validate=True)
        body = data["body"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise BadLetter("not a JSON object with a 'body' or 'body_b64'") from None
    if not isinstance(body, str):  # another program's letter: keep its JSON body as JSON
        return json.dumps(body).encode()
    return body.encode("utf-8", "surrogateescape")


async def requeue_queue_letter(client: Any, queue: str, letter: bytes) -> bool:
    """Move one dead letter back onto ``queue`` (its delivery count reset), atomically."""
    script = client.register_script(REQUEUE_ITEM)
    return bool(await script(keys=[keys.dead(queue), queue], args=[letter, letter_item(letter)]))


async def stream_dead_letters(
    client: Any, stream: str, count: int | None
) -> list[tuple[str, dict[str, str]]]:
    rows = await client.xrevrange(keys.dead(stream), count=count)
    return [(_text(i), {_text(k): _text(v) for k, v in f.items()}) for i, f in rows]


async def requeue_stream_letter(
    client: Any, stream: str, dead_id: str, fields: dict[str, str]
) -> str | None:
    """Append a dead entry's original fields to ``stream`` as a new entry (so its delivery
    count starts again) and delete the dead entry, atomically. None if it was already gone."""
    try:
        original = json.loads(fields["fields"])
    except (KeyError, ValueError):
        raise BadLetter("no 'fields' JSON object") from None
    if not isinstance(original, dict) or not original:
        raise BadLetter("its 'fields' is not a non-empty JSON object")
    args: list[Any] = [dead_id]
    for k, v in original.items():
        args += [k, v if isinstance(v, str) else json.dumps(v)]
    script = client.register_script(REQUEUE_ENTRY)
    new_id = await script(keys=[stream, keys.dead(stream)], args=args)
    return None if new_id is None else _text(new_id)


async def purge(client: Any, name: str) -> int:
    """Delete every dead letter of queue or stream ``name``; returns how many there were."""
    script = client.register_script(PURGE)
    return int(await script(keys=[keys.dead(name)]))
