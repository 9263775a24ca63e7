"""Sections of the page beyond the figures and dead letters, one per feature of the app (pause
and resume, periodic schedules, the schema document...). A feature adds itself by appending a
``Section`` to ``SECTIONS``; the page shows a section only when ``available(app)`` is true.

``read`` answers ``GET api/section/<name>`` (the page renders its JSON with the renderer named
after the section in ``window.aioredqSections``, or as text); each of ``actions`` answers ``POST
api/section/<name>/<action>`` with the request's JSON object, behind the same token and CSRF
checks as requeue and purge. A page reads a section when it opens, after an action, and again
every ``refresh`` seconds its renderer asks for (the schedules every 2 s, pauses every 5 s);
every page shares one answer for a second (an action drops it), so the Redis cost of a read
does not grow with the number of pages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._app import App
from .._asyncapi import asyncapi_document
from .._connection import Connection
from .._exceptions import ConfigurationError
from .._handlers import StreamHandler, TaskHandler
from .._inspect import schedule_row
from .._transports import admin

# Both receive the app's ``Connection``: what they read or write goes through a transport.
Read = Callable[[App, Connection], Awaitable[Any]]
Action = Callable[[App, Connection, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    available: Callable[[App], bool]
    read: Read
    actions: Mapping[str, Action] = field(default_factory=dict)


async def _schema(app: App, conn: Connection) -> Any:
    return asyncapi_document(app)


def _pausable(app: App) -> list[TaskHandler | StreamHandler]:
    return [h for h in app.handlers if isinstance(h, TaskHandler | StreamHandler)]


async def _pauses(app: App, conn: Connection) -> Any:
    rows = []
    for h in _pausable(app):
        paused = await admin.is_paused(conn, app.pause_key(h.name))
        rows.append({"name": h.name, "kind": h.kind, "key": h.key, "paused": paused})
    return {"handlers": rows}


def _switch(on: bool) -> Action:
    async def switch(app: App, conn: Connection, data: dict[str, Any]) -> Any:
        name = data.get("name")
        try:
            if not isinstance(name, str):
                raise ConfigurationError("give the handler's name")
            key = app.pause_key(name)
        except ConfigurationError as exc:
            return {"error": str(exc)}
        if on:
            await admin.pause(conn, key)
        else:
            await admin.resume(conn, key)
        return {"name": name, "paused": on}

    return switch


async def _schedules(app: App, conn: Connection) -> Any:
    rows = []
    for h in app.handlers:
        if isinstance(h, TaskHandler) and (when := await schedule_row(conn, h)):
            every, cron = h.spec.every, h.spec.cron
            rule = f"every {every:g} s" if every is not None else f"{cron} ({h.spec.tz})"
            rows.append({"name": h.name, "queue": h.key, "schedule": rule, **when})
    return {"schedules": rows}


SECTIONS: list[Section] = [
    Section("schema", "AsyncAPI document", lambda app: bool(app.handlers), _schema),
    Section(
        "pause",
        "Pause and resume",
        lambda app: bool(_pausable(app)),
        _pauses,
        {"pause": _switch(True), "resume": _switch(False)},
    ),
    Section(
        "schedules",
        "Periodic schedules",
        lambda app: any(
            isinstance(h, TaskHandler) and (h.spec.cron or h.spec.every) for h in app.handlers
        ),
        _schedules,
    ),
]


def available(app: App) -> list[Section]:
    return [s for s in SECTIONS if s.available(app)]


def find(app: App, name: str) -> Section | None:
    return next((s for s in available(app) if s.name == name), None)
