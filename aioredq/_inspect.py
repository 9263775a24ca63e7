"""``inspect``: what an operator sees of an app's keys (``dead`` lives in ``_dead``)."""

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
from redis.exceptions import ResponseError

from ._app import App
from ._connection import Connection, translated
from ._dead import dead_command
from ._exceptions import AioredqError
from ._handlers import StreamHandler, SubscribeHandler, TaskHandler
from ._schedule import describe
from ._transports import admin
from ._transports.schedule import ScheduleTransport

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
    "paused",
)
HEADERS = {"consumers": "consumers(alive/dead)", "oldest_pending_s": "oldest(s)"}
SHORT_KINDS = {"subscribe": "pubsub"}
SHORT_HEADERS = {
    "length": "len",
    "pending": "pend",
    "consumers": "cons",
    "oldest_pending_s": "oldest",
    "processing": "proc",
    "delayed": "delay",
    "subscribers": "subs",
}
RED = "\x1b[1;31m"
RESET = "\x1b[0m"
CLEAR = "\x1b[H\x1b[2J"


async def figures(app: App, conn: Connection | None = None) -> list[dict[str, Any]]:
    """One row per handler, read from Redis (through ``conn``, default the app's) without
    changing anything."""
    conn = conn if conn is not None else app.connection
    rows = []
    for h in app.handlers:
        if isinstance(h, TaskHandler):
            data = await admin.task_figures(conn, h.key)
            data |= await admin.lifecycle_figures(conn, h.key)
        elif isinstance(h, StreamHandler):
            data = await admin.stream_figures(conn, h.key, h.spec.group)
        else:
            assert isinstance(h, SubscribeHandler)
            data = await admin.subscribe_figures(conn, list(h.spec.channels), h.spec.sharded)
        data["paused"] = None
        data["schedule"] = await schedule_row(conn, h) if isinstance(h, TaskHandler) else None
        if isinstance(h, TaskHandler | StreamHandler):
            key = app.pause_key(h.name)
            try:
                data["paused"] = await admin.is_paused(conn, key)
            except ResponseError as exc:  # an ACL without EXISTS: say so, show the rest
                data.setdefault("errors", {})["paused"] = f"{exc} (key {key!r})"
        rows.append({"name": h.name, "kind": h.kind, "key": h.key, **data})
    return rows


async def schedule_row(conn: Connection, h: TaskHandler) -> dict[str, Any] | None:
    """A periodic handler's next tick and the last one fired (ISO 8601), else None."""
    if h.spec.cron is None and h.spec.every is None:
        return None
    try:
        last = await ScheduleTransport(conn, h.key, h.name).last()
    except (ResponseError, ValueError):  # unreadable: shown as never fired
        last = None
    return describe(h, last, time.time())


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


def _cell(row: dict[str, Any], column: str) -> str:
    if column in row.get("errors", {}):
        return "ERR"  # unreadable: the reason is under the table
    value = row[column]
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return f"{value['alive']}/{value['dead']}"
    return str(value)


def _notes(rows: list[dict[str, Any]], thresholds: dict[str, int]) -> list[tuple[str, str]]:
    """(text, kind) lines under the table: a lag over its threshold ("lag"), a figure that
    could not be read and why ("error"), a periodic handler's next and last tick ("schedule").
    """
    notes = []
    over = set(lagging(rows, thresholds))
    for row in rows:
        if row["name"] in over:
            notes.append(
                (
                    f"! {row['name']}: lag {row['lag']} is over lag_warning "
                    f"{thresholds[row['name']]}",
                    "lag",
                )
            )
        for figure, reason in row.get("errors", {}).items():
            notes.append((f"! {row['name']}: {figure} unreadable: {reason}", "error"))
        if row.get("schedule"):
            when = row["schedule"]
            notes.append(
                (
                    f"  {row['name']}: next tick {when['next']}, last fired "
                    f"{when['last_fired'] or 'never'}",
                    "schedule",
                )
            )
    return notes


def render_table(
    rows: list[dict[str, Any]], thresholds: dict[str, int] | None = None, *, color: bool = False
) -> str:
    """The rows as an aligned text table, and a line per handler whose lag is over its
    threshold (its lag in red when ``color``) and per figure that could not be read."""
    thresholds = thresholds or {}
    over = set(lagging(rows, thresholds))
    table = [[HEADERS.get(c, c) for c in COLUMNS]] + [
        [_cell(row, c) for c in COLUMNS] for row in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    lines = []
    for index, cells in enumerate(table):
        padded = [v.ljust(w) for v, w in zip(cells, widths, strict=True)]
        if color and index and rows[index - 1]["name"] in over:
            at = COLUMNS.index("lag")
            padded[at] = f"{RED}{padded[at]}{RESET}"
        lines.append("  ".join(padded).rstrip())
    lines += [text for text, _ in _notes(rows, thresholds)]
    lines += _lifecycle_lines(rows)
    return "\n".join(lines)


def _lifecycle_lines(rows: list[dict[str, Any]]) -> list[str]:
    """A line per task handler with jobs running or results kept."""
    lines = []
    for row in rows:
        running, results = row.get("running"), row.get("results")
        if not running and not results:
            continue
        parts = []
        if running:
            ages = ", ".join(f"{j['id']} {j['age_s']}s" for j in running[:5])
            parts.append(f"{len(running)} held (age since enqueued: {ages})")
        if results:
            parts.append(f"{results} result(s) kept")
        lines.append(f"  {row['name']}: " + "; ".join(parts))
    return lines


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
        from rich import box
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        over = set(lagging(rows, self.thresholds))
        # Short headers, no borders, one space between columns and the key under the
        # handler's name: the table fits 100 terminal columns with names of 30-odd
        # characters; a longer name or key wraps rather than being cut.
        table = Table(
            title=f"{self.title}  {time.strftime('%H:%M:%S')}",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            padding=(0, 1, 0, 0),
            pad_edge=False,
            caption="cons: consumers alive/dead; oldest: age in seconds of the oldest "
            "unfinished message",
            caption_justify="left",
        )
        figures = COLUMNS[3:]
        table.add_column("handler / key", overflow="fold")
        table.add_column("kind", no_wrap=True)
        for c in figures:
            table.add_column(SHORT_HEADERS.get(c, c), justify="right", no_wrap=True)
        for row in rows:
            cells = [Text(_cell(row, c)) for c in figures]
            if row["name"] in over:
                cells[figures.index("lag")].stylize("bold red")
            for c in row.get("errors", {}):
                cells[figures.index(c)].stylize("bold red")
            name = Text(row["name"])
            name.append(f"\n{row['key']}", style="dim")
            table.add_row(name, Text(SHORT_KINDS.get(row["kind"], row["kind"])), *cells)
        notes = [
            Text(text, style="" if kind == "schedule" else "red")
            for text, kind in _notes(rows, self.thresholds)
        ]
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


__all__ = ["dead_command", "figures", "inspect_command", "render_table"]
