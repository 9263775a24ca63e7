"""What a task consumer refuses to run, the dead letter it writes for an item, and the
``Message`` its handler may ask for."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from ._codec import TaskItem, envelope_metadata
from ._handlers import TaskSpec
from ._message import Message


def refusal(item: TaskItem, aside: str, limit: int) -> str | None:
    """Why ``item`` cannot be decoded, or None. An item over ``max_body_bytes`` (pushed by
    another program: the app refuses to produce one) was kept aside by FETCH under ``aside``
    and is refused like an invalid one; so is an item that starts like an envelope but is
    not one."""
    if item.oversized is not None and item.oversized[1].startswith(aside):
        return (
            f"MessageTooLarge: item is {item.oversized[0]} bytes, over "
            f"max_body_bytes={limit}; kept as it is under {item.oversized[1]!r}"
        )
    if item.broken is not None or item.oversized is not None:
        return (
            f"InvalidEnvelope: starts like an aioredq envelope but is not one "
            f"({item.broken or 'oversized item kept under a foreign key'})"
        )
    return None


def dead_letter(item: TaskItem, error: str, queue: str, spec: TaskSpec, aside: str) -> bytes:
    # A delivery past max_attempts is refused without running: it does not count as one.
    attempts = min(item.attempts, max(spec.max_attempts, 1))
    letter: dict[str, Any] = {"id": item.id, "queue": queue}
    if item.oversized is not None and item.oversized[1].startswith(aside):
        # The item itself stays, byte for byte, in its own key: never copied whole
        # into a letter (a requeue reads it from there).
        letter["size"], letter["body_key"] = item.oversized
    else:
        try:
            letter["body"] = item.original.decode()
        except UnicodeDecodeError:  # kept exactly: a requeue puts back the same bytes
            letter["body_b64"] = base64.b64encode(item.original).decode()
    letter |= {"error": error, "attempts": attempts, "failed_at": datetime.now(UTC).isoformat()}
    return json.dumps(letter).encode()


def task_message(item: TaskItem, queue: str, max_attempts: int) -> Message:
    """The ``Message`` a handler that asks for one gets for ``item``."""
    enqueued, headers = envelope_metadata(item.envelope or {})
    return Message(
        id=item.id,
        kind="task",
        name=queue,
        channel=queue,
        attempt=item.attempts,
        raw=item.original,
        headers=headers,
        enqueued_at=None if enqueued is None else datetime.fromtimestamp(enqueued, UTC),
        max_attempts=max_attempts,
    )
