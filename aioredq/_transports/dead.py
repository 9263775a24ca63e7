"""Dead letters for ``dead``: read, requeue and purge, one handler's letters at a time.

Every operation walks the dead-letter key in pages and changes it in small atomic scripts, so
its cost is linear in the number of letters and Redis is never blocked for long (a page holds
at most ``PAGE_LETTERS`` letters or about ``PAGE_BYTES`` bytes; a single letter larger than that
is a page of its own). Each script checks every destination and writes the copy before it
removes the letter: a requeue that is interrupted, refused (WRONGTYPE, OOM) or run twice at once
leaves every letter either still dead or requeued once, never lost or doubled.

A stream's dead letters of group ``g`` are the entries of ``{s}:dead`` whose ``group`` field is
``g`` (entries without one were written by another program: every group's handler sees them). A
requeued letter goes back onto the stream with the reserved field ``TARGET_FIELD`` naming its
group: aioredq consumers of the other groups (and group-less tails) acknowledge such an entry
without running it, and the target group's handler never sees the field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import clients, keys
from .lua import ATTEMPTS, PUSH_ALL, WRONG

TARGET_FIELD = "aioredq-group"
PAGE_LETTERS = 1000
# A stream letter costs Redis more to move (a lookup, an XADD, an XDEL): smaller pages.
STREAM_PAGE_LETTERS = 250
PAGE_BYTES = 1 << 20
# Lua's unpack() takes a few thousand values; an entry with more fields cannot be re-added.
MAX_FIELDS = 2000

_ENVELOPE_PREFIX = b'{"aioredq":1,"attempts":'

# KEYS: dead list, queue. ARGV: k, flags, the k letters at the tail of the dead list (as LRANGE
# -k -1 returns them), then the items to push (oldest first). flags has one character per
# letter: 'r' requeue, 'k' keep (a letter that cannot be read: it moves to the newest end of
# the dead list, so the walk goes on past it). Returns the number requeued, or -1 when the tail
# is no longer what the caller read (another run took it): read again.
REQUEUE_TAIL = (
    WRONG
    + PUSH_ALL
    + """
local k = tonumber(ARGV[1])
local bad = wrong(KEYS[2], 'list')
if bad then return redis.error_reply(bad) end
local tail = redis.call('LRANGE', KEYS[1], -k, -1)
if #tail ~= k then return -1 end
for i = 1, k do
  if tail[i] ~= ARGV[2 + i] then return -1 end
end
local items = {}
for i = 3 + k, #ARGV do items[#items + 1] = ARGV[i] end
push_all('LPUSH', KEYS[2], items)
redis.call('LTRIM', KEYS[1], 0, -k - 1)
local keep = {}
for i = k, 1, -1 do
  if string.sub(ARGV[2], i, i) == 'k' then keep[#keep + 1] = tail[i] end
end
push_all('LPUSH', KEYS[1], keep)
return #items
"""
)

# KEYS: dead list, queue. ARGV: letter, item. One letter chosen by id: found from the tail
# (where the oldest letters are), copied, then removed.
REQUEUE_ONE = (
    WRONG
    + """
local bad = wrong(KEYS[2], 'list')
if bad then return redis.error_reply(bad) end
if not redis.call('LPOS', KEYS[1], ARGV[1], 'RANK', -1) then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LREM', KEYS[1], -1, ARGV[1])
return 1
"""
)

# KEYS: dead list, queue, the string key that keeps an oversized item (a letter's
# ``body_key``). ARGV: letter. The item goes back with its delivery count at 0 and the letter
# and the key are removed; 0 when either is gone (another run took it).
REQUEUE_ASIDE = (
    WRONG
    + ATTEMPTS
    + """
local bad = wrong(KEYS[2], 'list')
if bad then return redis.error_reply(bad) end
if redis.call('TYPE', KEYS[3]).ok ~= 'string' then return 0 end
if not redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
local item = redis.call('GET', KEYS[3])
local n = attempts_of(item)
if n then item = prefix .. '0' .. string.sub(item, #prefix + #n + 1) end
redis.call('LPUSH', KEYS[2], item)
redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('DEL', KEYS[3])
return 1
"""
)

# KEYS: stream, dead stream. ARGV: target field, group, then per letter: dead id, 2n, n field
# names and values. Each letter still there is appended (with the target field) and deleted.
REQUEUE_ENTRIES = (
    WRONG
    + """
local bad = wrong(KEYS[1], 'stream')
if bad then return redis.error_reply(bad) end
local moved = 0
local i = 3
while i <= #ARGV do
  local id, n = ARGV[i], tonumber(ARGV[i + 1])
  if #redis.call('XRANGE', KEYS[2], id, id) > 0 then
    local args = {}
    for j = i + 2, i + 1 + n do args[#args + 1] = ARGV[j] end
    args[#args + 1] = ARGV[1]
    args[#args + 1] = ARGV[2]
    redis.call('XADD', KEYS[1], '*', unpack(args))
    redis.call('XDEL', KEYS[2], id)
    moved = moved + 1
  end
  i = i + 2 + n
end
return moved
"""
)

# KEYS: dead stream. ARGV: ids. Deletes them; the key goes when nothing is left in it.
PURGE_ENTRIES = """
local n = 0
for i = 1, #ARGV, 1000 do
  n = n + redis.call('XDEL', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if redis.call('XLEN', KEYS[1]) == 0 and #redis.call('XINFO', 'GROUPS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
end
return n
"""

# KEYS: dead list. Returns how many letters it held; UNLINK frees a long list off the main
# thread.
PURGE_LIST = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'list' then return 0 end
local n = redis.call('LLEN', KEYS[1])
redis.call('UNLINK', KEYS[1])
return n
"""


class BadLetter(ValueError):
    """A dead letter that cannot be requeued (written by another program in another shape)."""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _page_count(count: int, page_bytes: int, limit: int = PAGE_LETTERS) -> int:
    """The next page's length: as many letters as fit in ``PAGE_BYTES`` at the last size."""
    if page_bytes <= 0:
        return limit
    return max(1, min(limit, count * PAGE_BYTES // page_bytes))


# queues ----------------------------------------------------------------------------------
def letter_item(letter: bytes) -> bytes:
    """The item a queue's dead letter carries (``body``, or ``body_b64``), its delivery count
    back at 0."""
    try:
        data = json.loads(letter)
        if "body_b64" in data:
            item = base64.b64decode(data["body_b64"], validate=True)
        else:
            body = data["body"]
            if not isinstance(body, str):  # another program's letter: its JSON body as JSON
                item = json.dumps(body).encode()
            else:
                item = body.encode("utf-8", "surrogateescape")
    except (ValueError, TypeError, KeyError, binascii.Error, UnicodeEncodeError):
        raise BadLetter("not a JSON object with a 'body' or 'body_b64'") from None
    if item.startswith(_ENVELOPE_PREFIX):
        comma = item.find(b",", len(_ENVELOPE_PREFIX))
        if comma > 0 and item[len(_ENVELOPE_PREFIX) : comma].isdigit():
            item = _ENVELOPE_PREFIX + b"0" + item[comma:]
    return item


def aside_key(letter: bytes, queue: str) -> str | None:
    """The key that keeps an oversized item (a letter's ``body_key``), if the letter has one
    of this queue's."""
    try:
        data = json.loads(letter)
    except ValueError:
        return None
    key = data.get("body_key") if isinstance(data, dict) else None
    return key if isinstance(key, str) and key.startswith(keys.dead(queue) + ":") else None


def letter_id(letter: bytes) -> str | None:
    try:
        data = json.loads(letter)
    except ValueError:
        return None
    return str(data.get("id")) if isinstance(data, dict) else None


async def queue_letters(client: Any, queue: str, count: int) -> list[bytes]:
    """The newest ``count`` dead letters of ``queue``, newest first."""
    client = clients.producing(client)
    return list(await client.lrange(keys.dead(queue), 0, count - 1))


async def queue_dead_count(client: Any, queue: str) -> int:
    client = clients.producing(client)
    return int(await client.llen(keys.dead(queue)))


@dataclass
class Outcome:
    moved: int = 0
    bad: list[str] | None = None
    found: set[str] | None = None

    def skip(self, problem: str) -> None:
        self.bad = [*(self.bad or []), problem]


async def requeue_queue_all(client: Any, queue: str) -> Outcome:
    """Requeue every dead letter of ``queue``, oldest first, in pages taken from the tail.
    Letters that cannot be read stay dead (at the newest end) and are reported."""
    client = clients.producing(client)
    dead = keys.dead(queue)
    script = client.register_script(REQUEUE_TAIL)
    aside_script = client.register_script(REQUEUE_ASIDE)
    outcome = Outcome()
    reported: set[bytes] = set()  # digests of the unreadable letters named already
    # The letters there at the start: those moved to the newest end, and those dead-lettered
    # meanwhile, come after them, so counting is how the walk knows it has been round once.
    remaining = int(await client.llen(dead))
    count = min(64, PAGE_LETTERS)
    while remaining > 0:
        page = await client.lrange(dead, -min(count, remaining), -1)
        if not page:
            break
        letters = page[::-1]  # oldest first
        flags, items, problems, asides = [], [], [], []
        for letter in letters:
            key = aside_key(letter, queue)
            if key is not None:  # kept in the page, then requeued from its key
                flags.append("k")
                asides.append((letter, key))
                continue
            try:
                items.append(letter_item(letter))
                flags.append("r")
            except BadLetter as exc:
                flags.append("k")
                problem = f"dead letter {letter_id(letter) or letter[:60]!r}: {exc}"
                problems.append((hashlib.sha1(letter).digest(), problem))
        k = len(letters)
        flag_text = "".join(reversed(flags))  # in list order, as LRANGE returned the page
        moved = int(await script(keys=[dead, queue], args=[k, flag_text, *page, *items]))
        if moved < 0:  # another run changed the tail: read it again
            continue
        for digest, problem in problems:
            if digest not in reported:
                reported.add(digest)
                outcome.skip(problem)
        for letter, key in asides:
            moved += int(await aside_script(keys=[dead, queue, key], args=[letter]))
        outcome.moved += moved
        remaining -= k
        count = _page_count(k, sum(map(len, letters)))
    return outcome


async def requeue_queue_ids(client: Any, queue: str, ids: set[str]) -> Outcome:
    """Requeue the dead letters of ``queue`` whose message id is in ``ids``, oldest first."""
    client = clients.producing(client)
    dead = keys.dead(queue)
    script = client.register_script(REQUEUE_ONE)
    aside_script = client.register_script(REQUEUE_ASIDE)
    outcome = Outcome(found=set())
    offset, count = 0, 64  # letters already read, counted from the tail
    while True:
        page = await client.lrange(dead, -(offset + count), -(offset + 1))
        if not page:
            break
        removed = 0
        for letter in reversed(page):
            msg_id = letter_id(letter)
            if msg_id not in ids:
                continue
            assert outcome.found is not None and msg_id is not None
            outcome.found.add(msg_id)
            key = aside_key(letter, queue)
            if key is not None:
                moved = int(await aside_script(keys=[dead, queue, key], args=[letter]))
                outcome.moved += moved
                removed += moved
                continue
            try:
                item = letter_item(letter)
            except BadLetter as exc:
                outcome.skip(f"dead letter {msg_id!r}: {exc}")
                continue
            moved = int(await script(keys=[dead, queue], args=[letter, item]))
            outcome.moved += moved
            removed += moved
        offset += len(page) - removed
        if len(page) < count:
            break
        count = _page_count(len(page), sum(map(len, page)))
    return outcome


# streams ---------------------------------------------------------------------------------
def _is_ours(fields: Mapping[bytes, bytes], group: str) -> bool:
    owner = fields.get(b"group")
    return not owner or owner == group.encode()


async def stream_letter_pages(
    client: Any, stream: str, group: str, *, newest_first: bool = False
) -> AsyncIterator[list[tuple[str, dict[bytes, bytes]]]]:
    """The group's dead letters of ``stream`` in pages (oldest first unless ``newest_first``);
    each letter is ``(dead entry id, raw fields)``."""
    client = clients.producing(client)
    dead = keys.dead(stream)
    bound, count = None, 64
    while True:
        if newest_first:
            high = "+" if bound is None else f"({bound}"
            rows = await client.xrevrange(dead, high, "-", count=count)
        else:
            low = "-" if bound is None else f"({bound}"
            rows = await client.xrange(dead, low, "+", count=count)
        if not rows:
            return
        bound = _text(rows[-1][0])
        page = [(_text(i), dict(f)) for i, f in rows if _is_ours(f, group)]
        if page:
            yield page
        if len(rows) < count:
            return
        size = sum(len(k) + len(v) for _, f in rows for k, v in f.items())
        count = _page_count(len(rows), size, STREAM_PAGE_LETTERS)


def original_fields(letter: Mapping[bytes, bytes]) -> list[bytes]:
    """The original entry's field names and values, byte for byte, from ``fields_b64`` (a
    JSON list of base64 names and values, written when they are not all UTF-8) or ``fields``."""
    out: list[bytes] = []
    try:
        if b"fields_b64" in letter:
            flat = json.loads(letter[b"fields_b64"])
            if not isinstance(flat, list) or len(flat) % 2:
                raise BadLetter("its 'fields_b64' is not a JSON list of names and values")
            out = [base64.b64decode(v, validate=True) for v in flat]
        else:
            original = json.loads(letter[b"fields"])
            if not isinstance(original, dict):
                raise BadLetter("its 'fields' is not a JSON object")
            for k, v in original.items():
                text = v if isinstance(v, str) else json.dumps(v)
                # A letter written before fields_b64 existed escaped non-UTF-8 bytes as lone
                # surrogates: surrogateescape gives the original bytes back.
                out += [
                    k.encode("utf-8", "surrogateescape"),
                    text.encode("utf-8", "surrogateescape"),
                ]
    except KeyError:
        raise BadLetter("no 'fields' JSON object") from None
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        raise BadLetter("its 'fields' cannot be read back as the original fields") from None
    if not out and b"size" in letter:
        raise BadLetter(
            f"its entry ({_text(letter[b'size'])} bytes, over max_body_bytes) was not copied: "
            f"it is still in the stream under {_text(letter.get(b'original_id', b'?'))} "
            "unless trimmed"
        )
    if not out:
        raise BadLetter("its 'fields' is empty")
    if len(out) > 2 * MAX_FIELDS:
        raise BadLetter(f"more than {MAX_FIELDS} fields")
    return out


def dead_fields(fields: Mapping[bytes, bytes]) -> tuple[str, str]:
    """A dead letter's ``fields`` (JSON text, UTF-8) and ``fields_b64`` (empty unless a name or
    value is not UTF-8: then base64 names and values, exact, as a JSON list)."""
    try:
        return json.dumps({k.decode(): v.decode() for k, v in fields.items()}), ""
    except UnicodeDecodeError:
        text = {
            k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in fields.items()
        }
        flat = [base64.b64encode(x).decode() for pair in fields.items() for x in pair]
        return json.dumps(text), json.dumps(flat)


async def requeue_stream(client: Any, stream: str, group: str, ids: set[str] | None) -> Outcome:
    """Append the group's dead letters (every one, or those whose dead-entry or original id is
    in ``ids``) back onto ``stream`` for ``group`` only, oldest first, and delete them."""
    client = clients.producing(client)
    dead = keys.dead(stream)
    script = client.register_script(REQUEUE_ENTRIES)
    outcome = Outcome(found=None if ids is None else set())
    async for page in stream_letter_pages(client, stream, group):
        args: list[Any] = [TARGET_FIELD, group]
        for dead_id, fields in page:
            if ids is not None:
                original = _text(fields.get(b"original_id", b""))
                wanted = {dead_id, original} & ids
                if not wanted:
                    continue
                assert outcome.found is not None
                outcome.found |= wanted
            try:
                flat = original_fields(fields)
            except BadLetter as exc:
                outcome.skip(f"dead entry {dead_id}: {exc}")
                continue
            args += [dead_id, len(flat), *flat]
        if len(args) > 2:
            outcome.moved += int(await script(keys=[stream, dead], args=args))
    return outcome


async def stream_dead_count(client: Any, stream: str, group: str) -> int:
    client = clients.producing(client)
    n = 0
    async for page in stream_letter_pages(client, stream, group):
        n += len(page)
    return n


async def purge_stream(client: Any, stream: str, group: str) -> int:
    """Delete the group's dead letters of ``stream``; returns how many."""
    client = clients.producing(client)
    dead = keys.dead(stream)
    script = client.register_script(PURGE_ENTRIES)
    n = 0
    async for page in stream_letter_pages(client, stream, group):
        n += int(await script(keys=[dead], args=[i for i, _ in page]))
    return n


async def purge_queue(client: Any, queue: str) -> int:
    """Delete every dead letter of ``queue``, and the keys that keep oversized items beside
    them (``{q}:dead:<id>``); returns how many letters there were. The keys are listed before
    the letters go, so a key written meanwhile stays with its letter."""
    client = clients.producing(client)
    aside = await _aside_keys(client, queue)
    n = int(await client.register_script(PURGE_LIST)(keys=[keys.dead(queue)]))
    for i in range(0, len(aside), 1000):
        await client.unlink(*aside[i : i + 1000])
    return n


async def _aside_keys(client: Any, queue: str) -> list[str]:
    """Every ``{q}:dead:<id>`` string key, found with SCAN (on a cluster, on the queue's
    node only: the keys share its slot)."""
    options: dict[str, Any] = {}
    if hasattr(client, "get_node_from_key"):
        options["target_nodes"] = client.get_node_from_key(queue)
    match = keys.glob_escape(keys.dead(queue) + ":") + "*"
    found: list[str] = []
    cursor = 0
    while True:
        nxt, page = await client.scan(cursor, match=match, count=1000, _type="string", **options)
        if isinstance(nxt, dict):  # a cluster client gives a cursor per node
            nxt = next(iter(nxt.values()), 0)
        found += [_text(k) for k in page]
        cursor = int(nxt)
        if cursor == 0:
            return found


async def queue_letter_range(client: Any, queue: str, start: int, count: int) -> list[bytes]:
    """``count`` of the queue's dead letters from index ``start`` (newest first)."""
    client = clients.producing(client)
    return list(await client.lrange(keys.dead(queue), start, start + count - 1))


async def stream_letter_range(client: Any, stream: str, high: str, count: int) -> list[Any]:
    """Up to ``count`` dead entries of ``stream`` from ``high`` down (XREVRANGE), every
    group's."""
    client = clients.producing(client)
    return list(await client.xrevrange(keys.dead(stream), high, "-", count=count))
