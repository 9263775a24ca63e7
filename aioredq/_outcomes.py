"""The outcomes of one task consumer on their way to Redis.

Acks, retries and dead letters wait here until the settle loop writes them in one call. A retry
or dead letter that Redis refuses (a wrong-typed key, OOM, an ACL denial) stays in the
consumer's processing list and waits here too, to be tried again with backoff (logged once per
spell), while every other outcome is written: a refused write holds back only its own messages.
While a kind is refused, its new outcomes join the refused ones rather than fail every call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ._connection import is_connection_error
from ._transports.queue import QueueTransport, Settled

log = logging.getLogger("aioredq")
REFUSED_BACKOFF_CAP = 30.0
Retries = list[tuple[bytes, int]]
Letters = list[tuple[bytes, bytes]]
Written = tuple[list[bytes], tuple[Retries, Letters], str]


class Outcomes:
    def __init__(self, transport: QueueTransport, wake: Callable[[], None]) -> None:
        self._transport = transport
        self._wake = wake  # asks the settle loop to run
        self.acks: list[bytes] = []
        self.retries: Retries = []
        self.dead: Letters = []
        # Refused by Redis, tried again together after ``_until``.
        self._held_retries: Retries = []
        self._held_dead: Letters = []
        self._until = 0.0
        self._tries = 0
        self._refusing = False

    def due(self) -> bool:
        """Outcomes to write now (refused ones once their pause is over)."""
        if self.acks or self.retries or self.dead:
            return True
        return self.refused() and time.monotonic() >= self._until

    def refused(self) -> bool:
        return bool(self._held_retries or self._held_dead)

    async def write(self) -> tuple[list[bytes], Retries]:
        """Write what is due; returns (the items settled, the retries written). Raises, keeping
        everything for the next call, when nothing could be written (Redis unreachable, or
        the processing list itself refused)."""
        acks, retries, dead = self.acks, self.retries, self.dead
        self.acks, self.retries, self.dead = [], [], []
        if self._held_retries:
            self._held_retries += retries
            retries = []
        if self._held_dead:
            self._held_dead += dead
            dead = []
        if self.refused() and time.monotonic() >= self._until:
            retries += self._held_retries
            dead += self._held_dead
            self._held_retries, self._held_dead = [], []
        try:
            written, refused, error = await self._write(acks, retries, dead)
        except BaseException:
            self.acks[:0], self.retries[:0], self.dead[:0] = acks, retries, dead
            raise
        self._keep(*refused, error)
        kept = {raw for raw, _ in refused[0]}
        return written, [r for r in retries if r[0] not in kept]

    async def _write(self, acks: list[bytes], retries: Retries, dead: Letters) -> Written:
        """Write what Redis takes: (items settled, (refused retries, refused dead), why)."""
        try:
            done = await self._transport.settle(acks, retries, dead)
        except Exception as exc:
            if is_connection_error(exc) or not (retries or dead):
                raise
            # Refused as a whole (ACL checks every key a script declares before it runs):
            # write each kind on its own, so only the refused destination's messages wait.
            return await self._write_apart(acks, retries, dead)
        return _split(acks, retries, dead, done)

    async def _write_apart(self, acks: list[bytes], retries: Retries, dead: Letters) -> Written:
        written: list[bytes] = []
        if acks:
            await self._transport.ack(acks)
            written += acks
        refused_retries: Retries = []
        refused_dead: Letters = []
        errors: list[str] = []
        for part_retries, part_dead in ((retries, []), ([], dead)):
            if not (part_retries or part_dead):
                continue
            try:
                done = await self._transport.settle([], part_retries, part_dead)
            except Exception as exc:
                if is_connection_error(exc):
                    # Acks already written are written again next time: LREM of an item
                    # no longer held changes nothing.
                    raise
                refused_retries += part_retries
                refused_dead += part_dead
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            more, (r, d), why = _split([], part_retries, part_dead, done)
            written += more
            refused_retries += r
            refused_dead += d
            if why:
                errors.append(why)
        return written, (refused_retries, refused_dead), "; ".join(errors)

    def _keep(self, retries: Retries, dead: Letters, error: str) -> None:
        """Keep refused outcomes for a later try (with backoff); log once per spell."""
        if retries or dead:
            self._held_retries += retries
            self._held_dead += dead
            self._tries += 1
            pause = min(REFUSED_BACKOFF_CAP, 0.25 * 2 ** min(self._tries, 8))
            self._until = time.monotonic() + pause
            asyncio.get_running_loop().call_later(pause, self._wake)
            if not self._refusing:
                self._refusing = True
                what = " and ".join(
                    f"{n} {kind}"
                    for n, kind in ((len(retries), "retry(s)"), (len(dead), "dead letter(s)"))
                    if n
                )
                log.error(
                    "queue %r: Redis refused to write %s (%s); they stay in this consumer's "
                    "processing list and are tried again with backoff (up to %.0fs); other "
                    "messages go on",
                    self._transport.queue,
                    what,
                    error,
                    REFUSED_BACKOFF_CAP,
                )
        elif self._refusing and not self.refused():
            self._refusing = False
            self._tries = 0
            log.warning(
                "queue %r: refused retries and dead letters are written now", self._transport.queue
            )


def _split(acks: list[bytes], retries: Retries, dead: Letters, done: Settled) -> Written:
    """What a SETTLE wrote and what it refused (the first refused of each kind and after)."""
    r = len(retries) if done.retries_refused is None else done.retries_refused
    d = len(dead) if done.dead_refused is None else done.dead_refused
    written = [*acks, *(raw for raw, _ in retries[:r]), *(raw for raw, _ in dead[:d])]
    why = "; ".join(e for e in (done.retry_error, done.dead_error) if e)
    return written, (retries[r:], dead[d:]), why
