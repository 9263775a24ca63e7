"""The Lua scripts of reliable list queues (see ``queue.py`` for the model they implement).

Every script gets all of its keys through KEYS, all in one hash slot. Redis does not undo a
script that fails half way, so every script that moves work checks each destination's type
first and writes an item's new place before removing the old one: a refused write (WRONGTYPE,
OOM, NOPERM) then leaves the item where it was.
"""

from __future__ import annotations

from .lua import ATTEMPTS as _ATTEMPTS
from .lua import NOW as _NOW
from .lua import PRIORITY as _PRIORITY
from .lua import PUSH_ALL as _PUSH_ALL
from .lua import QUOTE as _QUOTE
from .lua import RATE as _RATE
from .lua import WRONG as _WRONG

# KEYS: queue, processing, delayed, consumers, prefix of the keys that keep oversized items,
#       the pause key, the priority lists of priorities 1 to 9, the rate window, the
#       throttle key
# ARGV: count, consumer, lease_ms, foreign id prefix, max due items to promote, max_body_bytes,
#       rate limit (0: none), rate period ms
# Returns {items, earliest delayed score or false, server ms, 1 if this consumer was not
# registered, a problem that held back part of the work or false, 1 if the queue is paused,
# ms until the rate allows a start or false}. While the pause key or the throttle key exists
# (any type) nothing is taken and nothing moves, but the lease is renewed. With a rate, at
# most what the window leaves room for is taken, and each item taken is logged in it. Due
# delayed items go to the head of their priority's list (earliest due taken first). Items are
# taken from the highest priority's list first, the plain queue (priority 0) last: strict
# priority, so a steady flow of high-priority work starves lower ones. When no priority list
# exists, one EXISTS is all they cost. A priority list of the wrong type is a
# problem: it is skipped (as a source and as a destination) and the rest goes on.
#
# An item over max_body_bytes is never copied into the processing list nor sent to the
# worker: it is moved as it is (one copy, no escaping) into its own string key
# ``<prefix><n>`` and replaced by a small stub envelope (``"oversized": {"size", "key"}``)
# that the worker dead-letters like any refused body.
FETCH = (
    _NOW
    + _QUOTE
    + _WRONG
    + _ATTEMPTS
    + _PRIORITY
    + _RATE
    + """
local limit_rate, per = tonumber(ARGV[7]) or 0, tonumber(ARGV[8]) or 1000
local bad = wrong(KEYS[1], 'list') or wrong(KEYS[2], 'list') or wrong(KEYS[4], 'zset')
  or (limit_rate > 0 and wrong(KEYS[16], 'zset'))
if bad then return redis.error_reply(bad) end
local fresh = redis.call('ZADD', KEYS[4], now + tonumber(ARGV[3]), ARGV[2])
if redis.call('EXISTS', KEYS[6], KEYS[17]) > 0 then
  return {{}, false, tostring(now), fresh, false, 1, false}
end
local problem = false
local lists = {[0] = KEYS[1]}
local any = redis.call('EXISTS', unpack(KEYS, 7, 15)) > 0
for p = 9, 1, -1 do
  local err = any and wrong(KEYS[6 + p], 'list')
  if err then problem = problem or err else lists[p] = KEYS[6 + p] end
end
local delayed_bad = wrong(KEYS[3], 'zset')
problem = problem or delayed_bad
if not delayed_bad then
  local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
  for i = #due, 1, -1 do
    local home = lists[priority_of(due[i])]
    if home then
      any = any or home ~= KEYS[1]
      redis.call('RPUSH', home, due[i])
      redis.call('ZREM', KEYS[3], due[i])
    end
  end
end
local sources = {}
for p = 9, 1, -1 do
  if any and lists[p] then sources[#sources + 1] = lists[p] end
end
sources[#sources + 1] = KEYS[1]
local limit, count = tonumber(ARGV[6]), tonumber(ARGV[1])
local rate_wait = false
if limit_rate > 0 then
  local room, wait = rate_room(KEYS[16], limit_rate, per, count)
  count = room
  if room == 0 then rate_wait = wait end
end
local out, trims, stop = {}, {}, false
for _, source in ipairs(sources) do
  local want = count - #out
  if want <= 0 or stop then break end
  local items = redis.call('LRANGE', source, -want, -1)
  local taken = 0
  for j = #items, 1, -1 do
    local item, i = items[j], #out + 1
    local n = attempts_of(item)
    local attempts = n and (tonumber(n) + 1) or 1
    if #item > limit then
      local key = KEYS[5] .. i
      local kept = redis.pcall('SET', key, item)
      if type(kept) == 'table' and kept.err then
        problem = 'oversized item not moved aside: ' .. kept.err
        stop = true
        break
      end
      local id = n and string.match(item, '^{"aioredq":1,"attempts":%d+,"id":"([%w%-_.:]+)"')
      out[i] = prefix .. attempts .. ',"id":' .. quote(id or (ARGV[4] .. i))
        .. ',"oversized":{"size":' .. #item .. ',"key":' .. quote(key) .. '}}'
    elseif n then
      out[i] = prefix .. attempts .. string.sub(item, #prefix + #n + 1)
    else
      out[i] = prefix .. '1,"id":' .. quote(ARGV[4] .. i) .. ',"raw":' .. quote(item) .. '}'
    end
    taken = taken + 1
  end
  if taken > 0 then trims[#trims + 1] = {source, taken} end
end
if #out > 0 then
  for i = 1, #out, 1000 do
    redis.call('LPUSH', KEYS[2], unpack(out, i, math.min(i + 999, #out)))
  end
  for _, trim in ipairs(trims) do redis.call('LTRIM', trim[1], 0, -(trim[2] + 1)) end
  if limit_rate > 0 then rate_take(KEYS[16], #out, per, ARGV[4]) end
end
local nxt = delayed_bad and {} or redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
return {out, nxt[2] or false, tostring(now), fresh, problem, 0, rate_wait}
"""
)

# KEYS: processing, then delayed if there are retries, then dead if there are dead letters
# ARGV: number of acks, number of retries, acks..., (item, delay_ms) per retry,
#       (item, dead letter) per dead item
# Returns {items settled, first refused retry (0-based) or false, its error, first refused
# dead letter or false, its error}. Only items still held are moved, so a replayed call
# (after a lost reply) or a late one (the lease expired and the item went back to the queue)
# changes nothing. A refused retry or dead letter stays in the processing list, and so do
# the ones after it in its group; acks and the other group are written all the same. LREM
# and LPOS search from the tail (-1), where FETCH left the oldest items, those most likely
# done first. (Only the keys a call writes are declared: ACL checks every declared key
# before the script runs.)
SETTLE = (
    _NOW
    + _WRONG
    + """
local acks, retries = tonumber(ARGV[1]), tonumber(ARGV[2])
local bad = wrong(KEYS[1], 'list')
if bad then return redis.error_reply(bad) end
local n = 0
for i = 3, 2 + acks do n = n + redis.call('LREM', KEYS[1], -1, ARGV[i]) end
local function move(key, want, from, to, write)
  if from > to then return false, false end
  local err = wrong(key, want)
  if err then return 0, err end
  for i = from, to, 2 do
    if redis.call('LPOS', KEYS[1], ARGV[i], 'RANK', -1) then
      local r = write(key, i)
      if type(r) == 'table' and r.err then return (i - from) / 2, r.err end
      redis.call('LREM', KEYS[1], -1, ARGV[i])
      n = n + 1
    end
  end
  return false, false
end
local first = 3 + acks
local rstop, rerr = move(KEYS[2], 'zset', first, first + 2 * retries - 1, function(key, i)
  return redis.pcall('ZADD', key, now + tonumber(ARGV[i + 1]), ARGV[i])
end)
local dstop, derr = move(KEYS[#KEYS], 'list', first + 2 * retries, #ARGV, function(key, i)
  return redis.pcall('LPUSH', key, ARGV[i + 1])
end)
return {n, rstop, rerr, dstop, derr}
"""
)

# KEYS: processing, queue, the priority lists 1 to 9; ARGV: pairs (item in processing, item
# to put back), in fetch order. The first fetched item goes back rightmost in its priority's
# list, so it is taken first again.
HANDBACK = (
    _WRONG
    + _PRIORITY
    + """
for i = 1, #KEYS do
  local bad = wrong(KEYS[i], 'list')
  if bad then return redis.error_reply(bad) end
end
local n = 0
for i = #ARGV - 1, 1, -2 do
  if redis.call('LPOS', KEYS[1], ARGV[i]) then
    local p = priority_of(ARGV[i + 1])
    redis.call('RPUSH', p > 0 and KEYS[2 + p] or KEYS[2], ARGV[i + 1])
    redis.call('LREM', KEYS[1], 1, ARGV[i])
    n = n + 1
  end
end
return n
"""
)

# KEYS: delayed; ARGV: delay_ms, items...
ENQUEUE_DELAYED = (
    _NOW
    + _PUSH_ALL
    + _WRONG
    + """
local bad = wrong(KEYS[1], 'zset')
if bad then return redis.error_reply(bad) end
local at, args = now + tonumber(ARGV[1]), {}
for i = 2, #ARGV do
  args[#args + 1] = at
  args[#args + 1] = ARGV[i]
end
push_all('ZADD', KEYS[1], args)
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

# KEYS: consumers, lock; ARGV: token, lock_ms, consumer. Returns expired consumers (never the
# caller) if the lock was won. The lock keeps every live consumer from scanning the same dead
# ones at the same moment; RECOVER releases it, and it expires by itself if its holder dies in
# between.
EXPIRED = (
    _NOW
    + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - 1, 'LIMIT', 0, 101)
local others = {}
for i = 1, #dead do
  if dead[i] ~= ARGV[3] and #others < 100 then others[#others + 1] = dead[i] end
end
if #others == 0 then return false end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return others
"""
)

# KEYS: consumers, queue, lock, the priority lists 1 to 9, processing lists...; ARGV: token,
# the caller, consumer names (same order as the lists). Re-checks each expiry atomically, so a
# consumer that came back in between keeps its work (its FETCH registers it before taking
# anything); a consumer not registered at all (its processing list orphaned) counts as
# expired. The caller's own list never moves: a live consumer settles its own work, it does
# not run it again. A processing list holds the newest item on the left; moved in that order
# to the right of its priority's list, the oldest ends at the head, taken first again. Each
# LMOVE is whole, so a refused write leaves every item in exactly one of the two lists.
RECOVER = (
    _NOW
    + _WRONG
    + _PRIORITY
    + """
local function unlock()
  if redis.call('TYPE', KEYS[3]).ok == 'string' and redis.call('GET', KEYS[3]) == ARGV[1] then
    redis.call('DEL', KEYS[3])
  end
end
local bad = wrong(KEYS[2], 'list') or wrong(KEYS[1], 'zset')
for p = 1, 9 do bad = bad or wrong(KEYS[3 + p], 'list') end
if bad then
  unlock()
  return redis.error_reply(bad)
end
local moved = 0
for i = 3, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  local list = KEYS[i + 10]
  if ARGV[i] ~= ARGV[2] and ((not score) or tonumber(score) < now)
      and not wrong(list, 'list') then
    local len = redis.call('LLEN', list)
    for _ = 1, len do
      local p = priority_of(redis.call('LINDEX', list, 0))
      redis.call('LMOVE', list, p > 0 and KEYS[3 + p] or KEYS[2], 'LEFT', 'RIGHT')
    end
    redis.call('ZREM', KEYS[1], ARGV[i])
    moved = moved + len
  end
end
unlock()
return moved
"""
)
