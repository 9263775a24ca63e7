"""Read-only figures for ``inspect`` and the metrics, and the dead-letter listing of
``aioredq.testing``.

Each figure is read on its own: a key of the wrong type or a command the ACL refuses makes
that figure None and names it in the row's ``errors`` (figure -> reason); the other figures are
still read. A Redis that cannot be reached still fails the whole read.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import ResponseError

from . import clients, keys
from .pubsub import subscriber_counts
from .stream import LAG_COUNT_LIMIT, StreamTransport, id_key, position

# The commands of ``inspect`` and ``dead`` per model, their scripts' included (see
# queue.COMMANDS and dead.py); pub/sub's counts are in pubsub.COMMANDS.
TASK_COMMANDS = (
    *("time", "zrange", "zcard", "llen", "lrange", "lindex", "lpos", "lpush", "lrem", "ltrim"),
    *("type", "del", "unlink", "get", "scan", "evalsha", "script|load"),
)
STREAM_COMMANDS = (
    *("time", "exists", "zrangebyscore", "xlen", "xrange", "xrevrange", "xpending"),
    *("xinfo|groups", "xinfo|consumers", "xadd", "xdel", "type", "del", "unlink"),
    *("evalsha", "script|load"),
)

T = TypeVar("T")
FIGURES = (
    "length",
    "lag",
    "pending",
    "processing",
    "delayed",
    "dead",
    "consumers",
    "oldest_pending_s",
    "subscribers",
)

# KEYS: lists. The first bytes of the item at the tail of each (the next to be taken from a
# queue; the longest held in a processing list), or false: enough to read an envelope's
# enqueued_at without copying a large item over the network.
OLDEST_ITEMS = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = false
  if redis.call('TYPE', key).ok == 'list' then
    local item = redis.call('LINDEX', key, -1)
    if item then out[i] = string.sub(item, 1, 256) end
  end
end
return out
"""
_ENQUEUED = re.compile(
    rb'\{"aioredq":1,"attempts":\d+,"id":"(?:[^"\\]|\\.)*","enqueued_at":(\d+(?:\.\d+)?)[,}]'
)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


async def server_ms(client: Any) -> int:
    client = clients.producing(client)
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _reason(exc: ResponseError, key: str | None) -> str:
    text = " ".join(str(exc).split())
    return text if key is None else f"{text} (key {key!r})"


class _Row:
    """The figures of one handler, each None until read, and why the unreadable ones are."""

    def __init__(self) -> None:
        self.figures: dict[str, Any] = dict.fromkeys(FIGURES)
        self.errors: dict[str, str] = {}

    def fail(self, reason: str, *names: str) -> None:
        for name in names:
            self.errors.setdefault(name, reason)

    async def read(
        self, call: Callable[[], Awaitable[T]], key: str | None, *names: str
    ) -> T | None:
        """``await call()``; None when Redis refuses it, and ``names`` marked with the reason
        (and the ``key`` read)."""
        try:
            return await call()
        except ResponseError as exc:
            self.fail(_reason(exc, key), *names)
            return None

    def done(self) -> dict[str, Any]:
        return {**self.figures, "errors": self.errors} if self.errors else self.figures


def _age_s(now_ms: int, then_ms: float) -> float:
    return round(max(now_ms - then_ms, 0) / 1000, 3)


async def task_figures(client: Any, queue: str) -> dict[str, Any]:
    client = clients.producing(client)
    row = _Row()
    now = await server_ms(client)
    members = await row.read(
        lambda: client.zrange(keys.consumers(queue), 0, -1, withscores=True),
        keys.consumers(queue),
        "consumers",
        "processing",
    )
    names = [_text(name) for name, _ in members or []]
    if members is not None:
        alive = sum(1 for _, score in members if score >= now)
        row.figures["consumers"] = {"alive": alive, "dead": len(members) - alive}
    pipe = client.pipeline(transaction=False)
    pipe.llen(queue)
    pipe.zcard(keys.delayed(queue))
    pipe.llen(keys.dead(queue))
    for level in range(1, 10):
        pipe.llen(keys.priority(queue, level))
    for name in names:
        pipe.llen(keys.processing(queue, name))
    length, delayed, dead, *rest = await pipe.execute(raise_on_error=False)
    ranked, processing = rest[:9], rest[9:]
    # Waiting jobs of every priority count in the length (a wrong-typed list is reported).
    for level, value in enumerate(ranked, 1):
        if isinstance(value, ResponseError):
            row.fail(_reason(value, keys.priority(queue, level)), "length")
        elif not isinstance(length, ResponseError):
            length = int(length) + int(value)
    for figure, key, value in (
        ("length", queue, length),
        ("delayed", keys.delayed(queue), delayed),
        ("dead", keys.dead(queue), dead),
    ):
        if figure in row.errors:
            continue
        if isinstance(value, ResponseError):
            row.fail(_reason(value, key), figure)
        else:
            row.figures[figure] = int(value)
    refused = [
        (n, v) for n, v in zip(names, processing, strict=True) if isinstance(v, ResponseError)
    ]
    if refused:
        name, exc = refused[0]
        row.fail(_reason(exc, keys.processing(queue, name)), "processing")
    elif members is not None:
        row.figures["processing"] = sum(int(n) for n in processing)
    lists = [queue, *(keys.processing(queue, name) for name in names)]
    script = client.register_script(OLDEST_ITEMS)
    heads = await row.read(lambda: script(keys=lists), queue, "oldest_pending_s")
    stamps = [float(m[1]) for h in heads or [] if h and (m := _ENQUEUED.match(h))]
    if stamps:
        row.figures["oldest_pending_s"] = _age_s(now, min(stamps) * 1000)
    return row.done()


async def stream_figures(client: Any, stream: str, group: str | None) -> dict[str, Any]:
    client = clients.producing(client)
    row = _Row()
    group_figures = ("lag", "pending", "consumers", "oldest_pending_s") if group else ()
    length = await row.read(lambda: client.xlen(stream), stream, "length", *group_figures)
    dead = await row.read(lambda: client.xlen(keys.dead(stream)), keys.dead(stream), "dead")
    row.figures["length"] = None if length is None else int(length)
    row.figures["dead"] = None if dead is None else int(dead)
    if group is None or length is None or (not length and not await client.exists(stream)):
        return row.done()
    transport = StreamTransport(client, stream, group)
    info = await row.read(transport.group_info, stream, *group_figures)
    if info is None:
        return row.done()
    row.figures["lag"] = await row.read(lambda: transport.lag(info, LAG_COUNT_LIMIT), stream, "lag")
    row.figures["pending"] = int(info.get("pending", 0))
    now = await server_ms(client)
    live = await row.read(
        lambda: client.zrangebyscore(keys.consumers(stream, group), now, "+inf"),
        keys.consumers(stream, group),
        "consumers",
    )
    members = await row.read(lambda: client.xinfo_consumers(stream, group), stream, "consumers")
    if live is not None and members is not None:
        names = {_text(c.get("name", "")) for c in members}
        alive = len(names & {_text(n) for n in live})
        row.figures["consumers"] = {"alive": alive, "dead": len(names) - alive}
    # The oldest unfinished entry: the oldest still pending (delivered, not acknowledged) or
    # the first not delivered yet. Its age comes from its id (when it was added), not from
    # its last delivery, which upkeep and hand-back keep moving.
    oldest: list[str] = []
    if row.figures["pending"]:
        summary = await row.read(lambda: client.xpending(stream, group), stream, "oldest_pending_s")
        if summary and summary.get("min"):
            oldest.append(_text(summary["min"]))
    nxt = await row.read(
        lambda: client.xrange(stream, f"({position(info)}", "+", count=1),
        stream,
        "oldest_pending_s",
    )
    if nxt:
        oldest.append(_text(nxt[0][0]))
    if oldest:
        row.figures["oldest_pending_s"] = _age_s(now, min(id_key(i) for i in oldest)[0])
    return row.done()


async def subscribe_figures(client: Any, channels: list[str], sharded: bool) -> dict[str, Any]:
    client = clients.producing(client)
    row = _Row()
    if channels:
        counts = await row.read(
            lambda: subscriber_counts(client, channels, sharded), None, "subscribers"
        )
        if counts is not None:
            row.figures["subscribers"] = sum(counts.values())
    return row.done()


# dead letters --------------------------------------------------------------------------------
async def queue_dead_letters(client: Any, queue: str, count: int | None) -> list[bytes]:
    client = clients.producing(client)
    return list(await client.lrange(keys.dead(queue), 0, -1 if count is None else count - 1))


async def stream_dead_letters(
    client: Any, stream: str, count: int | None
) -> list[tuple[str, dict[str, str]]]:
    client = clients.producing(client)
    rows = await client.xrevrange(keys.dead(stream), count=count)
    return [(_text(i), {_text(k): _text(v) for k, v in f.items()}) for i, f in rows]


# KEYS: processing lists. The first bytes of up to 100 items of each (oldest first), enough to
# read an envelope's id and enqueued_at without copying large items over the network.
HELD_HEADS = """
local out = {}
for _, key in ipairs(KEYS) do
  if redis.call('TYPE', key).ok == 'list' then
    for _, item in ipairs(redis.call('LRANGE', key, -100, -1)) do
      out[#out + 1] = string.sub(item, 1, 256)
    end
  end
end
return out
"""
_ID = re.compile(rb'\{"aioredq":1,"attempts":\d+,"id":"((?:[^"\\]|\\.)*)"')
RUNNING_SHOWN = 20
RESULTS_SCAN_LIMIT = 100_000


async def lifecycle_figures(client: Any, queue: str) -> dict[str, Any]:
    """``running``: the jobs held by consumers (running or about to), oldest first, each
    ``{"id", "age_s"}`` (age since it was enqueued; at most 20 shown), and ``results``: the
    result keys kept (a SCAN of the queue's node, counted up to 100,000). A figure that
    cannot be read is None."""
    client = clients.producing(client)
    now = await server_ms(client)
    running: list[dict[str, Any]] | None = []
    try:
        names = [_text(n) for n in await client.zrange(keys.consumers(queue), 0, -1)]
        script = client.register_script(HELD_HEADS)
        heads = await script(keys=[keys.processing(queue, n) for n in names]) if names else []
        held: list[tuple[float, str]] = []
        for head in heads or []:
            found, stamp = _ID.match(head), _ENQUEUED.match(head)
            if found:
                age = _age_s(now, float(stamp[1]) * 1000) if stamp else 0.0
                held.append((age, found[1].decode("utf-8", "replace")))
        held.sort(reverse=True)
        running = [{"id": i, "age_s": age} for age, i in held[:RUNNING_SHOWN]]
    except ResponseError:
        running = None
    options: dict[str, Any] = {}
    if hasattr(client, "get_node_from_key"):
        options["target_nodes"] = client.get_node_from_key(queue)
    results = 0
    cursor: Any = 0
    pattern = keys.glob_escape(keys.result(queue, "")) + "*"
    while True:
        cursor, found_keys = await client.scan(cursor, match=pattern, count=1000, **options)
        if isinstance(cursor, dict):
            cursor = next(iter(cursor.values()), 0)
        results += len(found_keys)
        if not int(cursor) or results >= RESULTS_SCAN_LIMIT:
            break
    return {"running": running, "results": results}


async def pause(client: Any, key: str) -> None:
    """Set the pause key ``key``: the consumers it names start nothing until it is gone."""
    await clients.producing(client).set(key, "1")


async def resume(client: Any, key: str) -> None:
    await clients.producing(client).delete(key)


async def is_paused(client: Any, key: str) -> bool:
    return bool(await clients.producing(client).exists(key))
