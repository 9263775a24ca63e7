"""Dead letters for the dashboard: one page at a time (LRANGE ranges, XREVRANGE COUNT), never
a whole key; requeue and purge go through the same functions as ``aioredq dead``."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from .._app import App
from .._connection import Connection
from .._handlers import Handler, StreamHandler, TaskHandler
from .._transports import dead

PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
# What a page shows of a body or an error; the rest is counted, not sent.
SHOW_CHARS = 2000


class NotFound(LookupError):
    """No handler of that name, or one without dead letters."""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _clip(text: str) -> dict[str, Any]:
    return {"text": text[:SHOW_CHARS], "more": max(0, len(text) - SHOW_CHARS)}


def handler_of(app: App, name: str) -> tuple[Handler, str | None]:
    """The handler named ``name`` and its group (None for a task queue), if it has letters."""
    for h in app.handlers:
        if h.name == name:
            if isinstance(h, TaskHandler):
                return h, None
            if isinstance(h, StreamHandler) and h.spec.group:
                return h, h.spec.group
            raise NotFound(f"{name!r} writes no dead letters")
    raise NotFound(f"no handler named {name!r}")


def _queue_body(letter: dict[str, Any]) -> str:
    if "body_b64" in letter:
        try:
            return repr(base64.b64decode(str(letter["body_b64"]), validate=True))
        except (ValueError, binascii.Error):
            return f"(body_b64 that is not base64) {letter['body_b64']!s}"
    if "body_key" in letter and "body" not in letter:
        return f"({letter.get('size')} bytes, kept under the key {letter['body_key']!s})"
    body = letter.get("body")
    if isinstance(body, str) and body.startswith('{"aioredq":'):
        # The stored item is aioredq's envelope: what a reader wants is the body inside it.
        try:
            inner = json.loads(body)
        except ValueError:
            return body
        if isinstance(inner, dict) and "body" in inner:
            body = inner["body"]
    return body if isinstance(body, str) else json.dumps(body)


def _queue_row(raw: bytes) -> dict[str, Any]:
    try:
        letter = json.loads(raw)
        assert isinstance(letter, dict)
    except (ValueError, AssertionError):
        return {"id": None, "body": _clip(repr(raw)), "error": _clip("(not a JSON letter)")}
    return {
        "id": None if letter.get("id") is None else str(letter["id"]),
        "attempts": letter.get("attempts"),
        "failed_at": letter.get("failed_at"),
        "error": _clip(str(letter.get("error", ""))),
        "body": _clip(_queue_body(letter)),
    }


def _stream_row(dead_id: str, raw: dict[bytes, bytes]) -> dict[str, Any]:
    f = {_text(k): _text(v) for k, v in raw.items()}
    failed_at: Any = f.get("failed_at")
    with_note = " (not UTF-8: exact bytes in fields_b64)" if "fields_b64" in f else ""
    return {
        "id": dead_id,
        "original_id": f.get("original_id"),
        "attempts": f.get("deliveries"),
        "failed_at": failed_at,
        "error": _clip(f.get("error", "")),
        "body": _clip(f.get("fields", "") + with_note),
    }


async def page(
    conn: Connection, app: App, name: str, *, start: int = 0, cursor: str | None = None, size: int
) -> dict[str, Any]:
    """One page of ``name``'s dead letters, newest first: a queue's from index ``start``, a
    stream's from below ``cursor`` (a dead entry id; None: the newest)."""
    handler, group = handler_of(app, name)
    size = max(1, min(size, MAX_PAGE_SIZE))
    if group is None:
        total = await dead.queue_dead_count(conn, handler.key)
        raws = await dead.queue_letter_range(conn, handler.key, start, size)
        letters = [_queue_row(r) for r in raws]
        more = start + len(raws) < total
        return {"letters": letters, "total": total, "start": start, "more": more}
    high = "+" if cursor is None else f"({cursor}"
    rows = await dead.stream_letter_range(conn, handler.key, high, size)
    ours = [
        _stream_row(_text(i), dict(f))
        for i, f in rows
        if not f.get(b"group") or f.get(b"group") == group.encode()
    ]
    last = _text(rows[-1][0]) if rows else None
    # No count here: counting one group's letters reads the whole key (the figures' XLEN is
    # the stream's total).
    return {"letters": ours, "total": None, "cursor": last, "more": len(rows) == size}


async def requeue(conn: Connection, app: App, name: str, ids: list[str] | None) -> dict[str, Any]:
    handler, group = handler_of(app, name)
    wanted = None if ids is None else set(ids)
    if group is not None:
        outcome = await dead.requeue_stream(conn, handler.key, group, wanted)
    elif wanted is None:
        outcome = await dead.requeue_queue_all(conn, handler.key)
    else:
        outcome = await dead.requeue_queue_ids(conn, handler.key, wanted)
    missing = sorted(wanted - (outcome.found or set())) if wanted is not None else []
    return {"requeued": outcome.moved, "skipped": outcome.bad or [], "missing": missing}


async def purge(conn: Connection, app: App, name: str) -> dict[str, Any]:
    handler, group = handler_of(app, name)
    if group is None:
        return {"purged": await dead.purge_queue(conn, handler.key)}
    return {"purged": await dead.purge_stream(conn, handler.key, group)}
