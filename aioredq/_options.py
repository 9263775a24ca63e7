"""Handler options, declared once per handler kind: name, type, default and what it means.

``App.task`` / ``App.stream`` / ``App.subscribe`` spell the same options out as keyword
parameters (for users and type checkers); a test holds them, the specs in ``_handlers`` and
the README's option table to these declarations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._backoff import Backoff

DEFAULT_BACKOFF = Backoff()


@dataclass(frozen=True, slots=True)
class Option:
    name: str
    type: str  # as the decorator's annotation spells it
    default: Any
    doc: str


def _common(concurrency: int) -> tuple[Option, ...]:
    return (Option("concurrency", "int", concurrency, "handler calls running at once"),)


_RETRY = (
    Option("backoff", "Backoff", DEFAULT_BACKOFF, "delay before a retry"),
    Option("lease", "float", 30.0, "how long a silent consumer keeps its in-flight messages"),
)
_TIMEOUT = Option(
    "timeout", "float | None", None, "seconds a handler call may run before it is cancelled"
)
_BATCH = Option("batch", "int", 100, "most messages fetched per round trip")

TASK_OPTIONS: tuple[Option, ...] = (
    *_common(16),
    Option("max_attempts", "int", 5, "deliveries before dead-lettering, crashes included"),
    *_RETRY,
    _BATCH,
    Option("cron", "str | None", None, "enqueue one job per tick of this cron schedule"),
    Option("tz", "str", "UTC", "the time zone of cron"),
    Option("every", "float | None", None, "seconds: enqueue one job per tick this often"),
    Option("rate", "str | Rate | None", None, "most handler starts per period, every app"),
    _TIMEOUT,
    Option("result_ttl", "float | None", None, "seconds each job's outcome is kept"),
    Option("result_type", "Any", None, "type app.result validates a stored value against"),
)

STREAM_OPTIONS: tuple[Option, ...] = (
    Option("group", "str | None", None, "consumer group; without one the handler tails"),
    *_common(16),
    Option("max_deliveries", "int", 5, "deliveries before dead-lettering, crashes included"),
    *_RETRY,
    Option("maxlen", "int | None", None, "MAXLEN ~ on every append made through the app"),
    Option("start", "Literal['latest', 'earliest']", "latest", "where a new group starts"),
    Option("lag_warning", "int", 1000, "log a warning when the group's lag is above this"),
    _BATCH,
    Option("max_age", "float | None", None, "seconds: MINID ~ on every append through the app"),
    Option("rate", "str | Rate | None", None, "most handler starts per period, every app"),
    _TIMEOUT,
)

SUBSCRIBE_OPTIONS: tuple[Option, ...] = (
    Option("pattern", "str | None", None, "PSUBSCRIBE a pattern instead of channels"),
    Option("sharded", "bool", False, "SSUBSCRIBE (Redis 7)"),
    Option("buffer", "int", 1000, "messages buffered per handler before the oldest is dropped"),
    *_common(1),
    _TIMEOUT,
)

OPTIONS: dict[str, tuple[Option, ...]] = {
    "task": TASK_OPTIONS,
    "stream": STREAM_OPTIONS,
    "subscribe": SUBSCRIBE_OPTIONS,
}


def defaults(options: tuple[Option, ...]) -> dict[str, Any]:
    """``{name: default}`` of ``options``: what an ``add_*`` call leaves out."""
    return {option.name: option.default for option in options}
