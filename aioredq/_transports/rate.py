"""Rate limits of stream groups: the sliding-window log (see ``lua.RATE``) taken before a
read and given back for what the read did not return. (Task queues take it inside FETCH.)"""

from __future__ import annotations

from typing import Any

from .._connection import Connection
from . import clients, keys
from .lua import NOW as _NOW
from .lua import RATE as _RATE
from .lua import WRONG as _WRONG

COMMANDS = ("zremrangebyscore", "zcard", "zrange", "zadd", "zrem", "pexpire", "type", "set")

# KEYS: the window; ARGV: limit, per_ms, wanted, tag. Returns {granted, ms to wait or 0}.
TAKE = (
    _NOW
    + _WRONG
    + _RATE
    + """
local bad = wrong(KEYS[1], 'zset')
if bad then return redis.error_reply(bad) end
local room, wait = rate_room(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
rate_take(KEYS[1], room, tonumber(ARGV[2]), ARGV[4])
return {room, wait}
"""
)


class RateWindow:
    def __init__(self, client: Any, name: str, group: str | None) -> None:
        self.client = client
        self.key = keys.aux(name, "rate" if group is None else f"rate:{group}")
        self._take = client.register_script(TAKE)
        self._calls = 0

    @classmethod
    def for_consumer(cls, conn: Connection, name: str, group: str | None) -> RateWindow:
        return cls(clients.consuming(conn), name, group)

    async def take(self, limit: int, per_ms: int, wanted: int, tag: str) -> tuple[int, int, str]:
        """(starts granted, ms until one may start when none is, the tag used)."""
        self._calls += 1
        tag = f"{tag}:{self._calls}:"
        granted, wait = await self._take(keys=[self.key], args=[limit, per_ms, wanted, tag])
        return int(granted), int(wait), tag

    async def give_back(self, tag: str, first: int, last: int) -> None:
        """Return the starts ``first``..``last`` of a take the read did not use."""
        if first <= last:
            await self.client.zrem(self.key, *(f"{tag}{i}" for i in range(first, last + 1)))
