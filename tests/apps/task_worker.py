"""A task worker for crash and shutdown tests: records every run of a job in Redis.

Run: ``python -m aioredq tests.apps.task_worker:app --url URL``. Configured by the environment:
TASK_LEASE (s), TASK_SLEEP (s per job, so work is in flight when a worker is killed),
TASK_CONCURRENCY, TASK_MAX_ATTEMPTS, TASK_SHUTDOWN (shutdown_timeout, s).

Every run appends ``body|pid|attempt|unix time`` to the list ``runs`` before the handler's
work; bodies starting with ``crash`` then kill the process (``os._exit``), ``slow`` ones sleep a
minute, others sleep TASK_SLEEP and append ``body|pid|unix time`` to ``done``.
"""

from __future__ import annotations

import asyncio
import os
import time

from aioredq import App, Backoff, Message

QUEUE = "jobs"
app = App(shutdown_timeout=float(os.environ.get("TASK_SHUTDOWN", "5")))
SLEEP = float(os.environ.get("TASK_SLEEP", "0"))


@app.task(
    QUEUE,
    lease=float(os.environ.get("TASK_LEASE", "2")),
    concurrency=int(os.environ.get("TASK_CONCURRENCY", "8")),
    max_attempts=int(os.environ.get("TASK_MAX_ATTEMPTS", "5")),
    backoff=Backoff(base=0.05, jitter=False),
)
async def work(body: str, message: Message) -> None:
    client = app.connection.command
    await client.rpush("runs", f"{body}|{os.getpid()}|{message.attempt}|{time.time()}")
    if body.startswith("crash"):
        os._exit(3)
    await asyncio.sleep(60 if body.startswith("slow") else SLEEP)
    await client.rpush("done", f"{body}|{os.getpid()}|{time.time()}")
