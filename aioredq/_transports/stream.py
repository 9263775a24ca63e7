"""Streams and consumer groups.

Entries are read with XREADGROUP (new entries) and claimed from consumers silent for longer than
the lease (an XPENDING IDLE walk and XCLAIM, never the caller's own entries); a live consumer
keeps its own entries fresh with XCLAIM ... JUSTID, so a slow handler is never taken from it.
The delivery count is Redis's own (XPENDING). Ack is XACK; a dead letter is XADD to
``{stream}:dead`` and XACK in one script. Every script gets its keys through KEYS, all in the
stream's hash slot. Inside Lua, replies have their RESP2 shapes whatever protocol the client
speaks: an XPENDING row is ``{id, consumer, idle, deliveries}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from .._connection import Connection
from . import clients, keys
from .lua import NOW as _NOW
from .queue import HEARTBEAT

# Every command a stream consumer or producer sends, its scripts' included (see queue.COMMANDS).
COMMANDS = (
    *("evalsha", "script|load", "time"),
    *("xadd", "xtrim", "xread", "xreadgroup", "xack", "xrange", "xrevrange"),
    *("xpending", "xclaim", "xautoclaim", "xinfo|groups", "xinfo|consumers"),
    *("xgroup|create", "xgroup|createconsumer", "xgroup|delconsumer"),
    *("zadd", "zrem", "zscore", "zrangebyscore", "type", "exists"),
    *("zremrangebyscore", "zcard", "zrange", "pexpire", "set"),
)

# An IDLE for XCLAIM that makes an entry claimable by anyone at once. Redis computes the
# delivery time as now - IDLE and resets it to now when that is negative, so the value must
# stay far below the epoch in ms (one year is ~3e10 ms, the epoch ~1.7e12 ms).
RELEASED_IDLE_MS = 365 * 24 * 3600 * 1000

_OWNED = """
local function owned(id)
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if p[1] and p[1][2] == ARGV[2] then return p[1] end
  return false
end
"""

# KEYS: stream; ARGV: group, consumer, ids... Claims our own pending entries again for a retry
# (counted as a delivery): {id, fields, deliveries} per entry still ours and still in the
# stream. Redis 7 drops an entry that was deleted from the stream from the PEL here.
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

# KEYS: stream; ARGV: group, consumer, ids... Resets the idle time of the entries still ours
# (JUSTID: not counted as a delivery); returns the ids that are no longer ours.
TOUCH = (
    _OWNED
    + """
local lost = {}
for i = 3, #ARGV do
  if owned(ARGV[i]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
"""
)

# KEYS: stream; ARGV: group, consumer, idle_ms, then pairs (id, delivery count to keep).
# Makes entries we hold but will not finish claimable by any consumer at once.
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

# KEYS: stream; ARGV: group, consumer, min_idle_ms, cursor, count, scan.
# Claims entries idle for min_idle_ms of OTHER consumers: XAUTOCLAIM cannot skip the caller's
# own entries, and a consumer whose renewals were refused or cut off for longer than the lease
# would take back (and run again) work it is still running or has finished and not yet acked.
# Walks the PEL with XPENDING IDLE from the cursor (exclusive; "0-0" starts at the beginning),
# looks at up to `scan` rows and claims up to `count`: {cursor, {{id, fields, n}...}, deleted,
# own}, where `own` lists the caller's own idle ids, left alone (the caller knows which of them
# it holds; one it does not know of, say a read whose reply was lost, it claims back). The
# cursor is "0-0" once the walk reached the end. XCLAIM of an entry deleted from the stream
# returns nothing and (Redis 7) drops it from the PEL: those ids come back as deleted.
AUTOCLAIM = """
local start = ARGV[4]
if start ~= '0-0' then start = '(' .. start end
local scan = tonumber(ARGV[6])
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], start, '+', scan)
local out, deleted, own = {}, {}, {}
local want = tonumber(ARGV[5])
local cursor = '0-0'
for i, row in ipairs(rows) do
  if #out >= want then
    cursor = rows[i - 1][1]
    break
  end
  if row[2] == ARGV[2] then
    own[#own + 1] = row[1]
  else
    local got = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], row[1])
    if got[1] then
      out[#out + 1] = {got[1][1], got[1][2] or {}, row[4] + 1}
    else
      deleted[#deleted + 1] = row[1]
    end
  end
  if i == #rows and #rows >= scan then cursor = row[1] end
end
return {cursor, out, deleted, own}
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

# KEYS: stream, consumers zset; ARGV: group, consumer, min_idle_ms.
# Deletes the group's consumers that hold nothing, have been idle for min_idle_ms and have no
# live heartbeat, and forgets heartbeats of consumers the group no longer has. Atomic, so a
# consumer cannot take an entry between the check and DELCONSUMER (which would drop it).
PRUNE = (
    _NOW
    + """
local removed = {}
local known = {}
for _, row in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local c = {}
  for i = 1, #row - 1, 2 do c[row[i]] = row[i + 1] end
  local name = c['name']
  known[name] = true
  if name ~= ARGV[2] and tonumber(c['pending']) == 0
      and tonumber(c['idle']) >= tonumber(ARGV[3]) then
    local expiry = redis.call('ZSCORE', KEYS[2], name)
    if not expiry or tonumber(expiry) < now then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
      redis.call('ZREM', KEYS[2], name)
      removed[#removed + 1] = name
    end
  end
end
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]),
                         'LIMIT', 0, 100)
for _, name in ipairs(stale) do
  if not known[name] then redis.call('ZREM', KEYS[2], name) end
end
return removed
"""
)

# KEYS: stream; ARGV: maxlen or '', minid or '', then per entry: 2n, its n names and values.
# Returns the new ids. One script, so all or nothing: a refused write (maxmemory, ACL, wrong
# type) fails the first XADD, before anything is written, and Redis lets a script that has
# begun writing finish. (A MULTI/EXEC would do as well on one server, but redis-py's cluster
# client runs each queued command of a transaction in a thread of its own.) XADD takes one
# trim strategy: with both limits, the batch ends with an XTRIM MINID ~.
APPEND = """
local maxlen, minid = ARGV[1], ARGV[2]
local trim = {}
if maxlen ~= '' then trim = {'MAXLEN', '~', maxlen}
elseif minid ~= '' then trim = {'MINID', '~', minid} end
local ids = {}
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local args = {KEYS[1]}
  for _, t in ipairs(trim) do args[#args + 1] = t end
  args[#args + 1] = '*'
  for j = i + 1, i + n do args[#args + 1] = ARGV[j] end
  ids[#ids + 1] = redis.call('XADD', unpack(args))
  i = i + 1 + n
end
if maxlen ~= '' and minid ~= '' then redis.call('XTRIM', KEYS[1], 'MINID', '~', minid) end
return ids
"""

# KEYS: stream, dead stream; ARGV: group, consumer, id, error, deliveries, failed_at, fields,
# fields_b64, size (each written only when not empty: fields_b64 holds the exact names and
# values when they are not all UTF-8, size is set for an entry whose fields are not copied).
# Only an entry still ours is dead-lettered: one taken over by another consumer is theirs now.
# Both writes are checked before the first one (Redis does not undo a script that fails half
# way): a dead stream of the wrong type, or an ACL that refuses XADD there or XACK here, leaves
# the entry pending and ours, to be tried again, instead of a dead letter written twice. Under
# maxmemory the XADD (the first write) is refused before anything is written.
DEAD = (
    _OWNED
    + """
if not owned(ARGV[3]) then return 0 end
local t = redis.call('TYPE', KEYS[2])['ok']
if t ~= 'none' and t ~= 'stream' then
  return redis.error_reply('WRONGTYPE dead-letter key ' .. KEYS[2] .. ' holds a ' .. t ..
                           ', not a stream; the entry stays pending')
end
if redis.acl_check_cmd then
  if not redis.acl_check_cmd('XADD', KEYS[2], '*', 'original_id', ARGV[3]) then
    return redis.error_reply('NOPERM this user may not XADD to ' .. KEYS[2])
  end
  if not redis.acl_check_cmd('XACK', KEYS[1], ARGV[1], ARGV[3]) then
    return redis.error_reply('NOPERM this user may not XACK on ' .. KEYS[1])
  end
end
local letter = {'original_id', ARGV[3], 'group', ARGV[1], 'error', ARGV[4],
                'deliveries', ARGV[5], 'failed_at', ARGV[6], 'fields', ARGV[7]}
if ARGV[8] and ARGV[8] ~= '' then
  letter[#letter + 1] = 'fields_b64'
  letter[#letter + 1] = ARGV[8]
end
if ARGV[9] and ARGV[9] ~= '' then
  letter[#letter + 1] = 'size'
  letter[#letter + 1] = ARGV[9]
end
redis.call('XADD', KEYS[2], '*', unpack(letter))
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
"""
)


# Where Redis reports a nil lag, entries are counted: up to this many.
LAG_COUNT_LIMIT = 100_000


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~4x to create
class Entry:
    id: str
    flat: list[bytes]  # field names and values, alternating, as Redis returned them
    deliveries: int

    @property
    def fields(self) -> dict[bytes, bytes]:
        flat = self.flat
        return dict(zip(flat[::2], flat[1::2], strict=False))  # an even length: see _flat


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    error: str
    deliveries: int
    failed_at: str
    fields_json: str
    fields_b64: str = ""  # the exact names and values when they are not all UTF-8
    # Bytes of the entry's field names and values, recorded when its fields are not copied
    # (an entry over max_body_bytes); 0 otherwise.
    size: int = 0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _flat(raw: Any) -> list[bytes]:
    """An entry's field names and values, alternating, from whatever shape the reply has."""
    if type(raw) is list and not len(raw) % 2:
        return raw
    if isinstance(raw, dict):
        return [part for pair in raw.items() for part in pair]
    if not raw:
        return []
    if len(raw) % 2:
        raise ValueError(f"a stream entry with an odd number of field names and values: {raw!r}")
    return list(raw)


def _as_read(response: Any, **options: Any) -> Any:
    return response


def _replies_as_read(client: Any, command: str) -> None:
    """``client`` returns ``command``'s replies as the parser read them: redis-py's callback
    for XREADGROUP builds a dict per entry (``_fields`` builds it from the flat list for a
    fraction of the cost). Only the consumers' own clients are told so."""
    setter = getattr(client, "set_response_callback", None)
    if setter is not None:
        setter(command, _as_read)


def _is_entry(item: Any) -> bool:
    return isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], bytes | str)


def _entries(reply: Any) -> list[tuple[Any, Any]]:
    """The entries of an XREAD/XREADGROUP reply on one stream, whatever its shape.

    RESP2 gives ``[[stream, [entry, ...]]]``; redis-py's RESP3 parser gives
    ``{stream: [[entry, ...]]}`` (one more list); an empty read is ``[]``, ``{}`` or None.
    """
    if not reply:
        return []
    per_stream = reply.values() if isinstance(reply, dict) else (item[1] for item in reply)
    out: list[tuple[Any, Any]] = []
    for payload in per_stream:
        if not payload:
            continue
        if _is_entry(payload[0]):  # one shape per reply: look at the first entry only
            out.extend(payload)
        else:
            for group in payload:
                out.extend(group)
    return out


def is_nogroup(exc: BaseException) -> bool:
    """The group or the stream is gone (``NOGROUP``, or a blocked read told of the DEL)."""
    text = str(exc)
    return isinstance(exc, ResponseError) and (
        text.startswith("NOGROUP") or "no longer exists" in text
    )


def id_key(entry_id: str) -> tuple[int, int]:
    """An entry id as a sortable pair (``"5-1"`` -> ``(5, 1)``)."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class StreamTransport:
    def __init__(
        self,
        client: Any,
        stream: str,
        group: str | None = None,
        consumer: str = "",
        *,
        reader: Any = None,
    ) -> None:
        self.client = client
        self.reader = client if reader is None else reader  # the blocking reads' client
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
        self._prune = client.register_script(PRUNE)
        self._append = client.register_script(APPEND)
        self._full = False  # the last group read came back full

    @classmethod
    def for_consumer(
        cls, conn: Connection, stream: str, group: str | None, consumer: str
    ) -> StreamTransport:
        """A consumer's transport: bookkeeping on the consumers' client, reads blocking."""
        client, reader = clients.consuming(conn), clients.blocking(conn)
        for used in (client, reader):
            _replies_as_read(used, "XREADGROUP")
        return cls(client, stream, group, consumer, reader=reader)

    @classmethod
    def for_producer(
        cls, conn: Connection, stream: str, group: str | None = None
    ) -> StreamTransport:
        """A producer's (or an observer's) transport, on the producing client."""
        return cls(clients.producing(conn), stream, group)

    def produces_on(self, conn: Connection) -> bool:
        """Whether this transport talks through ``conn``'s current producing client (it is
        made again after a reconnect)."""
        return self.client is clients.producing(conn)

    # producing ---------------------------------------------------------------------------
    async def append(
        self,
        entries: Sequence[Mapping[str, str | bytes]],
        maxlen: int | None,
        min_ms: int | None = None,
    ) -> list[str]:
        """XADD every entry in one script (all or nothing, see APPEND), trimming with
        ``MAXLEN ~`` on each; entries older than ``min_ms`` (ms since the epoch) are trimmed
        with ``MINID ~`` as well."""
        minid = "" if min_ms is None else f"{min_ms}-0"
        args: list[Any] = ["" if maxlen is None else maxlen, minid]
        for fields in entries:
            args.append(2 * len(fields))
            for name, value in fields.items():
                args += (name, value)
        ids = await self._append(keys=[self.stream], args=args)
        return [_text(i) for i in ids]

    async def append_one(
        self, fields: Mapping[str, str | bytes], maxlen: int | None, min_ms: int | None = None
    ) -> str:
        """``append`` of one entry as a plain XADD, atomic by itself: the same trimming, the
        same errors (WRONGTYPE, OOM, NOPERM refuse it before anything is written), one command
        instead of a script. With both limits the script runs: XADD takes one trim strategy."""
        if maxlen is not None and min_ms is not None:
            return (await self.append((fields,), maxlen, min_ms))[0]
        if maxlen is not None:
            args: list[Any] = ["XADD", self.stream, "MAXLEN", "~", maxlen, "*"]
        elif min_ms is not None:
            args = ["XADD", self.stream, "MINID", "~", f"{min_ms}-0", "*"]
        else:
            args = ["XADD", self.stream, "*"]
        for pair in fields.items():
            args += pair
        return _text(await self.client.execute_command(*args))

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

    async def join(self) -> None:
        """Appear in XINFO CONSUMERS now: before Redis 7.2 a read that returns nothing does
        not create the consumer, and tools count the group's consumers from there."""
        await self.client.xgroup_createconsumer(self.stream, self.group, self.consumer)

    async def read_group(self, count: int, block_ms: int | None) -> list[Entry]:
        """XREADGROUP up to ``count`` new entries, blocking up to ``block_ms`` (None: not at
        all). While reads come back full (a backlog) the next one does not block and goes
        through the consumers' client: the blocking reads' client has a socket timeout, and
        redis-py then wraps every send and read in an asyncio timeout of its own."""
        client, args = self.client, ["GROUP", self.group, self.consumer, "COUNT", count]
        if block_ms is not None and not self._full:
            client = self.reader
            args += ["BLOCK", block_ms]
        reply = await client.execute_command("XREADGROUP", *args, "STREAMS", self.stream, ">")
        entries = [
            Entry(i.decode(), f, 1)
            if type(f) is list and not len(f) % 2 and type(i) is bytes
            else Entry(_text(i), _flat(f), 1)
            for i, f in _entries(reply)
        ]
        self._full = len(entries) >= count
        return entries

    async def read_tail(self, after: str, count: int, block_ms: int | None) -> list[Entry]:
        reply = await self.reader.xread({self.stream: after}, count=count, block=block_ms)
        return [Entry(_text(i), _flat(f), 0) for i, f in _entries(reply)]

    async def last_id(self) -> str:
        last = await self.client.xrevrange(self.stream, count=1)
        return _text(last[0][0]) if last else "0-0"

    async def throttle(self, key: str, delay_ms: int) -> None:
        """Hold the group's consumers off for ``delay_ms`` (``RateLimited``): ``key`` is set
        to expire then."""
        await self.client.set(key, "1", px=max(1, delay_ms))

    async def held_off(self, *flags: str) -> bool:
        """True while any of the ``flags`` keys (pause, throttle) exists."""
        return bool(await self.client.exists(*flags))

    # settling ---------------------------------------------------------------------------
    async def ack(self, ids: Sequence[str]) -> None:
        """Ack: XACK ``ids`` in one call (they leave the group's pending list; the entries
        stay in the stream until trimmed). A group or stream deleted meanwhile has nothing
        left to settle."""
        if not ids:
            return
        try:
            await self.client.xack(self.stream, self.group, *ids)
        except ResponseError as exc:
            if not is_nogroup(exc):
                raise

    async def dead_letter(self, letter: DeadLetter) -> None:
        """Dead letter: XADD the entry with its error to ``<stream>:dead`` and XACK it
        here, in one script (DEAD) that checks the dead-letter key's type first."""
        try:
            await self._dead(
                keys=[self.stream, self.dead],
                args=[
                    self.group,
                    self.consumer,
                    letter.id,
                    letter.error,
                    letter.deliveries,
                    letter.failed_at,
                    letter.fields_json,
                    letter.fields_b64,
                    letter.size or "",
                ],
            )
        except ResponseError as exc:
            if not is_nogroup(exc):
                raise

    # ownership ---------------------------------------------------------------------------
    async def retry(self, ids: Sequence[str]) -> list[Entry]:
        """Deliver again entries this consumer holds (those due for a retry, or taken back
        after a lost read reply): XCLAIM to itself, which counts one more delivery; entries
        another consumer claimed meanwhile are skipped (CLAIM_OWN)."""
        reply = await self._claim_own(keys=[self.stream], args=[self.group, self.consumer, *ids])
        return [Entry(_text(i), _flat(f), int(n)) for i, f, n in reply]

    async def touch(self, ids: Sequence[str]) -> list[str]:
        """Keep our entries fresh; returns the ids that are no longer ours."""
        if not ids:
            return []
        lost = await self._touch(keys=[self.stream], args=[self.group, self.consumer, *ids])
        return [_text(i) for i in lost]

    async def handback(self, entries: Sequence[tuple[str, int]]) -> int:
        """Hand back ``(id, delivery count to keep)`` entries this consumer will not finish
        (at a stop): XCLAIM to itself with a year's IDLE, so any consumer's recovery claims
        them at once, and the delivery count kept (RELEASE)."""
        if not entries:
            return 0
        args: list[Any] = [self.group, self.consumer, RELEASED_IDLE_MS]
        for entry_id, deliveries in entries:
            args += [entry_id, max(deliveries, 0)]
        return int(await self._release(keys=[self.stream], args=args))

    async def recover(
        self, min_idle_ms: int, cursor: str, count: int, scan: int = 100
    ) -> tuple[str, list[Entry], list[str], list[str]]:
        """Recovery (AUTOCLAIM: a walk of XPENDING IDLE, then XCLAIM): claim up to ``count``
        entries of other consumers idle for ``min_idle_ms``, looking at up to ``scan``
        pending entries from ``cursor``; never the caller's own entries.
        Returns the next cursor, the claimed entries, the ids deleted from the stream, and
        the ids of the caller's own idle entries (not claimed)."""
        nxt, claimed, deleted, own = await self._autoclaim(
            keys=[self.stream],
            args=[self.group, self.consumer, min_idle_ms, cursor, max(count, 1), max(scan, count)],
        )
        entries = [Entry(_text(i), _flat(f), int(n)) for i, f, n in claimed]
        return _text(nxt), entries, [_text(d) for d in deleted], [_text(i) for i in own]

    # liveness ----------------------------------------------------------------------------
    async def heartbeat(self, lease_ms: int) -> None:
        await self._heartbeat(keys=[self.consumers], args=[self.consumer, lease_ms])

    async def leave(self) -> None:
        await self._leave(keys=[self.stream, self.consumers], args=[self.group, self.consumer])

    async def prune_consumers(self, min_idle_ms: int) -> list[str]:
        """Delete group consumers that hold nothing, are idle and have no live heartbeat."""
        removed = await self._prune(
            keys=[self.stream, self.consumers], args=[self.group, self.consumer, min_idle_ms]
        )
        return [_text(n) for n in removed]

    async def group_info(self) -> dict[str, Any] | None:
        """The group's XINFO GROUPS row; None when the group or the stream does not exist."""
        try:
            groups = await self.client.xinfo_groups(self.stream)
        except ResponseError as exc:
            if "no such key" in str(exc):
                return None
            raise
        for info in groups:
            decoded = {_text(k): v for k, v in info.items()}
            if _text(decoded.get("name", "")) == self.group:
                return decoded
        return None

    async def count_after(self, entry_id: str, limit: int) -> int:
        """Entries after ``entry_id``, counted up to ``limit`` in pages (XRANGE returns whole
        entries: one reply of a million would weigh hundreds of MB)."""
        counted, after = 0, entry_id
        while counted < limit:
            page = await self.client.xrange(
                self.stream, f"({after}", "+", count=min(1000, limit - counted)
            )
            if not page:
                break
            counted += len(page)
            after = _text(page[-1][0])
        return counted

    async def lag(self, info: Mapping[str, Any], limit: int) -> int:
        """The group's lag from its XINFO GROUPS row; counted (up to ``limit``) when Redis
        reports nil, as Redis 7 does after an XDEL of an entry the group has not read yet or
        for a group created at an arbitrary id."""
        lag = info.get("lag")
        if lag is not None:
            return int(lag)
        return await self.count_after(position(info), limit)


def position(info: Mapping[str, Any]) -> str:
    """The group's last delivered id, from its XINFO GROUPS row."""
    return _text(info.get("last-delivered-id", "0-0"))


async def group_lag(transport: StreamTransport, limit: int = LAG_COUNT_LIMIT) -> int | None:
    """Entries not yet delivered to the transport's group (XINFO GROUPS ``lag``, counted
    when Redis reports nil); None when the group does not exist."""
    info = await transport.group_info()
    if info is None:
        return None
    return await transport.lag(info, limit)
