"""``dead``: list, requeue or purge one handler's dead letters."""

from __future__ import annotations

import base64
import binascii
import json
import sys
from typing import Any

import anyio

from ._app import App
from ._connection import Connection, translated
from ._exceptions import UsageError
from ._handlers import Handler, StreamHandler, SubscribeHandler
from ._transports import dead

# What --show prints of a body, fields or error text before cutting it (--full: everything).
SHOW_CHARS = 300


def _usage(message: str) -> Exception:
    return UsageError(message)


def find(app: App, name: str) -> Handler:
    """The handler ``dead`` acts on: the one named ``name``, or the one on key ``name`` that
    writes dead letters (a stream read by several groups needs the handler's name)."""
    for handler in app.handlers:
        if handler.name == name:
            break
    else:
        on_key = [h for h in app.handlers if h.key == name]
        if not on_key:
            raise _usage(f"no handler, queue or stream named {name!r}")
        grouped = [h for h in on_key if isinstance(h, StreamHandler) and h.spec.group]
        if len({h.spec.group for h in grouped if isinstance(h, StreamHandler)}) > 1:
            names = ", ".join(h.name for h in grouped)
            raise _usage(
                f"stream {name!r} is read by several groups (handlers {names}): "
                "name the handler whose dead letters you mean"
            )
        handler = grouped[0] if grouped else on_key[0]
    if isinstance(handler, SubscribeHandler):
        raise _usage(f"{name!r} is a pub/sub handler; pub/sub has no dead letters")
    if isinstance(handler, StreamHandler) and not handler.spec.group:
        raise _usage(
            f"{name!r} reads stream {handler.key!r} without a group: it writes no dead letters "
            "(name a handler with a group)"
        )
    return handler


def _clip(text: str, full: bool) -> str:
    """``text`` with control characters escaped (a letter must not drive the terminal), cut
    at ``SHOW_CHARS`` unless ``full``."""
    cut = not full and len(text) > SHOW_CHARS
    shown = text[:SHOW_CHARS] if cut else text
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)
    if cut:
        shown += f" ... ({len(text) - SHOW_CHARS} more characters; --full shows all)"
    return shown


def _body_text(letter: dict[str, Any]) -> str:
    if "body_b64" in letter:
        try:
            raw = base64.b64decode(str(letter["body_b64"]), validate=True)
        except (ValueError, binascii.Error):
            return f"(body_b64 that is not base64) {letter['body_b64']!s}"
        return repr(raw)
    if "body_key" in letter and "body" not in letter:
        return f"({letter.get('size')} bytes, kept under the key {letter['body_key']!s})"
    body = letter.get("body")
    return body if isinstance(body, str) else json.dumps(body)


async def dead_command(
    app: App,
    name: str,
    *,
    show: int | None,
    requeue: list[str] | None,
    requeue_all: bool,
    purge: bool,
    full: bool = False,
    yes: bool = False,
) -> int:
    handler = find(app, name)
    if purge and not yes and not sys.stdin.isatty():
        raise _usage("--purge deletes dead letters: confirm on a terminal, or add --yes")
    conn = app.connection
    key = handler.key
    group = handler.spec.group if isinstance(handler, StreamHandler) else None
    whose = f"{handler.name!r} ({key!r}" + (f", group {group!r})" if group else ")")
    try:
        await app.connect()
        if purge:
            return await translated("dead --purge", lambda: _purge(conn, key, group, whose, yes))
        if requeue is None:
            count = show or 20
            if group is None:
                work = _show_queue(conn, key, count, full)
            else:
                work = _show_stream(conn, key, group, count, full)
            return await translated("dead --show", lambda: work)
        ids = None if requeue_all else set(requeue)
        if group is None:
            job = (
                dead.requeue_queue_all(conn, key)
                if ids is None
                else dead.requeue_queue_ids(conn, key, ids)
            )
        else:
            job = dead.requeue_stream(conn, key, group, ids)
        outcome = await translated("dead --requeue", lambda: job)
        return _report(whose, outcome, ids)
    finally:
        await app.aclose()


async def _purge(conn: Connection, key: str, group: str | None, whose: str, yes: bool) -> int:
    if not yes:
        if group is None:
            n = await dead.queue_dead_count(conn, key)
        else:
            n = await dead.stream_dead_count(conn, key, group)
        if not n:
            print(f"no dead letters of {whose}")
            return 0
        answer = await anyio.to_thread.run_sync(
            input, f"delete {n} dead letter(s) of {whose}? [y/N] "
        )
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    if group is None:
        n = await dead.purge_queue(conn, key)
    else:
        n = await dead.purge_stream(conn, key, group)
    print(f"purged {n} dead letter(s) of {whose}")
    return 0


def _report(whose: str, outcome: dead.Outcome, ids: set[str] | None) -> int:
    print(f"requeued {outcome.moved} dead letter(s) of {whose}")
    for problem in outcome.bad or []:
        print(f"aioredq: skipped {problem}", file=sys.stderr)
    missing = set() if ids is None else ids - (outcome.found or set())
    if missing:
        print(f"aioredq: no dead letter with id {', '.join(sorted(missing))}", file=sys.stderr)
    return 1 if outcome.bad or missing else 0


async def _show_queue(conn: Connection, queue: str, count: int, full: bool) -> int:
    letters = await dead.queue_letters(conn, queue, count)
    for raw in letters:
        try:
            letter = json.loads(raw)
            assert isinstance(letter, dict)
        except (ValueError, AssertionError):
            print(f"(not JSON)  {_clip(repr(raw), full)}")
            continue
        print(
            f"{_clip(str(letter.get('id')), full)}  attempts={letter.get('attempts')}  "
            f"failed_at={_clip(str(letter.get('failed_at')), full)}  "
            f"error={_clip(str(letter.get('error')), full)}\n"
            f"    body={_clip(_body_text(letter), full)}"
        )
    print(f"({len(letters)} shown)")
    return 0


async def _show_stream(conn: Connection, stream: str, group: str, count: int, full: bool) -> int:
    shown = 0
    async for page in dead.stream_letter_pages(conn, stream, group, newest_first=True):
        for dead_id, raw in page[: count - shown]:
            f = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, v in raw.items()}
            note = "  (not UTF-8: exact bytes in fields_b64)" if "fields_b64" in f else ""
            print(
                f"{dead_id}  original_id={_clip(f.get('original_id', ''), full)}  "
                f"group={_clip(f.get('group', ''), full)}  deliveries={f.get('deliveries')}  "
                f"failed_at={_clip(f.get('failed_at', ''), full)}  "
                f"error={_clip(f.get('error', ''), full)}\n"
                f"    fields={_clip(f.get('fields', ''), full)}{note}"
            )
            shown += 1
        if shown >= count:
            break
    print(f"({shown} shown)")
    return 0
