"""Results of tasks that keep them (``result_ttl=``): settling with results, and reading them.

A queue that keeps results settles through ``SETTLE_KEEPING`` instead of ``SETTLE``: the same
moves, plus each finished job's outcome written in the same script, so a crash can never leave
a done job without its result, nor a result for a job that runs again (only an item still held
by the consumer is settled, and only a settled item gets its result). Each result written is
announced on the capped stream ``{q}:finished`` (one entry per settle, each field's value a
result key), which waiters read with one blocking XREAD per queue per process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._connection import Connection
from . import clients, keys
from .lua import NOW as _NOW
from .lua import WRONG as _WRONG

# Every command the cancel path (any task queue) and the result path (a queue that keeps
# results) send, their scripts' included, for ``aioredq acl``; tests/test_acl.py runs an app
# that keeps results and cancels under them.
CANCEL_COMMANDS = (
    *("type", "lpos", "lrem", "lpush", "llen", "lrange", "set"),
    *("zadd", "zrangebyscore", "zremrangebyscore", "zcard", "zrange", "zrem"),
)
COMMANDS = (*CANCEL_COMMANDS, "get", "mget", "xadd", "xread", "xrevrange")
FINISHED_MAXLEN = 10_000

# KEYS: processing, delayed, dead, finished stream, then one result key per ack and per dead
# ARGV: acks, retries, ttl_ms, finished maxlen, (item, result) per ack, (item, delay_ms) per
#       retry, (item, dead letter, result) per dead item
# Returns {items settled, acks whose result was refused (0-based, still held), first refused
# retry or false, its error, first refused dead letter or false, its error, result error}.
# Only items still held move (a replay or a late call changes nothing). A result goes in
# before its item leaves the processing list; a dead letter's result before the letter.
SETTLE_KEEPING = (
    _NOW
    + _WRONG
    + """
local acks, retries, ttl, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local bad = wrong(KEYS[1], 'list')
if bad then return redis.error_reply(bad) end
local announce = not wrong(KEYS[4], 'stream')
local n, refused, rerror, written = 0, {}, false, {}
local function keep(key, result)
  local err = wrong(key, 'string')
  if not err then
    local r = redis.pcall('SET', key, result, 'PX', ttl)
    if type(r) == 'table' and r.err then err = r.err end
  end
  if err then
    rerror = err
    return false
  end
  written[#written + 1] = key
  return true
end
local k, i = 5, 5
for a = 1, acks do
  if redis.call('LPOS', KEYS[1], ARGV[i], 'RANK', -1) then
    if keep(KEYS[k], ARGV[i + 1]) then
      redis.call('LREM', KEYS[1], -1, ARGV[i])
      n = n + 1
    else
      refused[#refused + 1] = a - 1
    end
  end
  k, i = k + 1, i + 2
end
local rstop, rerr = false, false
if retries > 0 then
  local err = wrong(KEYS[2], 'zset')
  for r = 0, retries - 1 do
    if err then rstop, rerr = r, err break end
    if redis.call('LPOS', KEYS[1], ARGV[i], 'RANK', -1) then
      local z = redis.pcall('ZADD', KEYS[2], now + tonumber(ARGV[i + 1]), ARGV[i])
      if type(z) == 'table' and z.err then rstop, rerr = r, z.err break end
      redis.call('LREM', KEYS[1], -1, ARGV[i])
      n = n + 1
    end
    i = i + 2
  end
  i = 5 + 2 * acks + 2 * retries
end
local dstop, derr = false, false
local d = 0
local derr0 = wrong(KEYS[3], 'list')
while i <= #ARGV do
  if derr0 then dstop, derr = d, derr0 break end
  if redis.call('LPOS', KEYS[1], ARGV[i], 'RANK', -1) then
    if not keep(KEYS[k], ARGV[i + 2]) then dstop, derr = d, rerror break end
    local l = redis.pcall('LPUSH', KEYS[3], ARGV[i + 1])
    if type(l) == 'table' and l.err then dstop, derr = d, l.err break end
    redis.call('LREM', KEYS[1], -1, ARGV[i])
    n = n + 1
  end
  k, i, d = k + 1, i + 3, d + 1
end
if announce then
  for from = 1, #written, 1000 do
    local fields = {}
    for j = from, math.min(from + 999, #written) do
      fields[#fields + 1] = tostring(j - from)
      fields[#fields + 1] = written[j]
    end
    redis.pcall('XADD', KEYS[4], 'MAXLEN', '~', cap, '*', unpack(fields))
  end
end
return {n, refused, rstop, rerr, dstop, derr, rerror}
"""
)


@dataclass(frozen=True, slots=True)
class SettledKeeping:
    count: int
    acks_refused: list[int]  # acks still held: their result was refused
    retries_refused: int | None
    retry_error: str | None
    dead_refused: int | None
    dead_error: str | None
    result_error: str | None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class ResultTransport:
    """Settling with results for one consumer of a queue that keeps them."""

    def __init__(self, client: Any, queue: str, consumer: str) -> None:
        self.client = client
        self.queue = queue
        self.processing = keys.processing(queue, consumer)
        self.finished = keys.finished(queue)
        self._result_prefix = keys.result(queue, "")  # + a job id: that job's result key
        self._settle = client.register_script(SETTLE_KEEPING)

    @classmethod
    def for_consumer(cls, conn: Connection, queue: str, consumer: str) -> ResultTransport:
        return cls(clients.consuming(conn), queue, consumer)

    async def settle(
        self,
        acks: Sequence[tuple[bytes, str, bytes]],
        retries: Sequence[tuple[bytes, int]],
        dead: Sequence[tuple[bytes, bytes, str, bytes]],
        ttl_ms: int,
    ) -> SettledKeeping:
        """``acks``: (item, job id, result); ``dead``: (item, letter, job id, result)."""
        args: list[Any] = [len(acks), len(retries), ttl_ms, FINISHED_MAXLEN]
        prefix = self._result_prefix
        declared = [
            self.processing,
            keys.delayed(self.queue),
            keys.dead(self.queue),
            self.finished,
        ]
        for item, job_id, result in acks:
            args += (item, result)
            declared.append(prefix + job_id)
        for item, delay_ms in retries:
            args += [item, delay_ms]
        for item, letter, job_id, result in dead:
            args += (item, letter, result)
            declared.append(prefix + job_id)
        n, refused, rstop, rerr, dstop, derr, res_err = await self._settle(keys=declared, args=args)
        return SettledKeeping(
            int(n),
            [int(x) for x in refused or ()],
            None if rstop is None else int(rstop),
            None if rerr is None else _text(rerr),
            None if dstop is None else int(dstop),
            None if derr is None else _text(derr),
            None if res_err is None else _text(res_err),
        )


async def last_finished(client: Any, queue: str) -> bytes:
    """The id of the newest announcement (``0-0`` when none): where a new reader starts."""
    client = clients.producing(client)
    newest = await client.xrevrange(keys.finished(queue), count=1)
    return newest[0][0] if newest else b"0-0"


async def read_result(source: Any, key: str) -> Any:
    """Result key ``key``'s value (None while not written), on the producing client."""
    return await clients.producing(source).get(key)


async def read_results(source: Any, names: Sequence[str]) -> list[Any]:
    """The values of result keys ``names`` in one MGET (None for those not written)."""
    return list(await clients.producing(source).mget(names))


async def finished_after(source: Any, key: str, last: bytes, block_ms: int | None) -> Any:
    """XREAD the finished-results stream ``key`` after ``last``, blocking up to
    ``block_ms`` (on the blocking client) when given."""
    return await clients.blocking(source).xread({key: last}, count=1000, block=block_ms)
