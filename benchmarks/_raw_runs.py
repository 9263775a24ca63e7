"""The baselines: plain redis-py loops written the fastest honest way, each calling the same
no-op ``async def`` handler once per message.

- streams: XREADGROUP COUNT 100 BLOCK 1000, then one XACK for the whole batch;
- reliable list: one EVALSHA moves up to 100 items RPOP -> LPUSH into a processing list, then
  one EVALSHA removes the batch (LREM from the tail per item inside the script);
- pub/sub: a PubSub ``get_message(timeout=None)`` loop (no per-read asyncio timeout);
- producing: one multi-value LPUSH per batch, or a pipeline of XADD / PUBLISH per batch, from
  the same dicts the aioredq producer gets, serialized with ``json.dumps``.

The raw consumers hand the handler the payload as redis-py returns it (no JSON decoding), so
the ratios include everything aioredq adds, decoding and validation too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from typing import Any
from urllib.parse import urlsplit

from ._common import (
    CHANNEL,
    GROUP,
    QUEUE,
    STREAM,
    Tally,
    body,
    emit,
    memory_kb,
    raw_client,
    wait_settled,
)

BATCH = 100
BLOCK_MS = 1000
MOVE = """
local items = redis.call('RPOP', KEYS[1], ARGV[1])
if items then redis.call('LPUSH', KEYS[2], unpack(items)) end
return items
"""
# LREM from the tail (count -1): the processing list gets each batch LPUSHed, so the oldest
# items, acknowledged first, sit at the tail and each removal stops after a step or two.
ACK = """
for i = 1, #ARGV do redis.call('LREM', KEYS[1], -1, ARGV[i]) end
return #ARGV
"""
PROCESSING = f"{{{QUEUE}}}:processing:raw"


async def consume(url: str, model: str, n: int, timeout: float) -> dict[str, Any]:
    tally = Tally(n)

    async def handler(payload: object) -> None:
        tally.hit()

    client = raw_client(url)
    try:
        await client.ping()
        rss_start = memory_kb("VmRSS")
        if model == "pubsub":
            await _subscriber(client, tally, handler, timeout)
            elapsed, rate = tally.last - tally.first, tally.rate_over_span()
            cpu = tally.cpu_us_per_message()
        else:
            loop = _list_loop if model == "task" else _stream_loop
            await asyncio.wait_for(loop(client, tally, handler), timeout)
            await wait_settled(client, model)
            elapsed = time.perf_counter() - tally.first  # timed as aioredq is
            rate = n / elapsed
            cpu = tally.cpu_us_per_message()
    finally:
        await client.aclose()
    return {
        "count": tally.seen,
        "elapsed_s": elapsed,
        "rate": rate,
        "cpu_us_per_msg": cpu,
        "dropped": n - tally.seen,
        "rss_start_kb": rss_start,
        "rss_peak_kb": memory_kb("VmHWM"),
    }


async def _list_loop(client: Any, tally: Tally, handler: Any) -> None:
    move = client.register_script(MOVE)
    ack = client.register_script(ACK)
    while tally.seen < tally.expected:
        items = await move(keys=[QUEUE, PROCESSING], args=[BATCH])
        if not items:
            await client.blmove(QUEUE, QUEUE, BLOCK_MS / 1000, "RIGHT", "RIGHT")
            continue
        for item in items:
            await handler(item)
        await ack(keys=[PROCESSING], args=items)


async def _stream_loop(client: Any, tally: Tally, handler: Any) -> None:
    while tally.seen < tally.expected:
        reply = await client.xreadgroup(GROUP, "raw", {STREAM: ">"}, count=BATCH, block=BLOCK_MS)
        ids = []
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                await handler(fields)
                ids.append(entry_id)
        if ids:
            await client.xack(STREAM, GROUP, *ids)


async def _subscriber(client: Any, tally: Tally, handler: Any, timeout: float) -> None:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)
    emit("READY")

    async def read_forever() -> None:
        # timeout=None blocks without an asyncio.timeout() around every read (the fast form).
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if message is not None:
                await handler(message["data"])

    reader = asyncio.create_task(read_forever())
    try:
        await tally.wait_stream_end(time.perf_counter() + timeout)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await pubsub.aclose()


async def produce(url: str, model: str, n: int, batch: int) -> dict[str, Any]:
    bodies = [body(i) for i in range(n)]
    batches = [bodies[i : i + batch] for i in range(0, n, batch)]
    client = raw_client(url)
    try:
        await client.ping()
        started = time.perf_counter()
        for chunk in batches:
            if model == "task":
                await client.lpush(QUEUE, *[json.dumps(b) for b in chunk])
                continue
            pipe = client.pipeline(transaction=False)
            for b in chunk:
                if model == "stream":
                    pipe.xadd(STREAM, b)  # type: ignore[arg-type]  # redis-py encodes numbers
                else:
                    pipe.publish(CHANNEL, json.dumps(b))
            await pipe.execute()
        elapsed = time.perf_counter() - started
    finally:
        await client.aclose()
    return {"count": n, "elapsed_s": elapsed, "rate": n / elapsed}


def flood(url: str, n: int, batch: int) -> dict[str, Any]:
    """The load generator for pub/sub consume runs: pre-encoded PUBLISH commands written
    straight to a socket, ``batch`` at a time, so the subscriber (not the publisher) is what
    limits the rate being measured."""
    parts = urlsplit(url)
    channel = CHANNEL.encode()
    commands = []
    for i in range(n):
        payload = json.dumps(body(i)).encode()
        commands.append(
            b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
            % (len(channel), channel, len(payload), payload)
        )
    receivers = 0
    with socket.create_connection((parts.hostname, parts.port or 6379)) as sock:
        started = time.perf_counter()
        for i in range(0, n, batch):
            chunk = commands[i : i + batch]
            sock.sendall(b"".join(chunk))
            receivers += _read_integers(sock, len(chunk))
        elapsed = time.perf_counter() - started
    return {"count": n, "rate": n / elapsed, "receivers": receivers}


def _read_integers(sock: socket.socket, count: int) -> int:
    """Read ``count`` integer replies (``:N\\r\\n``); returns their sum."""
    data = b""
    while data.count(b"\r\n") < count:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError("server closed the connection")
        data += more
    return sum(int(line[1:]) for line in data.split(b"\r\n")[:count])
