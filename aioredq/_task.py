"""The consumer of a ``@app.task`` queue.

Besides running handlers, it keeps promises the Lua scripts cannot keep alone:

- its local view of what it holds matches its processing list: a FETCH whose reply was lost to
  a dropped connection (and replayed by the client's retry) leaves items in the list that nobody
  runs, while the lease stays fresh. ``_reconcile`` compares the list's length with what is held
  and adopts any stranger;
- a retry due sooner than the current blocking wait does not wait for it: settling a retry
  nudges the fetch loop, which then sizes its wait to the earliest delayed item;
- after an outage it lets the other consumers renew their leases before taking their work;
- a retry or dead letter that Redis refuses (a wrong-typed key, OOM, an ACL denial) waits in
  the processing list and is tried again with backoff, while every other outcome is written;
  what waits counts against the pool's room, so memory stays bounded;
- processing lists whose consumer is not registered at all (orphans) are found by a slow SCAN
  of the queue's processing prefix and recovered like an expired consumer's.

It never recovers its own processing list: a live consumer settles its own work.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter
from typing import Any

from ._codec import DecodeError, TaskItem, parse_task_item
from ._connection import BLOCK_SECONDS, Connection, is_connection_error
from ._consumer import PAUSE_POLL, Consumer, log
from ._decisions import Ack, Again, Dead, Decision, Throttle
from ._handlers import TaskHandler
from ._keeping import KeepingOutcomes
from ._message import Message
from ._orphans import OrphanScan
from ._outage import Outage
from ._outcomes import Outcomes
from ._stats import Counters
from ._task_cancels import CancelWatch
from ._task_letters import dead_letter, refusal, task_message
from ._task_wait import BlockingWait, block_time
from ._transports import keys
from ._transports.queue import QueueTransport
from ._transports.results import ResultTransport

# Consumers back off up to 5 s between reconnect attempts; wait that long after an outage
# before declaring anyone dead, so live consumers are not robbed for having been cut off too.
OUTAGE_GRACE = 6.0
_ITEM_ID = attrgetter("id")


@dataclass(slots=True, eq=False)
class Job:
    seq: int  # fetch order, so work handed back keeps its order
    item: TaskItem
    id: str  # the item's (a copy: read for each job)
    deliveries: int  # the item's delivery count, this one included


class TaskConsumer(Consumer[Job]):
    def __init__(
        self,
        handler: TaskHandler,
        conn: Connection,
        *,
        consumer: str,
        counters: Counters,
        wakeup: asyncio.Event | None,
        outage: Outage | None = None,
    ) -> None:
        super().__init__(handler, conn, counters=counters, outage=outage)
        self.spec = spec = handler.spec
        self.transport = QueueTransport.for_consumer(conn, handler.key, consumer)
        self._leased(self.spec.lease)
        self.max_attempts = spec.max_attempts
        self._wakeup = wakeup
        self._fetches = 0
        self._seq = 0
        self._token = uuid.uuid4().hex
        self.outcomes: Outcomes = Outcomes(self.transport, self.settle_soon)
        self._keeping: KeepingOutcomes | None = None
        if spec.result_ttl is not None:
            results = ResultTransport.for_consumer(conn, handler.key, consumer)
            self.outcomes = self._keeping = KeepingOutcomes(
                self.transport, results, spec.result_ttl, self.settle_soon
            )
        self._held: Counter[bytes] = Counter()  # what our processing list should hold
        self._held_total = 0  # the same, counted (an item held twice counts twice)
        self._settling = asyncio.Lock()  # settle vs. reconcile: both compare list and _held
        self._reconcile_at = 0.0
        self._wait = BlockingWait(conn, self.transport, self.stop, wakeup)
        self._nudge = self._wait.nudge
        self._registered_at: float | None = None  # when a reply first showed us registered
        self._recover_after: float | None = 0.0  # None: in an outage
        self._fetch_problem: str | None = None
        self._aside = keys.dead(handler.key) + ":"  # where FETCH keeps oversized items
        self._orphans = OrphanScan(self.transport, spec.lease)
        self._cancels = CancelWatch(conn, handler.key)

    async def start(self) -> None:
        # Register before the first fetch: a script Redis refuses (an ACL user without
        # EVALSHA or without the queue's keys) stops the start with one error, instead of
        # a worker that runs and logs refusals.
        sent = time.monotonic()
        self._check_registration(await self.transport.heartbeat(self.lease_ms), sent)

    # fetching ----------------------------------------------------------------------------
    async def fetch(self, room: int) -> list[Job]:
        if time.monotonic() >= self._reconcile_at:
            strays = await self._reconcile()
            self._reconcile_at = time.monotonic() + self.upkeep_interval
            if strays:
                return self._adopt(strays)
        self._fetches += 1
        # Cleared before the fetch, so a wake-up that comes while it runs is not lost.
        self._nudge.clear()
        if self._wakeup is not None:
            self._wakeup.clear()
        count = min(room, self.spec.batch)
        rate = self.spec.rate
        if rate is not None:
            # A start is logged in the rate window when fetched: fetch only what starts now.
            count = max(1, min(count, self.pool.size - len(self.pool.running_jobs())))
        sent = time.monotonic()
        fetched = await self.transport.fetch(
            count,
            self.lease_ms,
            f"{self.transport.consumer}:{self._fetches}:",
            count,
            self.handler.app.max_body_bytes,
            (0, 1000) if rate is None else (rate.limit, rate.per_ms),
        )
        self._check_registration(fetched.registered, sent)
        self._check_problem(fetched.problem)
        if fetched.paused:
            await self._hand_back_unstarted()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), PAUSE_POLL)
            return []
        if fetched.items:
            return self._adopt(fetched.items)
        if fetched.rate_wait_ms is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.stop.wait(), min(fetched.rate_wait_ms / 1000, BLOCK_SECONDS)
                )
            return []
        await self._wait.block(block_time(fetched))
        return []

    async def _hand_back_unstarted(self) -> None:
        """Paused: what was fetched but not started goes back to the head of the queue, its
        delivery uncounted (in-flight jobs finish)."""
        unstarted = self.pool.take_unstarted()
        try:
            await self._return(unstarted, False)
        except BaseException:
            self.pool.put_many(unstarted)  # still ours and held: run them after all
            raise

    def _adopt(self, raws: list[bytes]) -> list[Job]:
        self._held.update(raws)
        self._held_total += len(raws)
        # Never raises: an unreadable envelope is marked broken and dead-lettered, its
        # delivery count still the one the scripts keep.
        items = list(map(parse_task_item, raws))
        seq, self._seq = self._seq, self._seq + len(items)
        if not all(map(_ITEM_ID, items)):
            for k, item in enumerate(items, seq + 1):
                if not item.id:  # a broken envelope: its dead letter still needs an id
                    item.id = f"{self.transport.consumer}:{self._fetches}:x{k}"
        return [Job(k, item, item.id, item.attempts) for k, item in enumerate(items, seq + 1)]

    async def _reconcile(self) -> list[bytes]:
        """Items in our processing list that we do not know about (see the module doc)."""
        async with self._settling:
            if await self.transport.held_count() <= self._held_total:
                return []
            strays = list((Counter(await self.transport.held()) - self._held).elements())
        if strays:
            log.warning(
                "queue %r: %d item(s) in this consumer's processing list were not known to "
                "it (a reply lost to a dropped connection); running them",
                self.handler.key,
                len(strays),
            )
        return strays

    def _check_problem(self, problem: str | None) -> None:
        if problem is not None and self._fetch_problem is None:
            log.error(
                "queue %r: part of the work cannot move (%s); the rest goes on, and it "
                "flows again once the key is fixed",
                self.handler.key,
                problem,
            )
        elif problem is None and self._fetch_problem is not None:
            log.warning("queue %r: working again (was: %s)", self.handler.key, self._fetch_problem)
        self._fetch_problem = problem

    def _check_registration(self, registered_now: bool, sent: float) -> None:
        """``registered_now``: the call sent at ``sent`` found this consumer unregistered.
        Only a call sent after registration was seen can have found it lost: heartbeat and
        fetch run on two connections, so their replies may arrive in either order."""
        seen = self._registered_at
        if registered_now and seen is not None and sent > seen:
            log.warning(
                "queue %r: this consumer was no longer registered: its lease (%.1fs) expired "
                "and other consumers took its in-flight work, which may run twice (was the "
                "event loop blocked, or Redis unreachable or restarted without its data?)",
                self.handler.key,
                self.spec.lease,
            )
            # What waits here unstarted may be another consumer's now: drop it. Whatever is
            # still in this consumer's processing list, ``_reconcile`` adopts again.
            self._release([job.item.raw for job in self.pool.drop(lambda job: True)])
        if seen is None:
            self._registered_at = time.monotonic()

    # running -----------------------------------------------------------------------------
    def record(self, job: Job, decision: Decision) -> Awaitable[None] | None:
        item = job.item
        if self._keeping is not None:
            decision = self._keep(item, decision)
        if isinstance(decision, Ack):
            self.outcomes.acks.append(item.raw)
        elif isinstance(decision, Again):
            self.outcomes.retries.append((item.raw, max(int(decision.delay * 1000), 1)))
        elif isinstance(decision, Dead):
            letter = dead_letter(item, decision.error, self.handler.key, self.spec, self._aside)
            self.outcomes.dead.append((item.raw, letter))
        elif isinstance(decision, Throttle):
            return self._throttled(job, decision)
        self.pool.unsettled += 1  # hold(), inlined
        if not self.settle_asked:
            self.settle_soon()
        return None

    async def _throttled(self, job: Job, decision: Throttle) -> None:
        await self.transport.throttle(int(decision.delay * 1000))
        await self._return([job], False)  # back uncounted, at the head of its list

    def _keep(self, item: TaskItem, decision: Decision) -> Decision:
        """Note the result that settling ``item`` stores beside its ack or dead letter."""
        assert self._keeping is not None
        if isinstance(decision, Ack):
            limit = self.handler.app.max_body_bytes
            error = self._keeping.keep_value(item.raw, item.id, decision.value, limit)
            if error is None:
                return decision
            # The handler ran, but its result cannot be kept: dead, so the waiter learns why.
            decision = self._dead_letter(item.id, item.attempts, error)
        if isinstance(decision, Dead):
            self._keeping.keep_error(item.raw, item.id, decision.error)
        return decision

    def message(self, job: Job) -> Message:
        return task_message(job.item, self.handler.key, self.spec.max_attempts)

    def decode(self, job: Job) -> Any:
        """The handler's body; an item too large or not an envelope is refused."""
        item = job.item
        if item.oversized is not None or item.broken is not None:
            problem = refusal(item, self._aside, self.handler.app.max_body_bytes)
            if problem is not None:
                raise DecodeError(problem)
        return self.handler.codec.decode_item(item)

    # settling ----------------------------------------------------------------------------
    def has_unsettled(self) -> bool:
        return self.outcomes.due()

    @property
    def idle(self) -> bool:
        return super().idle and not self.outcomes.refused()

    def refusing(self) -> bool:
        return self.outcomes.refused()

    async def settle(self) -> None:
        async with self._settling:
            written, retried = await self.outcomes.write()
            if self._keeping is not None and written:
                wake = getattr(self.handler.app, "_wake", None)
                if wake is not None:  # in-process waiters (memory:// cannot block)
                    wake(keys.finished(self.handler.key))
            self._release(written)
            self.pool.settled(len(written))
        if any(delay_ms < BLOCK_SECONDS * 1000 for _, delay_ms in retried):
            self._nudge.set()

    def _release(self, raws: list[bytes]) -> None:
        held = self._held
        before = len(held)
        if self._held_total == before:  # each held once: forgotten in one C-level pass
            deque(map(held.pop, raws, repeat(None)), maxlen=0)
            self._held_total -= before - len(held)
            return
        for raw in raws:
            left = held.get(raw, 0) - 1
            if left >= 0:
                self._held_total -= 1
            if left > 0:
                held[raw] = left
            else:
                held.pop(raw, None)

    # upkeep ------------------------------------------------------------------------------
    async def upkeep(self) -> None:
        sent = time.monotonic()
        try:
            registered_now = await self.transport.heartbeat(self.lease_ms)
        except BaseException as exc:
            # Unreachable, or no reply by the deadline (the call is cancelled): an outage.
            if isinstance(exc, asyncio.CancelledError) or is_connection_error(exc):
                self._recover_after = None
            raise
        self._check_registration(registered_now, sent)
        self.renewed()
        await self._cancels.check(self)
        if self._recover_after is None:
            self._recover_after = time.monotonic() + OUTAGE_GRACE
        if time.monotonic() < self._recover_after:
            return
        moved = await self.transport.recover(self._token, self.lease_ms)
        if moved:
            log.warning(
                "queue %r: moved %d in-flight item(s) of dead consumer(s) back to the queue",
                self.handler.key,
                moved,
            )
        await self._orphans.step()

    # stopping ----------------------------------------------------------------------------
    async def handback(self, jobs: list[Job], started: bool) -> None:
        """Give back unfinished jobs in fetch order. Unstarted ones get their delivery
        uncounted; interrupted ones keep it (they ran, like a crash)."""
        await self._wait.end()
        await self._return(jobs, started)

    def retry_soon(self, job: Job) -> None:
        self.outcomes.retries.append((job.item.raw, 1))
        self.pool.hold()
        self.settle_soon()

    async def _return(self, jobs: list[Job], started: bool) -> None:
        if not jobs:
            return
        jobs = sorted(jobs, key=lambda j: j.seq)
        pairs = [(j.item.raw, j.item.raw if started else j.item.undelivered()) for j in jobs]
        async with self._settling:
            await self.transport.handback(pairs)
            self._release([raw for raw, _ in pairs])

    async def leave(self) -> None:
        await self._wait.end()
        await self.transport.leave()
