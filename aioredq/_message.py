"""The metadata a handler can ask for by annotating a parameter with ``Message``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

Kind = Literal["task", "stream", "subscribe"]


@dataclass(frozen=True, slots=True)
class Message:
    """One delivered message.

    ``name`` is the queue, stream or subscribed channel/pattern the handler was declared on;
    ``channel`` is the channel the message was actually published to (pub/sub), else ``name``.
    ``attempt`` counts deliveries (1 on the first), crashes included; it is 1 for pub/sub.
    ``raw`` is the body as it travelled: the item text, the published payload, or for a stream
    entry the JSON of its fields.
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
