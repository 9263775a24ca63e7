"""Deduplication keys of task queues: ``{q}:key:<key>`` holds the id of the one job enqueued
with that key while it is queued, delayed or running.

``ENQUEUE_KEYED`` writes the job and its key in one script, or returns the id already held.
The key is freed by ``keyed_settle(SETTLE)``: the settle script wrapped so that, in the same
atomic call, each finished job (acked or dead-lettered, and so gone from the processing list)
frees its key, at once or ``key_ttl`` later. A retried job keeps it. The wrapper leaves the
settle script's own keys and arguments as they are: it takes its part from the end of both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from . import keys
from .lua import NOW as _NOW
from .lua import WRONG as _WRONG

COMMANDS = ("get", "set", "pexpire", "del", "type", "lpush", "zadd", "lpos")

# KEYS: the dedup key, the destination (queue, priority list, or the delayed zset)
# ARGV: id, item, due ms from now for the delayed zset or '' for a list, absolute due ms or ''
# Returns the id that holds the key: ARGV[1] when the job was written, else the other one.
ENQUEUE_KEYED = (
    _NOW
    + _WRONG
    + """
local bad = wrong(KEYS[1], 'string')
  or wrong(KEYS[2], (ARGV[3] == '' and ARGV[4] == '') and 'list' or 'zset')
if bad then return redis.error_reply(bad) end
local held = redis.call('GET', KEYS[1])
if held then return held end
if ARGV[4] ~= '' then
  redis.call('ZADD', KEYS[2], tonumber(ARGV[4]), ARGV[2])
elseif ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[2])
else
  redis.call('LPUSH', KEYS[2], ARGV[2])
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
"""
)

# Appended (as the last KEYS and ARGV) to a settle call: the dedup keys, then per key (index
# in ARGV of its item, id, ttl ms), then how many keys. A key is freed only if this call took
# its job out of the processing list: held before the settle script proper, gone after (acked
# or dead-lettered; a refused dead letter keeps its job, and its key). A consumer taken for
# dead that settles late holds nothing: the job was recovered and waits again, with its key.
_HELD = """
local function held_before(nkeys, args_at)
  local was = {}
  if redis.call('TYPE', KEYS[1]).ok ~= 'list' then return was end
  for k = 0, nkeys - 1 do
    local item = ARGV[tonumber(ARGV[args_at + 3 * k])]
    was[k] = redis.call('LPOS', KEYS[1], item, 'RANK', -1) ~= false
  end
  return was
end
"""

_FREE = """
local function free_keys(nkeys, keys_at, args_at, was)
  for k = 0, nkeys - 1 do
    local key, a = KEYS[keys_at + k], args_at + 3 * k
    local item, id, ttl = ARGV[tonumber(ARGV[a])], ARGV[a + 1], tonumber(ARGV[a + 2])
    if was[k] and redis.call('TYPE', key).ok == 'string' and redis.call('GET', key) == id
        and not redis.call('LPOS', KEYS[1], item) then
      if ttl > 0 then redis.call('PEXPIRE', key, ttl) else redis.call('DEL', key) end
    end
  end
end
"""


def keyed_settle(settle: str) -> str:
    """``settle`` (a script whose KEYS[1] is the processing list) run as a function that sees
    only its own KEYS and ARGV, then the keys of the jobs it finished freed."""
    body = re.sub(r"\bKEYS\b", "K_", re.sub(r"\bARGV\b", "A_", settle))
    return (
        "local nkeys = tonumber(ARGV[#ARGV])\n"
        "local nargs = #ARGV - 1 - 3 * nkeys\n"
        "local keys_at = #KEYS - nkeys + 1\n"
        "local A_, K_ = {}, {}\n"
        "for i = 1, nargs do A_[i] = ARGV[i] end\n"
        "for i = 1, keys_at - 1 do K_[i] = KEYS[i] end\n"
        + _HELD
        + "local was = held_before(nkeys, nargs + 1)\n"
        "local result = (function()\n" + body + "\nend)()\n"
        "if type(result) == 'table' and result.err then return result end\n"
        + _FREE
        + "free_keys(nkeys, keys_at, nargs + 1, was)\n"
        "return result\n"
    )


_KEYED = re.compile(
    rb'\{"aioredq":1,"attempts":\d{1,9},"id":"([^"\\]*)","enqueued_at":[\d.]+'
    rb'(?:,"priority":\d)?,"dedup":("(?:[^"\\]|\\.)*"),"dedup_ttl":(\d+)[,}]'
)


def dedup_of(raw: bytes) -> tuple[str, str, int] | None:
    """(id, key, ttl ms) of an item enqueued with a dedup key, else None."""
    if b',"dedup":' not in raw[:512]:
        return None
    match = _KEYED.match(raw)
    if match is None:
        return None
    quoted = match.group(2)
    key = quoted[1:-1].decode() if b"\\" not in quoted else json.loads(quoted)
    return match.group(1).decode(), key, int(match.group(3))


def free_args(queue: str, items: Sequence[tuple[int, bytes]]) -> tuple[list[str], list[str | int]]:
    """The KEYS and ARGV ``keyed_settle`` appends for ``items`` ((ARGV index, item) of the
    acks and dead letters of one settle call)."""
    declared: list[str] = []
    args: list[str | int] = []
    for index, raw in items:
        found = dedup_of(raw)
        if found is not None:
            msg_id, key, ttl = found
            declared.append(keys.dedup(queue, key))
            args += [index, msg_id, ttl]
    return declared, args
