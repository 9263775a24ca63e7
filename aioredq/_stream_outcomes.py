"""Outcomes of a stream consumer's entries waiting to be written: acks and dead letters.

Acks go in one ``XACK`` per write; dead letters one script call each. A dead letter Redis
refuses (a wrong-typed dead stream, an ACL, maxmemory) stays here, its entry still pending and
the consumer's own, and is tried again with backoff while acks go on; the refusal is logged
once per spell. Once a write fails or is refused, every outcome waiting counts against the
consumer's room until the writes go through again (before that, up to a capacity's worth wait
freely, so the next read does not wait for the previous write): refused writes cannot make
memory grow.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from itertools import repeat

from ._connection import is_connection_error
from ._transports.stream import DeadLetter, StreamTransport

DEAD_RETRY_BASE = 0.1
DEAD_RETRY_MAX = 5.0


class Outcomes:
    def __init__(
        self,
        transport: StreamTransport,
        what: str,
        log: logging.Logger,
        held: dict[str, int],
        settled: Callable[[int], None],
    ) -> None:
        self.transport = transport
        self._what = what
        self._log = log
        self._held = held  # the consumer's entries: each leaves once its outcome is written
        self._settled = settled  # told how many outcomes were written (the pool's room)
        self.acks: list[str] = []
        self.dead: list[DeadLetter] = []
        self._writing: list[list[str]] = []  # the ids of each write under way
        self._dead_retry_at = 0.0
        self._dead_failures = 0
        self._refused_since: float | None = None

    # recording -----------------------------------------------------------------------------
    # The consumer appends to ``acks`` and ``dead`` and holds a place in its pool for each:
    # the place is given back (``settled``) once the outcome is written.

    # state ---------------------------------------------------------------------------------
    def holds(self, entry_id: str) -> bool:
        """Whether ``entry_id`` is finished here and its outcome not yet written (a linear
        search: for the rare entry upkeep finds is no longer ours)."""
        return (
            entry_id in self.acks
            or any(letter.id == entry_id for letter in self.dead)
            or any(entry_id in ids for ids in self._writing)
        )

    @property
    def refusing(self) -> bool:
        """Whether a dead letter was refused and waits to be tried again."""
        return self._refused_since is not None

    @property
    def dead_due(self) -> bool:
        return bool(self.dead) and time.monotonic() >= self._dead_retry_at

    @property
    def due(self) -> bool:
        """Something to write now (refused dead letters only once their backoff is over)."""
        return bool(self.acks) or self.dead_due

    # writing -------------------------------------------------------------------------------
    async def write(self) -> None:
        """Write the acks (raising on failure, keeping them), then the due dead letters."""
        acks, self.acks = self.acks, []
        if acks:
            try:
                await self._write(acks, self.transport.ack(acks))
            except BaseException:
                self.acks[:0] = acks
                raise
        if self.dead_due:
            await self.write_dead()

    async def write_dead(self) -> None:
        """Write the dead letters; one Redis refuses waits (with the rest) for its backoff."""
        letters, self.dead = self.dead, []
        for k, letter in enumerate(letters):
            try:
                await self._write([letter.id], self.transport.dead_letter(letter))
            except BaseException as exc:
                self.dead[:0] = letters[k:]
                if not isinstance(exc, Exception) or is_connection_error(exc):
                    raise  # Redis is unreachable: the settle loop waits for it
                self._refused(exc)
                return
        if self._refused_since is not None:
            self._log.warning(
                "%s: dead letters written again after %.1fs",
                self._what,
                time.monotonic() - self._refused_since,
            )
        self._dead_failures = 0
        self._refused_since = None

    def retry_dead_now(self) -> None:
        self._dead_retry_at = 0.0

    async def _write(self, ids: list[str], call: Awaitable[None]) -> None:
        self._writing.append(ids)
        try:
            await call
        finally:
            self._writing = [batch for batch in self._writing if batch is not ids]
        deque(map(self._held.pop, ids, repeat(None)), maxlen=0)  # each forgotten
        self._settled(len(ids))

    def _refused(self, exc: Exception) -> None:
        self._dead_failures += 1
        delay = min(DEAD_RETRY_MAX, DEAD_RETRY_BASE * 2 ** min(self._dead_failures, 10))
        self._dead_retry_at = time.monotonic() + random.uniform(delay / 2, delay)
        if self._refused_since is None:
            self._refused_since = time.monotonic()
            self._log.error(
                "%s: Redis refused a dead letter to %r (%s: %s); %d entr(y/ies) stay pending "
                "here and are tried again with backoff; acks go on",
                self._what,
                self.transport.dead,
                type(exc).__name__,
                exc,
                len(self.dead),
            )
