"""Which of a ``Connection``'s clients a transport talks through.

Upper layers hand transports the ``Connection``; only transports pick its clients. A bare
redis-py client (a transport's own tests) is used as it is, whatever the role.
"""

from __future__ import annotations

from typing import Any

from .._connection import Connection


def producing(source: Connection | Any) -> Any:
    """The client of producing and read-only admin calls."""
    return source.command if isinstance(source, Connection) else source


def consuming(source: Connection | Any) -> Any:
    """The consumers' own client: fetch scripts, heartbeats, acks, recovery."""
    return source.bookkeeping if isinstance(source, Connection) else source


def blocking(source: Connection | Any) -> Any:
    """The client of blocking reads: the consuming one where Redis cannot block (memory://)."""
    if isinstance(source, Connection):
        return source.blocking if source.can_block else source.bookkeeping
    return source
