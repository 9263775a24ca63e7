"""Sections of the page beyond the figures and dead letters, one per feature of the app (pause
and resume, periodic schedules, the schema document...). A feature adds itself by appending a
``Section`` to ``SECTIONS``; the page shows a section only when ``available(app)`` is true.

``read`` answers ``GET api/section/<name>`` (the page renders its JSON with the renderer named
after the section in ``window.aioredqSections``, or as text); each of ``actions`` answers ``POST
api/section/<name>/<action>`` with the request's JSON object, behind the same token and CSRF
checks as requeue and purge. ``read`` runs once per page that opens (and again after an
action), not every second: what must update live belongs in the ``inspect`` figures, which the
shared sampler reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._app import App
from .._asyncapi import asyncapi_document

Read = Callable[[App, Any], Awaitable[Any]]
Action = Callable[[App, Any, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Section:
    name: str
    title: str
    available: Callable[[App], bool]
    read: Read
    actions: Mapping[str, Action] = field(default_factory=dict)


async def _schema(app: App, client: Any) -> Any:
    return asyncapi_document(app)


SECTIONS: list[Section] = [
    Section("schema", "AsyncAPI document", lambda app: bool(app.handlers), _schema),
]


def available(app: App) -> list[Section]:
    return [s for s in SECTIONS if s.available(app)]


def find(app: App, name: str) -> Section | None:
    return next((s for s in available(app) if s.name == name), None)
