"""Reliable list queues.

Producers LPUSH on the queue list; consumers take from the right (FIFO). A consumer never pops
an item into its own memory: ``FETCH`` moves a batch atomically into the consumer's processing
list ``{q}:processing:<consumer>``, counting the delivery in the item itself (aioredq's envelope
starts with ``{"aioredq":1,"attempts":N,``; a foreign item is wrapped in one the first time it
is taken). Success removes the item; failure moves it to ``{q}:delayed`` or ``{q}:dead``; a
consumer whose heartbeat in ``{q}:consumers`` expires has its processing list moved back to the
head of the queue. Every script gets all of its keys through KEYS, all in one hash slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import keys

# Every command a task consumer or producer sends, its scripts' commands included (Redis checks
# those against the user's ACL too). `aioredq acl` grants exactly these; tests/test_acl.py runs
# every model under them and fails on any denial, so keep this in step with the code below.
COMMANDS = (
    *("evalsha", "script|load", "time"),
    *("lpush", "rpush", "rpop", "blmove", "lrem", "llen", "lrange", "type"),
    *("zadd", "zrem", "zrange", "zrangebyscore", "zscore"),
    *("set", "get", "del"),
)

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# JSON-quotes a string byte for byte: bytes that are not UTF-8 pass through unchanged, as in
# Redis's cjson, and the reader takes them back exactly (``parse_task_item`` decodes with
# surrogateescape). fakeredis's cjson refuses such bytes, so memory:// could not use it.
_QUOTE = r"""
local esc = {['"'] = '\\"', ['\\'] = '\\\\'}
for b = 0, 31 do esc[string.char(b)] = string.format('\\u%04x', b) end
esc[string.char(127)] = '\\u007f'
local function quote(s) return '"' .. string.gsub(s, '[%c"\\]', esc) .. '"' end
"""

# Lua's unpack() stops at a few thousand values; a batch may be larger.
_PUSH_ALL = """
local function push_all(cmd, key, list)
  for i = 1, #list, 1000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
  end
end
"""

# KEYS: queue, processing, delayed, consumers
# ARGV: count, consumer, lease_ms, foreign id prefix, max due items to promote
# Returns {items, earliest delayed score or false, server ms, 1 if this consumer was not
# registered}. Due delayed items go to the head of the queue (earliest due taken first).
FETCH = (
    _NOW
    + _QUOTE
    + _PUSH_ALL
    + """
local fresh = redis.call('ZADD', KEYS[4], now + tonumber(ARGV[3]), ARGV[2])
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
if #due > 0 then
  for i = 1, #due do redis.call('ZREM', KEYS[3], due[i]) end
  for i = #due, 1, -1 do redis.call('RPUSH', KEYS[1], due[i]) end
end
local out = {}
local items = redis.call('RPOP', KEYS[1], tonumber(ARGV[1]))
if items then
  local prefix = '{"aioredq":1,"attempts":'
  for i, item in ipairs(items) do
    local n = string.match(item, '^{"aioredq":1,"attempts":(%d+),')
    if n then
      out[i] = prefix .. (tonumber(n) + 1) .. string.sub(item, #prefix + #n + 1)
    else
      out[i] = prefix .. '1,"id":' .. quote(ARGV[4] .. i) .. ',"raw":' .. quote(item) .. '}'
    end
  end
  push_all('LPUSH', KEYS[2], out)
end
local nxt = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
return {out, nxt[2] or false, tostring(now), fresh}
"""
)

# KEYS: processing, delayed, dead
# ARGV: number of acks, number of retries, acks..., (item, delay_ms) per retry,
#       (item, dead letter) per dead item
# Only items still held are moved, so a replayed call (after a lost reply) or a late one (the
# lease expired and the item went back to the queue) changes nothing. LREM searches from the
# tail (-1), where FETCH left the oldest items, those most likely done first.
SETTLE = (
    _NOW
    + """
local acks, retries = tonumber(ARGV[1]), tonumber(ARGV[2])
-- Redis does not undo a script that fails half way: refuse before removing anything if a
-- retry or a dead letter could not be written, so the settle can be retried whole.
local function check(key, want)
  local t = redis.call('TYPE', key).ok
  if t ~= want and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. key .. ' is a ' .. t .. ', not a ' .. want)
  end
end
if retries > 0 then
  local err = check(KEYS[2], 'zset')
  if err then return err end
end
if #ARGV > 2 + acks + 2 * retries then
  local err = check(KEYS[3], 'list')
  if err then return err end
end
local n = 0
for i = 3, 2 + acks do n = n + redis.call('LREM', KEYS[1], -1, ARGV[i]) end
local first = 3 + acks
for i = first, first + 2 * retries - 1, 2 do
  if redis.call('LREM', KEYS[1], -1, ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[i + 1]), ARGV[i])
    n = n + 1
  end
end
for i = first + 2 * retries, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], -1, ARGV[i]) == 1 then
    redis.call('LPUSH', KEYS[3], ARGV[i + 1])
    n = n + 1
  end
end
return n
"""
)

# KEYS: processing, queue; ARGV: pairs (item in processing, item to put back), in fetch order.
# The first fetched item goes back rightmost, so it is taken first again.
HANDBACK = """
local n = 0
for i = #ARGV - 1, 1, -2 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('RPUSH', KEYS[2], ARGV[i + 1])
    n = n + 1
  end
end
return n
"""

# KEYS: delayed; ARGV: delay_ms, items...
ENQUEUE_DELAYED = (
    _NOW
    + """
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i]) end
return #ARGV - 1
"""
)

# KEYS: consumers; ARGV: consumer, lease_ms. Returns 1 if the consumer was not registered.
HEARTBEAT = (
    _NOW
    + """
return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
"""
)

# KEYS: consumers, processing; ARGV: consumer. Work still held stays until the lease expires.
LEAVE = """
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

# KEYS: consumers, lock; ARGV: token, lock_ms. Returns expired consumers if the lock was won.
# The lock keeps every live consumer from scanning the same dead ones at the same moment;
# RECOVER releases it, and it expires by itself if its holder dies in between.
EXPIRED = (
    _NOW
    + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - 1, 'LIMIT', 0, 100)
if #dead == 0 then return false end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return dead
"""
)

# KEYS: consumers, queue, lock, processing lists...; ARGV: token, consumer names (same order).
# Re-checks each expiry atomically, so a consumer that came back in between keeps its work (its
# FETCH registers it before taking anything). A processing list holds the newest item on the
# left; pushing them right in that order leaves the oldest at the head, taken first again.
RECOVER = (
    _NOW
    + """
local moved = 0
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if (not score) or tonumber(score) < now then
    local items = redis.call('LRANGE', KEYS[i + 2], 0, -1)
    for j = 1, #items do redis.call('RPUSH', KEYS[2], items[j]) end
    redis.call('DEL', KEYS[i + 2])
    redis.call('ZREM', KEYS[1], ARGV[i])
    moved = moved + #items
  end
end
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
return moved
"""
)


@dataclass(frozen=True, slots=True)
class Fetched:
    items: list[bytes]
    next_due_ms: int | None  # score of the earliest delayed item, if any
    now_ms: int  # server time
    registered: bool  # this consumer was not in the consumers ZSET (first fetch, or expired)


class QueueTransport:
    """The Redis side of one queue, for one consumer (or a producer when consumer is empty)."""

    def __init__(self, client: Any, queue: str, consumer: str = "") -> None:
        self.client = client
        self.queue = queue
        self.consumer = consumer
        self.processing = keys.processing(queue, consumer)
        self.delayed = keys.delayed(queue)
        self.dead = keys.dead(queue)
        self.consumers = keys.consumers(queue)
        self.lock = keys.recover_lock(queue)
        self._fetch = client.register_script(FETCH)
        self._settle = client.register_script(SETTLE)
        self._handback = client.register_script(HANDBACK)
        self._enqueue_delayed = client.register_script(ENQUEUE_DELAYED)
        self._heartbeat = client.register_script(HEARTBEAT)
        self._leave = client.register_script(LEAVE)
        self._expired = client.register_script(EXPIRED)
        self._recover = client.register_script(RECOVER)

    # producing ---------------------------------------------------------------------------
    async def push(self, items: Sequence[bytes]) -> None:
        await self.client.lpush(self.queue, *items)

    async def push_delayed(self, items: Sequence[bytes], delay_ms: int) -> None:
        await self._enqueue_delayed(keys=[self.delayed], args=[delay_ms, *items])

    async def push_at(self, items: Sequence[bytes], at_ms: int) -> None:
        await self.client.zadd(self.delayed, dict.fromkeys(items, at_ms))

    # consuming ---------------------------------------------------------------------------
    async def fetch(self, count: int, lease_ms: int, id_prefix: str, promote: int) -> Fetched:
        """Move up to ``count`` items into this consumer's processing list (after promoting
        up to ``promote`` due delayed items), counting the delivery in each, and renew the
        lease. Foreign items are wrapped in an envelope whose id starts with ``id_prefix``."""
        reply = await self._fetch(
            keys=[self.queue, self.processing, self.delayed, self.consumers],
            args=[count, self.consumer, lease_ms, id_prefix, promote],
        )
        items, nxt, now, fresh = reply
        return Fetched(
            list(items or ()),
            None if nxt is None else int(float(nxt)),
            int(now),
            bool(fresh),
        )

    async def wait(self, client: Any, timeout: float) -> None:
        """Block until the queue has an item, at most ``timeout`` seconds.

        ``BLMOVE q q RIGHT RIGHT`` rotates the last item onto itself: it wakes on the first push
        without taking anything, so a cancelled or timed-out wait can never lose an item (Redis
        7.0 refuses BLMOVE inside a script, so the move itself cannot block).
        """
        await client.blmove(self.queue, self.queue, timeout, "RIGHT", "RIGHT")

    async def settle(
        self,
        acks: Sequence[bytes],
        retries: Sequence[tuple[bytes, int]],
        dead: Sequence[tuple[bytes, bytes]],
    ) -> int:
        """Apply a batch of outcomes in one atomic call; returns how many items were still
        held. (One script rather than a pipeline: redis-py 8.1 leaks a pooled connection when
        a pipeline's SCRIPT EXISTS fails, as it does in every outage.)"""
        args: list[Any] = [len(acks), len(retries), *acks]
        for item, delay_ms in retries:
            args += [item, delay_ms]
        for item, letter in dead:
            args += [item, letter]
        return int(await self._settle(keys=[self.processing, self.delayed, self.dead], args=args))

    async def handback(self, pairs: Sequence[tuple[bytes, bytes]]) -> int:
        """Put held items back at the head of the queue, first pair taken first again."""
        if not pairs:
            return 0
        args = [part for pair in pairs for part in pair]
        return int(await self._handback(keys=[self.processing, self.queue], args=args))

    async def held_count(self) -> int:
        return int(await self.client.llen(self.processing))

    async def held(self) -> list[bytes]:
        """Every item in this consumer's processing list."""
        return list(await self.client.lrange(self.processing, 0, -1))

    async def heartbeat(self, lease_ms: int) -> bool:
        """Renew this consumer's lease; True if it was not registered (first, or expired)."""
        return bool(await self._heartbeat(keys=[self.consumers], args=[self.consumer, lease_ms]))

    async def leave(self) -> bool:
        """Deregister this consumer if it holds nothing; else its lease will expire."""
        return bool(await self._leave(keys=[self.consumers, self.processing], args=[self.consumer]))

    async def recover(self, token: str, lock_ms: int) -> int:
        """Move the work of expired consumers back to the queue; returns the items moved."""
        expired = await self._expired(keys=[self.consumers, self.lock], args=[token, lock_ms])
        if not expired:
            return 0
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in expired]
        lists = [keys.processing(self.queue, n) for n in names]
        return int(
            await self._recover(
                keys=[self.consumers, self.queue, self.lock, *lists], args=[token, *names]
            )
        )
