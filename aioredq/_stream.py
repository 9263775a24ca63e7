"""Consumers of ``@app.stream``: a consumer group member, or a group-less tail."""

from __future__ import annotations

import asyncio
import heapq
import json
import time
from datetime import UTC, datetime

from ._codec import decode_fields_raw
from ._connection import BLOCK_SECONDS, Connection
from ._consumer import Ack, Again, Consumer, Dead, error_text, log
from ._handlers import StreamHandler
from ._message import Message
from ._stats import Counters
from ._transports.stream import Entry, StreamTransport, is_nogroup

MEMORY_POLL = 0.05
LAG_CHECK_SECONDS = 10.0
LAG_WARN_EVERY = 60.0


def _entry_time(entry_id: str) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(entry_id.split("-", 1)[0]) / 1000, UTC)
    except ValueError:
        return None


class _StreamBase(Consumer[Entry]):
    handler: StreamHandler

    def __init__(
        self,
        handler: StreamHandler,
        conn: Connection,
        *,
        consumer: str,
        counters: Counters,
        wakeup: asyncio.Event | None,
    ) -> None:
        spec = handler.spec
        super().__init__(
            handler,
            concurrency=spec.concurrency,
            capacity=spec.concurrency + spec.batch,
            counters=counters,
            url=conn.target.safe_url,
        )
        self.spec = spec
        self.conn = conn
        self.transport = StreamTransport(conn.command, handler.key, spec.group, consumer)
        self._wakeup = wakeup

    async def _idle_wait(self) -> None:
        """memory:// only: fakeredis cannot block, so wake on a local append or poll."""
        assert self._wakeup is not None
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), MEMORY_POLL)
        except TimeoutError:
            pass

    def _message(self, entry: Entry, fields: dict[str, str]) -> Message:
        return Message(
            id=entry.id,
            kind="stream",
            name=self.handler.key,
            channel=self.handler.key,
            attempt=max(entry.deliveries, 1),
            raw=json.dumps(fields).encode(),
            enqueued_at=_entry_time(entry.id),
            fields=fields,
            group=self.spec.group,
        )


class GroupConsumer(_StreamBase):
    """A member of the handler's consumer group: reads new entries, claims dead consumers'
    entries, retries failures with backoff without holding a slot, dead-letters, acks."""

    def __init__(
        self,
        handler: StreamHandler,
        conn: Connection,
        *,
        consumer: str,
        counters: Counters,
        wakeup: asyncio.Event | None,
    ) -> None:
        super().__init__(handler, conn, consumer=consumer, counters=counters, wakeup=wakeup)
        self.lease_ms = int(self.spec.lease * 1000)
        self.upkeep_interval = min(self.spec.lease / 3, 1.0)
        self._in_flight: dict[str, Entry] = {}
        self._retry_heap: list[tuple[float, str]] = []
        self._acks: list[str] = []
        self._dead: list[tuple[str, str, int, str, str]] = []
        self._cursor = "0-0"
        self._next_lag_check = 0.0
        self._next_lag_warning = 0.0
        self._next_prune = 0.0

    async def start(self) -> None:
        start_id = "$" if self.spec.start == "latest" else "0"
        if await self.transport.create_group(start_id):
            log.info(
                "stream %r: created group %r at %s",
                self.handler.key,
                self.spec.group,
                self.spec.start,
            )

    async def _recreate(self, exc: BaseException) -> None:
        # The stream or the group was deleted. A stream that is gone starts again from its
        # first entry; a group deleted from a living stream starts where the handler says.
        exists = await self.transport.stream_exists()
        start_id = "$" if exists and self.spec.start == "latest" else "0"
        log.warning(
            "stream %r: %s; recreating group %r at %s",
            self.handler.key,
            exc,
            self.spec.group,
            start_id,
        )
        await self.transport.create_group(start_id)
        self._cursor = "0-0"

    def _retry_cap(self) -> int:
        return self.pool.capacity * 10

    async def fetch(self, room: int) -> list[Entry]:
        due = self._due_retries(room)
        if due:
            entries = await self.transport.claim_own(due)
            claimed = {e.id for e in entries}
            for entry_id in due:
                if entry_id not in claimed:  # taken over by another consumer meanwhile
                    self._in_flight.pop(entry_id, None)
            return self._track(entries)
        if len(self._retry_heap) >= self._retry_cap():
            await asyncio.sleep(min(BLOCK_SECONDS, self._retry_heap[0][0] - time.monotonic()))
            return []
        count = min(room, self.spec.batch)
        block = int(BLOCK_SECONDS * 1000) if self.conn.can_block else None
        if self._retry_heap:
            wait = max(self._retry_heap[0][0] - time.monotonic(), 0.001)
            if block is not None:
                block = max(1, min(block, int(wait * 1000)))
        client = self.conn.blocking if self.conn.can_block else self.conn.command
        try:
            entries = await self.transport.read_group(client, count, block)
        except Exception as exc:
            if not is_nogroup(exc):
                raise
            await self._recreate(exc)
            return []
        if not entries and not self.conn.can_block:
            await self._idle_wait()
        return self._track(entries)

    def _track(self, entries: list[Entry]) -> list[Entry]:
        for entry in entries:
            self._in_flight[entry.id] = entry
        return entries

    def _due_retries(self, room: int) -> list[str]:
        now = time.monotonic()
        due: list[str] = []
        while self._retry_heap and self._retry_heap[0][0] <= now and len(due) < room:
            due.append(heapq.heappop(self._retry_heap)[1])
        return due

    async def process(self, entry: Entry) -> None:
        fields = decode_fields_raw(entry.fields)
        message = self._message(entry, fields)
        decision = await self.execute(
            lambda: self.handler.codec.decode_fields(fields),
            message,
            self.spec.max_deliveries,
            self.spec.backoff,
        )
        match decision:
            case Ack():
                del self._in_flight[entry.id]
                self._acks.append(entry.id)
                self.settle_soon()
            case Again(delay):
                # Stays pending and ours (kept fresh by upkeep) until it is due again.
                heapq.heappush(self._retry_heap, (time.monotonic() + delay, entry.id))
            case Dead(error):
                del self._in_flight[entry.id]
                self._dead.append(
                    (
                        entry.id,
                        error,
                        message.attempt,
                        datetime.now(UTC).isoformat(),
                        json.dumps(fields),
                    )
                )
                self.settle_soon()

    def has_unsettled(self) -> bool:
        return bool(self._acks or self._dead)

    async def settle(self) -> None:
        acks, dead = self._acks, self._dead
        self._acks, self._dead = [], []
        try:
            await self.transport.settle(acks, dead)
        except BaseException:
            self._acks[:0], self._dead[:0] = acks, dead
            raise

    async def upkeep(self) -> None:
        await self.transport.heartbeat(self.lease_ms)
        await self.transport.touch(list(self._in_flight))
        try:
            await self._claim_abandoned()
            now = time.monotonic()
            if now >= self._next_lag_check:
                self._next_lag_check = now + LAG_CHECK_SECONDS
                await self._check_lag(now)
            if now >= self._next_prune:
                self._next_prune = now + max(self.spec.lease, 5.0)
                removed = await self.transport.prune_consumers(self.lease_ms * 2)
                if removed:
                    log.info(
                        "stream %r group %r: removed dead consumers %s",
                        self.handler.key,
                        self.spec.group,
                        ", ".join(removed),
                    )
        except Exception as exc:
            if not is_nogroup(exc):
                raise

    async def _claim_abandoned(self) -> None:
        """XAUTOCLAIM entries idle for longer than the lease, walking the cursor to the end."""
        while self.pool.room > 0 and not self.stop.is_set():
            cursor, entries, deleted = await self.transport.autoclaim(
                self.lease_ms, self._cursor, min(self.pool.room, self.spec.batch)
            )
            self._cursor = cursor
            if deleted:
                log.warning(
                    "stream %r: %d pending entr(y/ies) were deleted before delivery: %s",
                    self.handler.key,
                    len(deleted),
                    ", ".join(deleted[:10]),
                )
            if entries:
                log.warning(
                    "stream %r group %r: claimed %d entr(y/ies) of silent consumers",
                    self.handler.key,
                    self.spec.group,
                    len(entries),
                )
                self.pool.put_many(self._track(entries))
            if cursor == "0-0":
                return

    async def _check_lag(self, now: float) -> None:
        lag = await group_lag(self.transport, self.spec.lag_warning + 1)
        if lag is not None and lag > self.spec.lag_warning and now >= self._next_lag_warning:
            self._next_lag_warning = now + LAG_WARN_EVERY
            log.warning(
                "stream %r group %r: lag %d is over %d; add consumers or concurrency",
                self.handler.key,
                self.spec.group,
                lag,
                self.spec.lag_warning,
            )

    async def handback(self, jobs: list[Entry]) -> None:
        for job in jobs:
            self._in_flight.pop(job.id, None)
        await self.transport.release([(j.id, j.deliveries - 1) for j in jobs])

    async def leave(self) -> None:
        # Entries waiting for a retry become claimable by the others at once.
        waiting = [(entry_id, 0) for _, entry_id in self._retry_heap]
        self._retry_heap.clear()
        await self.transport.release(waiting)
        await self.transport.leave()


async def group_lag(transport: StreamTransport, limit: int) -> int | None:
    """Entries not yet delivered to the group: XINFO GROUPS ``lag``, or counted when nil."""
    info = await transport.group_info()
    if info is None:
        return None
    lag = info.get("lag")
    if lag is not None:
        return int(lag)
    last = info.get("last-delivered-id")
    last_text = last.decode() if isinstance(last, bytes) else str(last)
    return await transport.count_after(last_text, limit)


class TailConsumer(_StreamBase):
    """A group-less stream handler: XREAD from new entries, no ack, no claim (a log tail)."""

    async def start(self) -> None:
        self._after = await self.transport.last_id() if self.spec.start == "latest" else "0-0"

    async def fetch(self, room: int) -> list[Entry]:
        block = int(BLOCK_SECONDS * 1000) if self.conn.can_block else None
        client = self.conn.blocking if self.conn.can_block else self.conn.command
        entries = await self.transport.read_tail(
            client, self._after, min(room, self.spec.batch), block
        )
        if entries:
            self._after = entries[-1].id
        elif not self.conn.can_block:
            await self._idle_wait()
        return entries

    async def process(self, entry: Entry) -> None:
        fields = decode_fields_raw(entry.fields)
        message = self._message(entry, fields)
        decision = await self.execute(
            lambda: self.handler.codec.decode_fields(fields), message, 1, self.spec.backoff
        )
        if isinstance(decision, Dead):
            log.debug(
                "stream tail %r: entry %s not handled: %s",
                self.handler.key,
                entry.id,
                decision.error,
            )

    def has_unsettled(self) -> bool:
        return False

    async def settle(self) -> None:
        return None


__all__ = ["GroupConsumer", "TailConsumer", "error_text", "group_lag"]
