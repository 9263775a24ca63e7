"""Streams and consumer groups.

Entries are read with XREADGROUP (new entries) and XAUTOCLAIM (entries of consumers silent for
longer than the lease); a live consumer keeps its own entries fresh with XCLAIM ... JUSTID, so a
slow handler is never taken from it. The delivery count is Redis's own (XPENDING). Ack is XACK;
a dead letter is XADD to ``{stream}:dead`` and XACK in one script. Every script gets its keys
through KEYS, all in the stream's hash slot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from . import keys
from .queue import HEARTBEAT

# An IDLE for XCLAIM that makes an entry claimable by anyone at once. It must stay below the
# epoch in ms: Redis resets a delivery time that would be negative to "now".
RELEASED_IDLE_MS = 365 * 24 * 3600 * 1000

_OWNED = """
local function owned(id)
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if p[1] and p[1][2] == ARGV[2] then return p[1] end
  return nil
end
"""

# KEYS: stream; ARGV: group, consumer, ids... Claims our own pending entries again (a retry):
# returns {id, fields, deliveries} per entry still ours and still in the stream.
CLAIM_OWN = (
    _OWNED
    + """
local out = {}
for i = 3, #ARGV do
  if owned(ARGV[i]) then
    local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i])
    if got[1] then
      local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
      out[#out + 1] = {got[1][1], got[1][2], p[1][4]}
    end
  end
end
return out
"""
)

# KEYS: stream; ARGV: group, consumer, ids... Resets the idle time of entries we still own.
TOUCH = (
    _OWNED
    + """
local n = 0
for i = 3, #ARGV do
  if owned(ARGV[i]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    n = n + 1
  end
end
return n
"""
)

# KEYS: stream; ARGV: group, consumer, idle_ms, then pairs (id, deliveries before this one).
# Makes entries we fetched but never started claimable by others at once, uncounted.
RELEASE = (
    _OWNED
    + """
local n = 0
for i = 4, #ARGV - 1, 2 do
  if owned(ARGV[i]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3],
               'RETRYCOUNT', ARGV[i + 1], 'JUSTID')
    n = n + 1
  end
end
return n
"""
)

# KEYS: stream; ARGV: group, consumer, min_idle_ms, cursor, count.
# XAUTOCLAIM plus each claimed entry's delivery count: {cursor, {{id, fields, n}...}, deleted}.
AUTOCLAIM = """
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local out = {}
for _, e in ipairs(r[2]) do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
  local n = 1
  if p[1] then n = p[1][4] end
  out[#out + 1] = {e[1], e[2], n}
end
return {r[1], out, r[3] or {}}
"""

# KEYS: stream, consumers zset; ARGV: group, consumer. Leaves the group if it holds nothing.
LEAVE = """
redis.call('ZREM', KEYS[2], ARGV[2])
local ok, mine = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if ok and #mine == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: stream, dead stream; ARGV: group, id, error, deliveries, failed_at, fields JSON
DEAD = """
redis.call('XADD', KEYS[2], '*', 'original_id', ARGV[2], 'group', ARGV[1], 'error', ARGV[3],
           'deliveries', ARGV[4], 'failed_at', ARGV[5], 'fields', ARGV[6])
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
"""


@dataclass(frozen=True, slots=True)
class Entry:
    id: str
    fields: dict[bytes, bytes]
    deliveries: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(raw: Any) -> dict[bytes, bytes]:
    if isinstance(raw, dict):
        return dict(raw)
    if raw is None:
        return {}
    it = iter(raw)
    return dict(zip(it, it, strict=True))


def is_nogroup(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, ResponseError) and (
        text.startswith("NOGROUP") or "no longer exists" in text
    )


class StreamTransport:
    def __init__(
        self, client: Any, stream: str, group: str | None = None, consumer: str = ""
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group or ""
        self.consumer = consumer
        self.dead = keys.dead(stream)
        self.consumers = keys.consumers(stream, self.group)
        self._claim_own = client.register_script(CLAIM_OWN)
        self._touch = client.register_script(TOUCH)
        self._release = client.register_script(RELEASE)
        self._autoclaim = client.register_script(AUTOCLAIM)
        self._dead = client.register_script(DEAD)
        self._heartbeat = client.register_script(HEARTBEAT)
        self._leave = client.register_script(LEAVE)

    # producing ---------------------------------------------------------------------------
    async def append(
        self, entries: Sequence[Mapping[str, str | bytes]], maxlen: int | None
    ) -> list[str]:
        pipe = self.client.pipeline(transaction=False)
        for fields in entries:
            pipe.xadd(self.stream, dict(fields), maxlen=maxlen, approximate=True)
        return [_text(i) for i in await pipe.execute()]

    # groups ------------------------------------------------------------------------------
    async def create_group(self, start_id: str) -> bool:
        """Create the group (and the stream) at ``start_id``; False if it already exists."""
        try:
            await self.client.xgroup_create(self.stream, self.group, start_id, mkstream=True)
        except ResponseError as exc:
            if str(exc).startswith("BUSYGROUP"):
                return False
            raise
        return True

    async def stream_exists(self) -> bool:
        return bool(await self.client.exists(self.stream))

    async def read_group(self, client: Any, count: int, block_ms: int | None) -> list[Entry]:
        reply = await client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        return [Entry(_text(i), _fields(f), 1) for i, f in _entries(reply)]

    async def read_tail(
        self, client: Any, after: str, count: int, block_ms: int | None
    ) -> list[Entry]:
        reply = await client.xread({self.stream: after}, count=count, block=block_ms)
        return [Entry(_text(i), _fields(f), 0) for i, f in _entries(reply)]

    async def last_id(self) -> str:
        last = await self.client.xrevrange(self.stream, count=1)
        return _text(last[0][0]) if last else "0-0"

    # settling ----------------------------------------------------------------------------
    async def settle(
        self, acks: Sequence[str], dead: Sequence[tuple[str, str, int, str, str]]
    ) -> None:
        pipe = self.client.pipeline(transaction=False)
        if acks:
            pipe.xack(self.stream, self.group, *acks)
        for entry_id, error, deliveries, failed_at, fields_json in dead:
            await self._dead(
                keys=[self.stream, self.dead],
                args=[self.group, entry_id, error, deliveries, failed_at, fields_json],
                client=pipe,
            )
        results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, Exception) and not is_nogroup(result):
                raise result

    # ownership ---------------------------------------------------------------------------
    async def claim_own(self, ids: Sequence[str]) -> list[Entry]:
        reply = await self._claim_own(keys=[self.stream], args=[self.group, self.consumer, *ids])
        return [Entry(_text(i), _fields(f), int(n)) for i, f, n in reply]

    async def touch(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        return int(await self._touch(keys=[self.stream], args=[self.group, self.consumer, *ids]))

    async def release(self, entries: Sequence[tuple[str, int]]) -> int:
        if not entries:
            return 0
        args: list[Any] = [self.group, self.consumer, RELEASED_IDLE_MS]
        for entry_id, previous in entries:
            args += [entry_id, previous]
        return int(await self._release(keys=[self.stream], args=args))

    async def autoclaim(
        self, min_idle_ms: int, cursor: str, count: int
    ) -> tuple[str, list[Entry], list[str]]:
        nxt, claimed, deleted = await self._autoclaim(
            keys=[self.stream], args=[self.group, self.consumer, min_idle_ms, cursor, count]
        )
        entries = [Entry(_text(i), _fields(f), int(n)) for i, f, n in claimed]
        return _text(nxt), entries, [_text(d) for d in deleted]

    # liveness ----------------------------------------------------------------------------
    async def heartbeat(self, lease_ms: int) -> None:
        await self._heartbeat(keys=[self.consumers], args=[self.consumer, lease_ms])

    async def leave(self) -> None:
        await self._leave(keys=[self.stream, self.consumers], args=[self.group, self.consumer])

    async def prune_consumers(self, min_idle_ms: int) -> list[str]:
        """Delete group consumers that hold nothing, are idle and have no live heartbeat."""
        infos = await self.client.xinfo_consumers(self.stream, self.group)
        seconds, micros = await self.client.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        live = await self.client.zrangebyscore(self.consumers, now_ms, "+inf")
        live_names = {_text(n) for n in live}
        removed = []
        for info in infos:
            name = _text(info.get("name", info.get(b"name", b"")))
            pending = int(info.get("pending", info.get(b"pending", 0)))
            idle = int(info.get("idle", info.get(b"idle", 0)))
            if name == self.consumer or pending or idle < min_idle_ms or name in live_names:
                continue
            await self.client.xgroup_delconsumer(self.stream, self.group, name)
            removed.append(name)
        return removed

    async def group_info(self) -> dict[str, Any] | None:
        for info in await self.client.xinfo_groups(self.stream):
            decoded = {_text(k): v for k, v in info.items()}
            if _text(decoded.get("name", "")) == self.group:
                return decoded
        return None

    async def count_after(self, entry_id: str, limit: int) -> int:
        return len(await self.client.xrange(self.stream, f"({entry_id}", "+", count=limit))


def _entries(reply: Any) -> list[tuple[Any, Any]]:
    """Entries of the single stream in an XREAD/XREADGROUP reply (list or mapping shape)."""
    if not reply:
        return []
    streams = reply.values() if isinstance(reply, dict) else (item[1] for item in reply)
    return [tuple(entry) for entries in streams for entry in entries]
