"""Observing: the counters of this process's handlers and the lag of a stream group."""

from __future__ import annotations

from ._connection import Connection
from ._exceptions import ConfigurationError
from ._handlers import Handler, StreamHandler
from ._stats import Counters, Stats
from ._transports.stream import StreamTransport, group_lag


async def lag(conn: Connection, handler: Handler, name: str) -> int | None:
    """Entries of the stream handler's group not yet delivered to it (see ``App.lag``)."""
    if not isinstance(handler, StreamHandler) or handler.spec.group is None:
        raise ConfigurationError(f"{name!r} is not a stream handler with a group")
    group = handler.spec.group
    return await conn.produce(
        f"lag of {name!r}",
        lambda: group_lag(StreamTransport.for_producer(conn, handler.key, group)),
    )


def stats(handlers: list[Handler], counters: dict[str, Counters]) -> Stats:
    """A snapshot of every handler's counters and latency."""
    return Stats({h.name: counters[h.name].snapshot(h.name, h.kind, h.key) for h in handlers})
