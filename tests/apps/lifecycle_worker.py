"""A worker for the job lifecycle tests: results, timeouts, cancels, a crash after a return.

Run: ``python -m aioredq tests.apps.lifecycle_worker:app --url URL``. Queue ``lc`` keeps
results: a body returns ``body:attempt``; ``kill`` (first attempt) kills the process right
after the handler returned, before its ack is written; ``long`` notes its start in the list
``started`` and runs until cancelled. Queue ``hangs`` never ends a call (timeout 0.3 s).
"""

from __future__ import annotations

import asyncio
import os
import signal

from aioredq import App, Backoff, Message

app = App(shutdown_timeout=2)
FAST = Backoff(base=0.05, jitter=False)


@app.task("lc", result_ttl=60, lease=1, backoff=FAST)
async def lifecycle(body: str, message: Message) -> str:
    client = app.connection.command
    await client.rpush("runs", f"{body}|{message.attempt}")
    if body == "kill" and message.attempt == 1:
        # Runs as soon as the handler has returned, before the settle loop acks.
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGKILL)
    elif body == "long":
        await client.rpush("started", message.id)
        await asyncio.Event().wait()
    return f"{body}:{message.attempt}"


@app.task("hangs", timeout=0.3, max_attempts=2, backoff=FAST)
async def hang(body: str) -> None:
    await asyncio.Event().wait()
