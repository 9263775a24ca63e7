"""The app the CLI tests run as ``tests.apps.cli_app:app``.

Every handler appends one JSON line per message to the file named by ``$CLI_APP_OUT``, with the
pid of the process that ran it. A task body ``slow:<seconds>`` (a stream entry with a
``sleep`` field) sleeps first; ``reject`` (``kind=reject``) is dead-lettered.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from aioredq import App, Message, Reject

app = App()  # the URL comes from --url (or $AIOREDQ_URL)

# Small batches so that several workers share a short backlog.
QUEUE, STREAM, GROUP, CHANNEL = "cli-jobs", "cli-events", "cli-group", "cli-notice"


def record(handler: str, body: Any, message: Message) -> None:
    path = os.environ.get("CLI_APP_OUT")
    if not path:
        return
    line = {"handler": handler, "body": body, "id": message.id, "pid": os.getpid()}
    with open(path, "a") as out:
        out.write(json.dumps(line) + "\n")


@app.task(QUEUE, concurrency=2, batch=1)
async def job(body: str, message: Message) -> None:
    if body == "reject":
        raise Reject("rejected by the test app")
    if body.startswith("slow:"):
        await asyncio.sleep(float(body.split(":", 1)[1]))
    record("job", body, message)


@app.stream(STREAM, group=GROUP, concurrency=2, batch=1, start="earliest")
async def event(body: dict[str, str], message: Message) -> None:
    if body.get("kind") == "reject":
        raise Reject("rejected by the test app")
    if "sleep" in body:
        await asyncio.sleep(float(body["sleep"]))
    record("event", body, message)


@app.subscribe(CHANNEL)
async def notice(body: str, message: Message) -> None:
    record("notice", body, message)


# An app pinned to a Redis that is not there: only `--url` can point it elsewhere.
pinned = App("redis://127.0.0.1:1/0")


@pinned.task(QUEUE)
async def pinned_job(body: str, message: Message) -> None:
    record("pinned_job", body, message)


not_an_app = 42
