"""A worker app for scale-out tests: records every job/entry it handles in Redis, in the list
``{name}:done``, and the pid of every process that handled one in the set ``{name}:pids``.

Configured by the environment so several processes can run it: AIOREDQ_URL, SCALE_LEASE,
SCALE_SLEEP (seconds per message, so work is in flight when a worker is killed).
"""

from __future__ import annotations

import asyncio
import os

from aioredq import App, Message

app = App(shutdown_timeout=5.0)
LEASE = float(os.environ.get("SCALE_LEASE", "2"))
SLEEP = float(os.environ.get("SCALE_SLEEP", "0"))
QUEUES = ("scale-a", "scale-b")
STREAMS = ("scale-s1", "scale-s2")


async def _record(kind: str, name: str, ident: str) -> None:
    client = app.connection.command
    # every handled message leaves one record, keyed so that all records of a key share a slot
    await client.rpush(f"{{{name}}}:done", ident)
    await client.sadd(f"{{{name}}}:pids", os.getpid())
    if SLEEP:
        await asyncio.sleep(SLEEP)


def _declare(queue: str) -> None:
    async def handle(job: str, message: Message) -> None:
        await _record("task", message.name, job)

    handle.__name__ = f"task_{queue.replace('-', '_')}"
    app.add_task(handle, queue, lease=LEASE, concurrency=8)


def _declare_stream(stream: str) -> None:
    async def handle(entry: dict[str, str], message: Message) -> None:
        await _record("stream", message.name, entry["n"])

    handle.__name__ = f"stream_{stream.replace('-', '_')}"
    app.add_stream(handle, stream, group="workers", lease=LEASE, concurrency=8, start="earliest")


for _q in QUEUES:
    _declare(_q)
for _s in STREAMS:
    _declare_stream(_s)
