"""``inspect`` and ``dead``: what an operator sees of an app's keys, and dead-letter tooling."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import anyio

from ._app import App
from ._connection import translated
from ._exceptions import AioredqError
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
HEADERS = {"consumers": "consumers(alive/dead)", "oldest_pending_s": "oldest(s)"}
RED = "\x1b[1;31m"
RESET = "\x1b[0m"
CLEAR = "\x1b[H\x1b[2J"


async def figures(app: App, client: Any = None) -> list[dict[str, Any]]:
    """One row per handler, read from Redis (through ``client``, default the app's) without
    changing anything."""
    client = client if client is not None else app.connection.command
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


def lag_thresholds(app: App) -> dict[str, int]:
    """``lag_warning`` of every stream handler with a group, by handler name."""
    return {
        h.name: h.spec.lag_warning
        for h in app.handlers
        if isinstance(h, StreamHandler) and h.spec.group is not None
    }


def lagging(rows: list[dict[str, Any]], thresholds: dict[str, int]) -> list[str]:
    """Names of the handlers whose lag is over their ``lag_warning``."""
    return [
        row["name"]
        for row in rows
        if row["lag"] is not None and row["name"] in thresholds
        if row["lag"] > thresholds[row["name"]]
    ]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return f"{value['alive']}/{value['dead']}"
    return str(value)


def render_table(
    rows: list[dict[str, Any]], thresholds: dict[str, int] | None = None, *, color: bool = False
) -> str:
    """The rows as an aligned text table, and a line per handler whose lag is over its
    threshold (its lag in red when ``color``)."""
    thresholds = thresholds or {}
    over = set(lagging(rows, thresholds))
    table = [[HEADERS.get(c, c) for c in COLUMNS]] + [
        [_cell(row[c]) for c in COLUMNS] for row in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    lines = []
    for index, cells in enumerate(table):
        padded = [v.ljust(w) for v, w in zip(cells, widths, strict=True)]
        if color and index and rows[index - 1]["name"] in over:
            at = COLUMNS.index("lag")
            padded[at] = f"{RED}{padded[at]}{RESET}"
        lines.append("  ".join(padded).rstrip())
    for row in rows:
        if row["name"] in over:
            lines.append(
                f"! {row['name']}: lag {row['lag']} is over lag_warning {thresholds[row['name']]}"
            )
    return "\n".join(lines)


class _Screen(Protocol):
    def show(self, rows: list[dict[str, Any]], error: str | None) -> None: ...


class _JsonScreen:
    def show(self, rows: list[dict[str, Any]], error: str | None) -> None:
        if error is None:  # one document per refresh; an outage shows on stderr
            print(json.dumps({"handlers": rows}), flush=True)
        else:
            print(f"aioredq: {error}", file=sys.stderr, flush=True)


class _PlainScreen:
    """Clears the terminal and draws the table again (without rich, or not on a terminal)."""

    def __init__(self, title: str, thresholds: dict[str, int], color: bool) -> None:
        self.title, self.thresholds, self.color = title, thresholds, color

    def show(self, rows: list[dict[str, Any]], error: str | None) -> None:
        text = render_table(rows, self.thresholds, color=self.color)
        status = f"\n{error}" if error else ""
        sys.stdout.write(f"{CLEAR}{self.title}  {time.strftime('%H:%M:%S')}\n{text}{status}\n")
        sys.stdout.flush()


class _RichScreen:
    """A rich ``Live`` display redrawn in place."""

    def __init__(self, live: Any, title: str, thresholds: dict[str, int]) -> None:
        self.live, self.title, self.thresholds = live, title, thresholds

    def show(self, rows: list[dict[str, Any]], error: str | None) -> None:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        over = set(lagging(rows, self.thresholds))
        table = Table(title=f"{self.title}  {time.strftime('%H:%M:%S')}", title_justify="left")
        for c in COLUMNS:
            table.add_column(HEADERS.get(c, c), justify="left" if c in COLUMNS[:3] else "right")
        for row in rows:
            cells = [Text(_cell(row[c])) for c in COLUMNS]
            if row["name"] in over:
                cells[COLUMNS.index("lag")].stylize("bold red")
            table.add_row(*cells)
        notes = [
            Text(f"! {r['name']}: lag {r['lag']} is over lag_warning {self.thresholds[r['name']]}")
            for r in rows
            if r["name"] in over
        ]
        for note in notes:
            note.stylize("red")
        if error:
            notes.append(Text(error, style="bold red"))
        self.live.update(Group(table, *notes), refresh=True)


@contextmanager
def _screen(app: App, *, as_json: bool, interval: float) -> Iterator[_Screen]:
    if as_json:
        yield _JsonScreen()
        return
    title = f"aioredq inspect {app.target.safe_url}  every {interval:g}s  (Ctrl-C to stop)"
    thresholds = lag_thresholds(app)
    terminal = sys.stdout.isatty()
    try:
        from rich.console import Console
        from rich.live import Live
    except ImportError:
        terminal_with_rich = False
    else:
        terminal_with_rich = terminal
    if not terminal_with_rich:
        yield _PlainScreen(title, thresholds, terminal and "NO_COLOR" not in os.environ)
        return
    with Live(console=Console(), auto_refresh=False, redirect_stdout=False) as live:
        yield _RichScreen(live, title, thresholds)


async def inspect_command(app: App, *, as_json: bool, watch: bool, interval: float) -> int:
    try:
        await app.connect()
        if not watch:
            rows = await translated("inspect", lambda: figures(app))
            if as_json:
                print(json.dumps({"handlers": rows}), flush=True)
            else:
                print(render_table(rows, lag_thresholds(app)), flush=True)
            return 0
        await _watch(app, as_json=as_json, interval=interval)
        return 0
    finally:
        await app.aclose()


async def _watch(app: App, *, as_json: bool, interval: float) -> None:
    """Refresh every ``interval`` seconds until SIGINT or SIGTERM; an outage is shown, not
    fatal."""

    async def refresh(screen: _Screen) -> None:
        rows: list[dict[str, Any]] = []
        while True:
            try:
                rows = await translated("inspect", lambda: figures(app))
                error = None
            except AioredqError as exc:
                error = str(exc)
            screen.show(rows, error)
            await anyio.sleep(interval)

    with (
        anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        _screen(app, as_json=as_json, interval=interval) as screen,
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(refresh, screen)
            async for _ in signals:
                tg.cancel_scope.cancel()
                break


# dead letters --------------------------------------------------------------------------------
def _find(app: App, name: str) -> Handler:
    from ._cli import UsageError

    try:
        handler = app.handler(name)
    except KeyError:
        raise UsageError(f"no handler, queue or stream named {name!r}") from None
    if isinstance(handler, SubscribeHandler):
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
            n = await translated("dead --purge", lambda: admin.purge(client, handler.key))
            print(f"purged {n} dead letter(s) of {handler.key!r}")
            return 0
        if isinstance(handler, TaskHandler):
            work = _queue_dead(client, handler.key, show, requeue, requeue_all)
        else:
            work = _stream_dead(client, handler.key, show, requeue, requeue_all)
        return await translated("dead", lambda: work)
    finally:
        await app.aclose()


def _report(key: str, moved: int, bad: list[str], missing: set[str]) -> int:
    print(f"requeued {moved} dead letter(s) onto {key!r}")
    for problem in bad:
        print(f"aioredq: skipped {problem}", file=sys.stderr)
    if missing:
        print(f"aioredq: no dead letter with id {', '.join(sorted(missing))}", file=sys.stderr)
    return 1 if bad or missing else 0


def _letter_id(raw: bytes) -> str | None:
    try:
        letter = json.loads(raw)
    except ValueError:
        return None
    return str(letter.get("id")) if isinstance(letter, dict) else None


async def _queue_dead(
    client: Any, queue: str, show: int | None, requeue: list[str] | None, requeue_all: bool
) -> int:
    letters = await admin.queue_dead_letters(
        client, queue, None if requeue is not None else (show or 20)
    )
    if requeue is None:
        for raw in letters:
            try:
                letter = json.loads(raw)
                assert isinstance(letter, dict)
            except (ValueError, AssertionError):
                print(f"(not JSON)  {raw!r}")
                continue
            print(
                f"{letter.get('id')}  attempts={letter.get('attempts')}  "
                f"failed_at={letter.get('failed_at')}  error={letter.get('error')}\n"
                f"    body={letter.get('body', letter.get('body_b64'))!r}"
            )
        print(f"({len(letters)} shown)")
        return 0
    missing = set(requeue)
    moved, bad = 0, []
    for raw in reversed(letters):  # oldest first, so the queue keeps their order
        letter_id = _letter_id(raw)
        if not requeue_all and letter_id not in missing:
            continue
        missing.discard(letter_id or "")
        try:
            moved += await admin.requeue_queue_letter(client, queue, raw)
        except admin.BadLetter as exc:
            bad.append(f"dead letter {letter_id or raw[:60]!r}: {exc}")
    return _report(queue, moved, bad, missing)


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
    missing = set(requeue)
    moved, bad = 0, []
    for dead_id, f in reversed(letters):  # oldest first
        original_id = f.get("original_id", "")
        if not (requeue_all or dead_id in missing or original_id in missing):
            continue
        missing -= {dead_id, original_id}
        try:
            moved += await admin.requeue_stream_letter(client, stream, dead_id, f) is not None
        except admin.BadLetter as exc:
            bad.append(f"dead entry {dead_id}: {exc}")
    return _report(stream, moved, bad, missing)
