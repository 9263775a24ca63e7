"""Consumers of ``@app.stream``: a consumer group member, or a group-less tail."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import time
from collections.abc import Awaitable
from datetime import UTC, datetime
from itertools import repeat
from operator import attrgetter, contains
from typing import Any

from ._codec import HEADERS_FIELD, DecodeError, decode_flat, entry_headers
from ._connection import BLOCK_SECONDS, Connection
from ._consumer import PAUSE_POLL, Consumer, log
from ._decisions import Ack, Again, Dead, Decision, Throttle, error_text
from ._group_checks import GroupChecks
from ._handlers import StreamHandler
from ._message import Message
from ._outage import Outage
from ._stats import Counters
from ._stream_claims import AbandonedClaims
from ._stream_outcomes import Outcomes
from ._transports import keys
from ._transports.dead import TARGET_FIELD, dead_fields
from ._transports.rate import RateWindow
from ._transports.stream import (
    DeadLetter,
    Entry,
    StreamTransport,
    group_lag,
    id_key,
    is_nogroup,
    position,
)

MEMORY_POLL = 0.05


def entry_size(entry: Entry) -> int:
    """Bytes of an entry as stored: its field names and values (what ``check_size`` counts
    when the app produces one)."""
    return sum(map(len, entry.flat))


def _too_large(size: int, limit: int) -> str:
    return f"MessageTooLarge: entry is {size} bytes, over max_body_bytes={limit}"


_TARGET = TARGET_FIELD.encode()
_ID, _DELIVERIES, _FLAT = attrgetter("id"), attrgetter("deliveries"), attrgetter("flat")


def _any_target(entries: list[Entry]) -> bool:
    """Whether any entry may carry ``TARGET_FIELD`` (one C-level pass; names and values)."""
    return any(map(contains, map(_FLAT, entries), repeat(_TARGET)))


def _addressed(entry: Entry, group: str | None) -> bool:
    """False for an entry requeued from the dead letters of another group (its
    ``TARGET_FIELD`` names that group): acknowledged without running. The field is taken out
    of the entry, so the target group's handler never sees it."""
    flat = entry.flat
    names = flat[::2]
    if _TARGET not in names:
        return True
    at = 2 * names.index(_TARGET)
    target = flat[at + 1]
    del flat[at : at + 2]
    return target == (group or "").encode()


def _letter(entry: Entry, error: str, attempt: int, max_size: int) -> DeadLetter:
    size = entry_size(entry)
    # An oversized entry is not copied (a 50 MB entry would cost the worker and Redis several
    # copies more): the dead letter keeps its id, size and reason, and the entry itself stays
    # readable in the stream until it is trimmed.
    fields_json, fields_b64, kept = "{}", "", size
    if size > max_size:
        error += "; its fields are not copied here: read them in the stream under original_id"
    else:
        (fields_json, fields_b64), kept = dead_fields(entry.fields), 0
    now = datetime.now(UTC).isoformat()
    return DeadLetter(entry.id, error, attempt, now, fields_json, fields_b64, kept)


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
        outage: Outage | None = None,
    ) -> None:
        super().__init__(handler, conn, counters=counters, outage=outage)
        self.spec = spec = handler.spec
        self.transport = StreamTransport.for_consumer(conn, handler.key, spec.group, consumer)
        self._wakeup = wakeup
        self._codec = handler.codec
        self._max_size = handler.app.max_body_bytes
        self._pause_key = keys.paused(handler.key, spec.group)
        self._throttle_key = keys.aux(
            handler.key, "throttled" if spec.group is None else f"throttled:{spec.group}"
        )
        self._rate = RateWindow.for_consumer(conn, handler.key, spec.group)
        self._pause_checked = -PAUSE_POLL
        self._paused = False

    async def _paused_meanwhile(self) -> bool:
        """After a read that may have blocked past the last look at the pause key: look
        again (a busy consumer, whose reads return at once, pays nothing more)."""
        if time.monotonic() - self._pause_checked < PAUSE_POLL:
            return False
        return await self._pause_wait()

    async def _pause_wait(self) -> bool:
        """True (after waiting a little) while this handler is paused: the pause key is read
        at most every ``PAUSE_POLL`` seconds, so a running consumer pays almost nothing."""
        now = time.monotonic()
        if now - self._pause_checked >= PAUSE_POLL:
            self._paused = await self.transport.held_off(self._pause_key, self._throttle_key)
            self._pause_checked = now
        if self._paused:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), PAUSE_POLL)
        return self._paused

    async def _idle_wait(self) -> None:
        """memory:// only: fakeredis cannot block, so wake on a local append or poll."""
        assert self._wakeup is not None
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), MEMORY_POLL)
        except TimeoutError:
            pass

    def decode(self, entry: Entry) -> Any:
        """The handler's body; an entry over ``max_body_bytes`` (written by another program:
        the app refuses to produce one) is refused like an invalid one."""
        flat = entry.flat
        size = sum(map(len, flat))  # entry_size, inlined
        if size > self._max_size:
            raise DecodeError(_too_large(size, self._max_size))
        fields = decode_flat(flat)
        if HEADERS_FIELD in fields:
            entry_headers(fields)
        return self._codec.decode_fields(fields)

    def message(self, entry: Entry) -> Message:
        fields = decode_flat(entry.flat)
        headers = entry_headers(fields)
        return Message(
            id=entry.id,
            kind="stream",
            name=self.handler.key,
            channel=self.handler.key,
            attempt=max(entry.deliveries, 1),
            raw=json.dumps(fields).encode(),
            headers=headers,
            enqueued_at=_entry_time(entry.id),
            fields=fields,
            group=self.spec.group,
            max_attempts=self.spec.max_deliveries,
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
        outage: Outage | None = None,
    ) -> None:
        super().__init__(
            handler, conn, consumer=consumer, counters=counters, wakeup=wakeup, outage=outage
        )
        self._leased(self.spec.lease)
        self.max_attempts = self.spec.max_deliveries
        # Entries this consumer holds (id -> delivery count): queued, running, waiting for a
        # retry, or finished with their ack or dead letter not yet written. Upkeep keeps every
        # one of them fresh so no other consumer takes them, whatever the writes' trouble.
        self._in_flight: dict[str, int] = {}
        self._retry_heap: list[tuple[float, str]] = []
        self._outcomes = Outcomes(
            self.transport,
            f"stream {handler.key!r} group {self.spec.group!r}",
            log,
            self._in_flight,
            self.pool.settled,
        )
        self._claims = AbandonedClaims(
            self.transport, f"stream {handler.key!r} group {self.spec.group!r}", self._in_flight
        )
        # The newest entry known to be delivered to the group: where a deleted group or
        # stream is recreated, so entries appended meanwhile are not skipped.
        self._resume = "0-0"
        self._group_checks = GroupChecks(self.transport, self.spec, self._seen)

    async def start(self) -> None:
        start_id = "$" if self.spec.start == "latest" else "0"
        if await self.transport.create_group(start_id):
            log.info(
                "stream %r: created group %r at %s",
                self.handler.key,
                self.spec.group,
                self.spec.start,
            )
        await self.transport.join()
        info = await self.transport.group_info()
        if info is not None:
            self._seen(position(info))
        # A script Redis refuses (an ACL user without EVALSHA) stops the start here.
        await self.transport.heartbeat(self.lease_ms)

    def _seen(self, entry_id: str) -> None:
        if id_key(entry_id) > id_key(self._resume):
            self._resume = entry_id

    async def _recreate(self, exc: BaseException) -> None:
        # Recreating at "$" would skip what was appended since the deletion, and "0" would run
        # the whole retained stream again: resume after the newest entry the group delivered.
        # A stream that was deleted gets new ids above that point, so all of them are read.
        if await self.transport.create_group(self._resume):
            log.warning(
                "stream %r: consumer group %r is gone (%s); recreated it after entry %s",
                self.handler.key,
                self.spec.group,
                exc,
                self._resume,
            )
        await self.transport.join()
        self._claims.restart()

    def _retry_cap(self) -> int:
        return self.pool.capacity * 10

    async def fetch(self, room: int) -> list[Entry]:
        try:
            return await self._fetch(room)
        except Exception as exc:
            if not is_nogroup(exc):
                raise
            await self._recreate(exc)
            return []

    async def _fetch(self, room: int) -> list[Entry]:
        if await self._pause_wait():
            await self._hand_back_unstarted()
            return []
        due = self._due_retries(room)
        if due:
            return await self._retry_due(due)
        if len(self._retry_heap) >= self._retry_cap():
            # Enough failed entries wait here; take no new work until one is due again.
            await asyncio.sleep(min(BLOCK_SECONDS, self._retry_heap[0][0] - time.monotonic()))
            return []
        count = min(room, self.spec.batch)
        # Abandoned entries go before new ones: they are older, and a consumer that is busy
        # with a backlog would otherwise never have room for them.
        if self._claims.due():
            claimed = await self._claims.claim(self.lease_ms, count, self.upkeep_interval)
            if claimed:
                return self._track(claimed)
        return await self._read_new(count)

    async def _hand_back_unstarted(self) -> None:
        unstarted = self.pool.take_unstarted()
        try:
            if unstarted:
                await self.handback(unstarted, False)
        except BaseException:
            self.pool.put_many(unstarted)  # still ours: run them after all
            raise

    async def _retry_due(self, due: list[str]) -> list[Entry]:
        try:
            entries = await self.transport.retry(due)
        except BaseException:
            now = time.monotonic()  # still ours and due: try them again next time
            for entry_id in due:
                heapq.heappush(self._retry_heap, (now, entry_id))
            raise
        claimed = {e.id for e in entries}
        for entry_id in due:
            if entry_id not in claimed:  # taken over by another consumer, or deleted
                self._in_flight.pop(entry_id, None)
        return self._track(entries)

    async def _read_new(self, count: int) -> list[Entry]:
        block = int(BLOCK_SECONDS * 1000) if self.conn.can_block else None
        if block is not None:
            wake = self._claims.next_at
            if self._retry_heap:
                wake = min(wake, self._retry_heap[0][0])
            block = max(1, min(block, int((wake - time.monotonic()) * 1000)))
        rate, tag, granted = self.spec.rate, "", 0
        if rate is not None:
            # Each start is logged in the window before the read; what it does not return
            # is given back. Fetch only what starts now.
            count = max(1, min(count, self.pool.size - len(self.pool.running_jobs())))
            granted, wait_ms, tag = await self._rate.take(
                rate.limit, rate.per_ms, count, self.transport.consumer
            )
            if not granted:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), min(wait_ms / 1000, BLOCK_SECONDS))
                return []
            count = granted
        entries = await self.transport.read_group(count, block)
        if rate is not None and len(entries) < granted:
            await self._rate.give_back(tag, len(entries) + 1, granted)
        if not entries and not self.conn.can_block:
            await self._idle_wait()
        tracked = self._track(entries)
        if tracked and await self._paused_meanwhile():
            await self.handback(tracked, False)  # delivered while paused: uncounted, claimable
            return []
        return tracked

    def _track(self, entries: list[Entry]) -> list[Entry]:
        self._in_flight.update(zip(map(_ID, entries), map(_DELIVERIES, entries), strict=True))
        if entries:
            self._seen(entries[-1].id)
        if not _any_target(entries):
            return entries
        ours = []
        for entry in entries:
            if _addressed(entry, self.spec.group):
                ours.append(entry)
            else:
                self._outcomes.acks.append(entry.id)  # addressed to another group: not ours
                self.pool.hold()
                self.settle_soon()
        return ours

    def _due_retries(self, room: int) -> list[str]:
        now = time.monotonic()
        due: list[str] = []
        while self._retry_heap and self._retry_heap[0][0] <= now and len(due) < room:
            due.append(heapq.heappop(self._retry_heap)[1])
        return due

    def record(self, entry: Entry, decision: Decision) -> Awaitable[None] | None:
        entry_id = entry.id
        if isinstance(decision, Ack):
            self._outcomes.acks.append(entry_id)
            self.pool.unsettled += 1  # hold(), inlined
            if not self.settle_asked:
                self.settle_soon()
        elif isinstance(decision, Again):
            # Stays pending and ours (kept fresh by upkeep) until it is due again.
            heapq.heappush(self._retry_heap, (time.monotonic() + decision.delay, entry_id))
        elif isinstance(decision, Dead):
            attempt = max(entry.deliveries, 1)
            self._outcomes.dead.append(_letter(entry, decision.error, attempt, self._max_size))
            self.pool.hold()
            self.settle_soon()
        elif isinstance(decision, Throttle):
            return self._throttled(entry, decision)
        return None

    async def _throttled(self, entry: Entry, decision: Throttle) -> None:
        await self.transport.throttle(self._throttle_key, int(decision.delay * 1000))
        self._pause_checked = -PAUSE_POLL  # look again before the next read
        await self.handback([entry], False)  # claimable at once, its delivery uncounted

    def has_unsettled(self) -> bool:
        return self._outcomes.due

    @property
    def idle(self) -> bool:
        return super().idle and not self._outcomes.dead

    def refusing(self) -> bool:
        return self._outcomes.refusing

    async def settle(self) -> None:
        await self._outcomes.write()

    async def upkeep(self) -> None:
        try:
            await self.transport.heartbeat(self.lease_ms)
            outcomes = self._outcomes
            if outcomes.dead_due:
                self.settle_soon()
            touched = await self.transport.touch(list(self._in_flight))
            # An entry settled while the script ran is not lost: it left _in_flight once its
            # write returned, or its write is still under way.
            lost = [i for i in touched if i in self._in_flight and not outcomes.holds(i)]
            if lost:
                for entry_id in lost:
                    del self._in_flight[entry_id]
                gone = set(lost)  # another consumer's now: those not started never start here
                self.pool.drop(lambda entry: entry.id in gone)
                log.warning(
                    "stream %r group %r: %d entr(y/ies) held here are no longer pending for "
                    "this consumer (lease lapsed or group recreated); they may run twice",
                    self.handler.key,
                    self.spec.group,
                    len(lost),
                )
            self.renewed()
            await self._group_checks.run(time.monotonic())
        except Exception as exc:
            # The group or stream is gone: the fetch loop recreates it.
            if not is_nogroup(exc):
                raise

    async def handback(self, jobs: list[Entry], started: bool) -> None:
        # Fetched but not finished: claimable by others at once. A delivery whose handler
        # never started is not counted; one interrupted at shutdown is.
        released = []
        for job in jobs:
            self._in_flight.pop(job.id, None)
            released.append((job.id, job.deliveries if started else job.deliveries - 1))
        await self.transport.handback(released)

    def retry_soon(self, job: Entry) -> None:
        self._in_flight[job.id] = job.deliveries
        heapq.heappush(self._retry_heap, (time.monotonic(), job.id))

    async def leave(self) -> None:
        if self._outcomes.dead:
            # One last try for refused dead letters; entries still refused stay pending here,
            # and the group's other consumers claim them once the lease has passed.
            self._outcomes.retry_dead_now()
            await self._outcomes.write_dead()
        # Entries waiting for a retry become claimable by the others at once; their failed
        # deliveries still count.
        waiting = [(entry_id, self._in_flight.get(entry_id, 1)) for _, entry_id in self._retry_heap]
        self._retry_heap.clear()
        await self.transport.handback(waiting)
        await self.transport.leave()


class TailConsumer(_StreamBase):
    """A group-less stream handler: XREAD from new entries, no ack, no claim (a log tail)."""

    async def start(self) -> None:
        self._after = await self.transport.last_id() if self.spec.start == "latest" else "0-0"

    async def fetch(self, room: int) -> list[Entry]:
        if await self._pause_wait():
            return []
        block = int(BLOCK_SECONDS * 1000) if self.conn.can_block else None
        entries = await self.transport.read_tail(self._after, min(room, self.spec.batch), block)
        if entries and await self._paused_meanwhile():
            return []  # read again from the same place once resumed
        if entries:
            self._after = entries[-1].id
        elif not self.conn.can_block:
            await self._idle_wait()
        if _any_target(entries):
            return [entry for entry in entries if _addressed(entry, None)]
        return entries

    def record(self, entry: Entry, decision: Decision) -> Awaitable[None] | None:
        """Nothing to write without a group: a failed entry stays in the stream."""
        return None

    def _dead_letter(self, msg_id: str, attempt: int, error: str) -> Dead:
        # No group, no dead letters: the entry stays in the stream, nothing else is written.
        log.error(
            "handler=%s key=%s id=%s failed: %s (a handler without a group does not retry; "
            "the entry stays in the stream)",
            self.handler.name,
            self.handler.key,
            msg_id,
            error,
        )
        return Dead(error)

    def has_unsettled(self) -> bool:
        return False

    def retry_soon(self, job: Entry) -> None:
        """Nothing to retry without a group: the entry stays in the stream."""

    async def settle(self) -> None:
        return None


__all__ = ["GroupConsumer", "TailConsumer", "error_text", "group_lag"]
