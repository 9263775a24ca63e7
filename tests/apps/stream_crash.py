"""A stream worker for the SIGKILL test: records every entry it handles, then returns (ack).

Run as ``python -m tests.apps.stream_crash`` from the repository root. Configured by the
environment: AIOREDQ_URL, CRASH_LEASE (seconds), CRASH_SLEEP (seconds per entry, so work is in
flight when the worker is killed). Each record is ``"<entry id> <pid> <unix time>"`` pushed on
the list ``{crash}:seen``; the time tells when a recovered entry ran again.
"""

from __future__ import annotations

import asyncio
import os
import time

from aioredq import App, Message

STREAM = "crash"
GROUP = "workers"
SEEN = "{crash}:seen"

app = App(shutdown_timeout=5.0)
LEASE = float(os.environ.get("CRASH_LEASE", "2"))
SLEEP = float(os.environ.get("CRASH_SLEEP", "0.01"))


@app.stream(STREAM, group=GROUP, lease=LEASE, concurrency=4, start="earliest")
async def work(entry: dict[str, str], message: Message) -> None:
    await asyncio.sleep(SLEEP)
    await app.connection.command.rpush(SEEN, f"{message.id} {os.getpid()} {time.time():.6f}")


if __name__ == "__main__":
    asyncio.run(app.run())
