"""Cancelling a task by id (``app.cancel``).

A job still waiting (in the queue or ``{q}:delayed``) is dead-lettered at once with error
``Cancelled`` (its letter's body is the item exactly as it waited, so a requeue puts it back
as it was) and, when the queue keeps results, its result says so. A job held by a consumer
(running, or fetched and about to run) is marked in the ZSET ``{q}:cancelled`` (score: when
the mark may be forgotten); every consumer reads the marks added since its last look in its
upkeep, about once a second, and cancels the handler of a job it holds. Finding a waiting job
reads the queue, the delayed set and the live consumers' processing lists: a cost that grows
with the queue, paid only by the cancel.
"""

from __future__ import annotations

from typing import Any

from . import clients, keys
from .lua import ATTEMPTS as _ATTEMPTS
from .lua import NOW as _NOW
from .lua import QUOTE as _QUOTE
from .lua import WRONG as _WRONG

# How long a running job's cancel mark is kept: a consumer cut off from Redis longer than
# this (far over any lease) has lost its work to another consumer anyway.
KEEP_MS = 15 * 60 * 1000

# KEYS: queue, delayed, dead, cancelled, result, finished, processing lists of live consumers
# ARGV: id, queue name, failed_at, result_ttl_ms (0: none), result JSON, error text
# Returns 'queued' | 'delayed' | 'running' | false. Each destination's type is checked before
# anything moves; the letter (and result) are written before the item leaves its place.
CANCEL = (
    _NOW
    + _QUOTE
    + _WRONG
    + _ATTEMPTS
    + """
local bad = wrong(KEYS[1], 'list') or wrong(KEYS[2], 'zset') or wrong(KEYS[3], 'list')
  or wrong(KEYS[4], 'zset') or (ARGV[4] ~= '0' and wrong(KEYS[5], 'string'))
if bad then return redis.error_reply(bad) end
local needle = ',"id":' .. quote(ARGV[1]) .. ','
local function is_it(item)
  local n = attempts_of(item)
  return n and string.sub(item, #prefix + #n + 1, #prefix + #n + #needle) == needle
end
local function settle(item)
  if ARGV[4] ~= '0' then
    redis.call('SET', KEYS[5], ARGV[5], 'PX', ARGV[4])
    if not wrong(KEYS[6], 'stream') then
      redis.call('XADD', KEYS[6], 'MAXLEN', '~', '10000', '*', '0', KEYS[5])
    end
  end
  redis.call('LPUSH', KEYS[3], '{"id":' .. quote(ARGV[1]) .. ',"queue":' .. quote(ARGV[2])
    .. ',"body":' .. quote(item) .. ',"error":' .. quote(ARGV[6]) .. ',"attempts":'
    .. (attempts_of(item) or '0') .. ',"failed_at":' .. quote(ARGV[3]) .. '}')
end
-- Walks a list or zset in pages; a waiting item found is dead-lettered, then removed.
local function find(key, size, page, remove)
  for start = 0, redis.call(size, key) - 1, 1000 do
    for _, item in ipairs(redis.call(page, key, start, start + 999)) do
      if is_it(item) then
        settle(item)
        remove(key, item)
        return true
      end
    end
  end
  return false
end
if find(KEYS[1], 'LLEN', 'LRANGE', function(k, item) redis.call('LREM', k, 1, item) end) then
  return 'queued'
end
if find(KEYS[2], 'ZCARD', 'ZRANGE', function(k, item) redis.call('ZREM', k, item) end) then
  return 'delayed'
end
for i = 7, #KEYS do
  if not wrong(KEYS[i], 'list') then
    for _, item in ipairs(redis.call('LRANGE', KEYS[i], 0, -1)) do
      if is_it(item) then
        redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
        redis.call('ZADD', KEYS[4], now + """
    + str(KEEP_MS)
    + """, ARGV[1])
        return 'running'
      end
    end
  end
end
return false
"""
)


async def cancel(
    client: Any,
    queue: str,
    job_id: str,
    *,
    failed_at: str,
    result_ttl_ms: int,
    result: bytes,
    error: str,
) -> str | None:
    """Cancel job ``job_id`` of ``queue``: where it was ('queued', 'delayed', 'running'), or
    None when no waiting or held job has that id (unknown, or already finished)."""
    client = clients.producing(client)
    names = await client.zrange(keys.consumers(queue), 0, -1)
    lists = [
        keys.processing(queue, n.decode("utf-8", "replace") if isinstance(n, bytes) else n)
        for n in names
    ]
    script = client.register_script(CANCEL)
    found = await script(
        keys=[
            queue,
            keys.delayed(queue),
            keys.dead(queue),
            keys.cancelled(queue),
            keys.result(queue, job_id),
            keys.finished(queue),
            *lists,
        ],
        args=[job_id, queue, failed_at, result_ttl_ms, result, error],
    )
    if not found:
        return None
    return found.decode() if isinstance(found, bytes) else str(found)


async def new_cancels(source: Any, queue: str, after: float) -> list[tuple[str, float]]:
    """Cancel marks from score ``after`` on (the last one seen again): (job id, score), read
    through the consumers' client of ``source`` (a ``Connection``)."""
    found = await clients.consuming(source).zrangebyscore(
        keys.cancelled(queue), after, "+inf", withscores=True
    )
    return [
        (m.decode("utf-8", "replace") if isinstance(m, bytes) else str(m), float(s))
        for m, s in found
    ]
