"""The Lua prelude the scripts share: each piece defines one local, prepended to a script
that uses it (``NOW + WRONG + "..."``). One definition each, so the scripts agree on what a
type check, an envelope's delivery count and a large push mean."""

from __future__ import annotations

# The server's clock in ms: scripts compare leases and due times with Redis's time, not a
# worker's.
NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# JSON-quotes a string byte for byte: bytes that are not UTF-8 pass through unchanged, as in
# Redis's cjson, and the reader takes them back exactly (``parse_task_item`` decodes with
# surrogateescape). fakeredis's cjson refuses such bytes, so memory:// could not use it.
# Only ever given items under ``max_body_bytes``: its cost grows with the item.
QUOTE = r"""
local esc
local function quote(s)
  if not esc then  -- built on first use: most calls of a script that has it quote nothing
    esc = {['"'] = '\\"', ['\\'] = '\\\\'}
    for b = 0, 31 do esc[string.char(b)] = string.format('\\u%04x', b) end
    esc[string.char(127)] = '\\u007f'
  end
  return '"' .. string.gsub(s, '[%c"\\]', esc) .. '"'
end
"""

# Lua's unpack() stops at a few thousand values; a batch may be larger.
PUSH_ALL = """
local function push_all(cmd, key, list)
  for i = 1, #list, 1000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
  end
end
"""

# Redis does not undo a script that fails half way, so every script that moves work checks
# each destination's type first and writes an item's new place before removing the old one:
# a refused write (WRONGTYPE, OOM, NOPERM) then leaves the item where it was.
WRONG = """
local function wrong(key, want)
  local t = redis.call('TYPE', key).ok
  if t == want or t == 'none' then return false end
  return 'WRONGTYPE ' .. key .. ' is a ' .. t .. ', not a ' .. want
end
"""

# What an envelope is, for Lua and for ``parse_task_item`` alike: the exact prefix, 1 to 9
# digits of delivery count, a comma. Anything else is a foreign item (and gets wrapped).
ATTEMPTS = """
local prefix = '{"aioredq":1,"attempts":'
local function attempts_of(item)
  local n = string.match(item, '^{"aioredq":1,"attempts":(%d+),')
  if n and #n <= 9 then return n end
  return nil
end
"""

# The priority (1 to 9) an aioredq envelope carries right after its ``enqueued_at``, or 0 (the
# plain list): what decides where a retried, handed back or recovered item waits again.
PRIORITY = r"""
local function priority_of(item)
  local p = string.match(item,
    '^{"aioredq":1,"attempts":%d+,"id":"[^"\\]*","enqueued_at":[%d.]+,"priority":([1-9])[,}]')
  return p and tonumber(p) or 0
end
"""

# A sliding-window log of handler starts: a zset of one member per start, scored by the
# server time. ``rate_room`` drops what left the window and says how many more may start now
# (and, when none may, in how many ms the oldest leaves); ``rate_take`` records ``n`` starts
# (``tag`` makes the members unique across consumers and calls). At most ``limit`` starts fall
# in any window of ``per_ms`` plus 5 %, whichever worker made them: the margin absorbs the
# jitter between a start granted (server clock) and the handler starting in its worker, so
# that the limit also holds as the workers' clocks measure it, at the cost of running at
# most ~95 % of it under a backlog.
RATE = """
local function rate_room(key, limit, per_ms, want)
  per_ms = per_ms + math.ceil(per_ms / 20)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - per_ms)
  local room = math.max(0, math.min(want, limit - redis.call('ZCARD', key)))
  if room > 0 then return room, 0 end
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return 0, oldest[2] and math.max(1, tonumber(oldest[2]) + per_ms - now + 1) or 1
end
local function rate_take(key, n, per_ms, tag)
  per_ms = per_ms + math.ceil(per_ms / 20)
  local args = {}
  for i = 1, n do
    args[#args + 1] = now
    args[#args + 1] = tag .. i
    if #args >= 1000 or i == n then
      redis.call('ZADD', key, unpack(args))
      args = {}
    end
  end
  if n > 0 then redis.call('PEXPIRE', key, per_ms + 1000) end
end
"""
