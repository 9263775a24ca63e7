"""Periodic jobs: the one script that fires a tick.

``{q}:schedule:<handler>`` is a hash whose field ``last`` is the scheduled time (ms since the
epoch) of the last tick fired. Every app running the handler computes the same ticks from the
same schedule, and ``TICK`` compares and sets ``last`` and pushes the job in one atomic call:
each tick enqueues exactly one job however many apps race for it, and a restart (of a worker,
or of Redis with persistence) never fires a tick again.
"""

from __future__ import annotations

from typing import Any

from . import clients, keys
from .lua import WRONG as _WRONG

COMMANDS = ("hget", "hset", "lpush", "type", "evalsha", "script|load")

# KEYS: the schedule hash, the queue; ARGV: tick ms, item. Returns 1 if this call fired the
# tick, 0 if it (or a later one) was fired already. Both types are checked before anything
# is written; the job is pushed before ``last`` moves, so a refused write loses no tick.
TICK = (
    _WRONG
    + """
local bad = wrong(KEYS[1], 'hash') or wrong(KEYS[2], 'list')
if bad then return redis.error_reply(bad) end
local last = redis.call('HGET', KEYS[1], 'last')
if last and tonumber(last) >= tonumber(ARGV[1]) then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], 'last', ARGV[1])
return 1
"""
)


def schedule_key(queue: str, handler: str) -> str:
    return keys.aux(queue, f"schedule:{handler}")


class ScheduleTransport:
    def __init__(self, client: Any, queue: str, handler: str) -> None:
        client = clients.producing(client)  # a Connection's producing client
        self.client = client
        self.queue = queue
        self.key = schedule_key(queue, handler)
        self._tick = client.register_script(TICK)

    async def last(self) -> int | None:
        """The scheduled time (ms) of the last tick fired, or None if none ever was."""
        value = await self.client.hget(self.key, "last")
        return None if value is None else int(value)

    async def fire(self, tick_ms: int, item: bytes) -> bool:
        """Push ``item`` for the tick at ``tick_ms`` unless it (or a later one) was fired."""
        return bool(await self._tick(keys=[self.key, self.queue], args=[tick_ms, item]))
