"""The metadata a handler can ask for by annotating a parameter with ``Message``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Kind = Literal["task", "stream", "subscribe"]


@dataclass(frozen=True, slots=True)
class Message:
    """One delivered message; annotate a handler parameter with it to receive it.

    - ``id``: the task id (what ``enqueue`` returned; generated for a foreign item), the stream
      entry id, or ``""`` for pub/sub.
    - ``kind``: ``"task"``, ``"stream"`` or ``"subscribe"``.
    - ``name`` (also ``queue`` / ``stream``): the queue, stream, channel or pattern the handler
      was declared on; ``channel``: the channel a pub/sub message was actually published to
      (with a pattern), else ``name``.
    - ``attempt``: the delivery count, 1 on the first, crashes included (always 1 for pub/sub).
    - ``raw``: the message as it travelled: the task item (aioredq's JSON envelope, or a foreign
      item as it was pushed), the published payload, or the JSON of a stream entry's fields.
    - ``headers``: what ``enqueue(..., headers=...)`` attached (empty otherwise).
    - ``enqueued_at``: when it was produced (task envelopes; a stream entry's id time), or None.
    - ``fields``: a stream entry's fields as text; ``pattern``: the matching pub/sub pattern;
      ``group``: the stream consumer group.
    - ``max_attempts``: deliveries allowed before a failure dead-letters (``max_attempts`` /
      ``max_deliveries``; None for pub/sub, which never retries).
    - ``headers`` of a stream entry: what produce hooks added (the reserved field
      ``aioredq-headers``, which ``fields`` and the body never include).
    """

    id: str
    kind: Kind
    name: str
    channel: str
    attempt: int
    raw: bytes
    headers: dict[str, str] = field(default_factory=dict)
    enqueued_at: datetime | None = None
    fields: dict[str, str] | None = None
    pattern: str | None = None
    group: str | None = None
    max_attempts: int | None = None

    @property
    def queue(self) -> str:
        return self.name

    @property
    def stream(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return (
            f"Message(kind={self.kind!r}, name={self.name!r}, id={self.id!r}, "
            f"attempt={self.attempt})"
        )
