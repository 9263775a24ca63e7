"""``inspect`` and ``dead``: what an operator sees of an app's keys, and dead-letter tooling."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from ._app import App
from ._connection import translated
from ._handlers import Handler, StreamHandler, SubscribeHandler, TaskHandler
from ._transports import admin

COLUMNS = (
    "name",
    "kind",
    "key",
    "length",
    "lag",
    "pending",
    "consumers",
    "oldest_pending_s",
    "processing",
    "delayed",
    "dead",
    "subscribers",
)


async def figures(app: App) -> list[dict[str, Any]]:
    """One row per handler, read from Redis without changing anything."""
    client = app.connection.command
    rows = []
    for h in app.handlers:
        if isinstance(h, TaskHandler):
            data = await admin.task_figures(client, h.key)
        elif isinstance(h, StreamHandler):
            data = await admin.stream_figures(client, h.key, h.spec.group)
        else:
            assert isinstance(h, SubscribeHandler)
            data = await admin.subscribe_figures(client, list(h.spec.channels), h.spec.sharded)
        rows.append({"name": h.name, "kind": h.kind, "key": h.key, **data})
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return f"{value['alive']}/{value['dead']}"
    return str(value)


def render_table(rows: list[dict[str, Any]]) -> str:
    header = [
        c.replace("_s", "").replace("oldest_pending", "oldest(s)") if c.endswith("_s") else c
        for c in COLUMNS
    ]
    header = ["consumers(alive/dead)" if c == "consumers" else c for c in header]
    table = [header] + [[_cell(row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in table
    )


async def inspect_command(app: App, *, as_json: bool, watch: bool, interval: float) -> int:
    try:
        await app.connect()
        while True:
            rows = await translated("inspect", lambda: figures(app))
            if as_json:
                print(json.dumps({"handlers": rows}), flush=True)
            else:
                if watch:
                    sys.stdout.write("\x1b[H\x1b[2J")
                print(render_table(rows), flush=True)
            if not watch:
                return 0
            await asyncio.sleep(interval)
    finally:
        await app.aclose()


def _find(app: App, name: str) -> Handler:
    try:
        handler = app.handler(name)
    except KeyError:
        from ._cli import UsageError

        raise UsageError(f"no handler, queue or stream named {name!r}") from None
    if isinstance(handler, SubscribeHandler):
        from ._cli import UsageError

        raise UsageError(f"{name!r} is a pub/sub handler; pub/sub has no dead letters")
    return handler


async def dead_command(
    app: App,
    name: str,
    *,
    show: int | None,
    requeue: list[str] | None,
    requeue_all: bool,
    purge: bool,
) -> int:
    handler = _find(app, name)
    client = app.connection.command
    try:
        await app.connect()
        if purge:
            n = await admin.purge(client, handler.key)
            print(f"purged {n} dead letter(s) of {handler.key!r}")
            return 0
        if isinstance(handler, TaskHandler):
            return await _queue_dead(client, handler.key, show, requeue, requeue_all)
        return await _stream_dead(client, handler.key, show, requeue, requeue_all)
    finally:
        await app.aclose()


async def _queue_dead(
    client: Any, queue: str, show: int | None, requeue: list[str] | None, requeue_all: bool
) -> int:
    letters = await admin.queue_dead_letters(
        client, queue, None if requeue is not None else (show or 20)
    )
    if requeue is None:
        for raw in letters:
            letter = json.loads(raw)
            print(
                f"{letter.get('id')}  attempts={letter.get('attempts')}  "
                f"failed_at={letter.get('failed_at')}  error={letter.get('error')}\n"
                f"    body={letter.get('body')!r}"
            )
        print(f"({len(letters)} shown)")
        return 0
    wanted = set(requeue)
    moved = 0
    for raw in letters:
        if requeue_all or json.loads(raw).get("id") in wanted:
            moved += await admin.requeue_queue_letter(client, queue, raw)
    print(f"requeued {moved} dead letter(s) onto {queue!r}")
    return 0


async def _stream_dead(
    client: Any, stream: str, show: int | None, requeue: list[str] | None, requeue_all: bool
) -> int:
    letters = await admin.stream_dead_letters(
        client, stream, None if requeue is not None else (show or 20)
    )
    if requeue is None:
        for dead_id, f in letters:
            print(
                f"{dead_id}  original_id={f.get('original_id')}  group={f.get('group')}  "
                f"deliveries={f.get('deliveries')}  failed_at={f.get('failed_at')}  "
                f"error={f.get('error')}\n    fields={f.get('fields')}"
            )
        print(f"({len(letters)} shown)")
        return 0
    wanted = set(requeue)
    moved = 0
    for dead_id, f in reversed(letters):
        if requeue_all or dead_id in wanted or f.get("original_id") in wanted:
            moved += await admin.requeue_stream_letter(client, stream, dead_id, f) is not None
    print(f"requeued {moved} dead letter(s) onto {stream!r}")
    return 0
