"""Reliable list queues.

Producers LPUSH on the queue list; consumers take from the right (FIFO). A consumer never pops
an item into its own memory: ``FETCH`` moves a batch atomically into the consumer's processing
list ``{q}:processing:<consumer>``, counting the delivery in the item itself (aioredq's envelope
starts with ``{"aioredq":1,"attempts":N,``; a foreign item is wrapped in one the first time it
is taken). Success removes the item; failure moves it to ``{q}:delayed`` or ``{q}:dead``; a
consumer whose heartbeat in ``{q}:consumers`` expires has its processing list moved back to the
head of the queue. Every script gets all of its keys through KEYS, all in one hash slot.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from .._connection import Connection
from . import clients, keys
from .dedup import ENQUEUE_KEYED, free_args, keyed_settle
from .queue_scripts import (
    ENQUEUE_DELAYED,
    EXPIRED,
    FETCH,
    HANDBACK,
    LEAVE,
    RECOVER,
    SETTLE,
)
from .queue_scripts import (
    HEARTBEAT as HEARTBEAT,  # re-exported: the stream transport shares it
)

# Every command a task consumer or producer sends, its scripts' commands included (Redis checks
# those against the user's ACL too). `aioredq acl` grants exactly these; tests/test_acl.py runs
# every model under them and fails on any denial, so keep this in step with the code below.
COMMANDS = (
    *("evalsha", "script|load", "time", "scan", "exists"),
    *("lpush", "rpush", "blmove", "lmove", "lrem", "llen", "lrange", "lpos", "ltrim", "lindex"),
    *("zadd", "zrem", "zrange", "zrangebyscore", "zscore", "zmscore"),
    *("set", "get", "del", "type", "pexpire", "zcard", "zremrangebyscore"),
)

# Where dedup.py looks for an item's dedup key: its field among the first 512 bytes.
_DEDUP_FIELD = re.compile(rb',"dedup":')


@dataclass(frozen=True, slots=True)
class Fetched:
    items: list[bytes]
    next_due_ms: int | None  # score of the earliest delayed item, if any
    now_ms: int  # server time
    registered: bool  # this consumer was not in the consumers ZSET (first fetch, or expired)
    problem: str | None = None  # what held back part of the work (a wrong-typed key, ...)
    paused: bool = False  # the queue's pause key exists: nothing was taken
    rate_wait_ms: int | None = None  # the rate allows no start for this long


@dataclass(frozen=True, slots=True)
class Settled:
    count: int  # items that were still held and are settled now
    retries_refused: int | None = None  # index of the first retry not written, if any
    retry_error: str | None = None
    dead_refused: int | None = None  # index of the first dead letter not written, if any
    dead_error: str | None = None


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class QueueTransport:
    """The Redis side of one queue, for one consumer (or a producer when consumer is empty)."""

    def __init__(self, client: Any, queue: str, consumer: str = "", *, reader: Any = None) -> None:
        self.client = client
        self.reader = client if reader is None else reader  # the blocking wait's client
        self.queue = queue
        self.consumer = consumer
        self.processing = keys.processing(queue, consumer)
        self.processing_prefix = keys.processing(queue, "")
        self.delayed = keys.delayed(queue)
        self.dead = keys.dead(queue)
        self.consumers = keys.consumers(queue)
        self.lock = keys.recover_lock(queue)
        self.paused = keys.paused(queue)
        self.priorities = [keys.priority(queue, p) for p in range(1, 10)]
        self.rate_window = keys.aux(queue, "rate")
        self.throttled = keys.aux(queue, "throttled")
        self._fetch = client.register_script(FETCH)
        self._settle = client.register_script(SETTLE)
        self._settle_keyed = client.register_script(keyed_settle(SETTLE))
        self._enqueue_keyed = client.register_script(ENQUEUE_KEYED)
        self._handback = client.register_script(HANDBACK)
        self._enqueue_delayed = client.register_script(ENQUEUE_DELAYED)
        self._heartbeat = client.register_script(HEARTBEAT)
        self._leave = client.register_script(LEAVE)
        self._expired = client.register_script(EXPIRED)
        self._recover = client.register_script(RECOVER)

    @classmethod
    def for_consumer(cls, conn: Connection, queue: str, consumer: str) -> QueueTransport:
        """A consumer's transport: settling on the consumers' client, waits blocking."""
        return cls(clients.consuming(conn), queue, consumer, reader=clients.blocking(conn))

    @classmethod
    def for_producer(cls, conn: Connection, queue: str) -> QueueTransport:
        return cls(clients.producing(conn), queue)

    def produces_on(self, conn: Connection) -> bool:
        """Whether this transport talks through ``conn``'s current producing client (it is
        made again after a reconnect)."""
        return self.client is clients.producing(conn)

    # producing ---------------------------------------------------------------------------
    async def push(self, items: Sequence[bytes], priority: int = 0) -> None:
        """LPUSH on the queue, or on the list of ``priority`` (1 to 9, items whose envelope
        carries it)."""
        await self.client.lpush(self.priorities[priority - 1] if priority else self.queue, *items)

    async def push_keyed(
        self,
        item: bytes,
        msg_id: str,
        key: str,
        *,
        priority: int = 0,
        delay_ms: int | None = None,
        at_ms: int | None = None,
    ) -> str:
        """Enqueue ``item`` unless a job holds dedup ``key``; the id that holds it."""
        if delay_ms is not None or at_ms is not None:
            dest = self.delayed
        else:
            dest = self.priorities[priority - 1] if priority else self.queue
        held = await self._enqueue_keyed(
            keys=[keys.dedup(self.queue, key), dest],
            args=[
                msg_id,
                item,
                "" if delay_ms is None else delay_ms,
                "" if at_ms is None else at_ms,
            ],
        )
        return _text(held)

    async def push_delayed(self, items: Sequence[bytes], delay_ms: int) -> None:
        await self._enqueue_delayed(keys=[self.delayed], args=[delay_ms, *items])

    async def push_at(self, items: Sequence[bytes], at_ms: int) -> None:
        await self.client.zadd(self.delayed, dict.fromkeys(items, at_ms))

    # consuming ---------------------------------------------------------------------------
    async def fetch(
        self,
        count: int,
        lease_ms: int,
        id_prefix: str,
        promote: int,
        max_bytes: int = 1 << 53,
        rate: tuple[int, int] = (0, 1000),
    ) -> Fetched:
        """Move up to ``count`` items into this consumer's processing list (after promoting
        up to ``promote`` due delayed items), counting the delivery in each, and renew the
        lease. Foreign items are wrapped in an envelope whose id starts with ``id_prefix``;
        an item over ``max_bytes`` is kept aside under ``oversized_key`` and replaced by a
        stub envelope (see ``FETCH``)."""
        reply = await self._fetch(
            keys=[
                self.queue,
                self.processing,
                self.delayed,
                self.consumers,
                keys.dead(self.queue) + ":" + id_prefix,
                self.paused,
                *self.priorities,
                self.rate_window,
                self.throttled,
            ],
            args=[count, self.consumer, lease_ms, id_prefix, promote, max_bytes, *rate],
        )
        items, nxt, now, fresh, *rest = reply
        problem = rest[0] if rest else None
        return Fetched(
            list(items or ()),
            None if nxt is None else int(float(nxt)),
            int(now),
            bool(fresh),
            _text(problem) if problem else None,
            bool(rest[1]) if len(rest) > 1 else False,
            int(rest[2]) if len(rest) > 2 and rest[2] is not None else None,
        )

    async def throttle(self, delay_ms: int) -> None:
        """Hold every consumer of the queue off for ``delay_ms`` (``RateLimited``)."""
        await self.client.set(self.throttled, "1", px=max(1, delay_ms))

    async def wait(self, timeout: float) -> None:
        """Block until the queue has an item, at most ``timeout`` seconds.

        ``BLMOVE q q RIGHT RIGHT`` rotates the last item onto itself: it wakes on the first push
        without taking anything, so a cancelled or timed-out wait can never lose an item (Redis
        7.0 refuses BLMOVE inside a script, so the move itself cannot block).
        """
        await self.reader.blmove(self.queue, self.queue, timeout, "RIGHT", "RIGHT")

    async def settle(
        self,
        acks: Sequence[bytes],
        retries: Sequence[tuple[bytes, int]],
        dead: Sequence[tuple[bytes, bytes]],
    ) -> Settled:
        """Apply a batch of outcomes (acks, retries, dead letters: see ``ack``, ``retry``,
        ``dead_letter``) in one atomic call, the consumer's unit of throughput. A refused
        retry or dead letter is
        left in the processing list (the reply says from which one on); the rest is written.
        (One script rather than a pipeline: redis-py 8.1 leaks a pooled connection when a
        pipeline's SCRIPT EXISTS fails, as it does in every outage.)"""
        args: list[Any] = [len(acks), len(retries), *acks]
        for item, delay_ms in retries:
            args += [item, delay_ms]
        for item, letter in dead:
            args += [item, letter]
        declared = [self.processing]
        if retries:
            declared.append(self.delayed)
        if dead:
            declared.append(self.dead)
        # Finished jobs enqueued with a dedup key free it in the same call (see dedup.py).
        script = self._settle
        dedup_keys: list[str] = []
        dead_items = [item for item, _ in dead]
        if any(map(_DEDUP_FIELD.search, [*acks, *dead_items], repeat(0), repeat(512))):
            first_dead = 3 + len(acks) + 2 * len(retries)
            finished = [(3 + k, item) for k, item in enumerate(acks)]
            finished += [(first_dead + 2 * j, item) for j, item in enumerate(dead_items)]
            dedup_keys, dedup_args = free_args(self.queue, finished)
        if dedup_keys:
            script = self._settle_keyed
            declared += dedup_keys
            args += [*dedup_args, len(dedup_keys)]
        n, rstop, rerr, dstop, derr = await script(keys=declared, args=args)
        return Settled(
            int(n),
            None if rstop is None else int(rstop),
            None if rerr is None else _text(rerr),
            None if dstop is None else int(dstop),
            None if derr is None else _text(derr),
        )

    async def ack(self, items: Sequence[bytes]) -> Settled:
        """Ack: LREM each item from this consumer's processing list (SETTLE)."""
        return await self.settle(items, [], [])

    async def retry(self, retries: Sequence[tuple[bytes, int]]) -> Settled:
        """Retry: ZADD each item (its attempts already counted) to ``<queue>:delayed`` at now
        + its delay, then LREM it from the processing list (SETTLE, the zset's type checked
        first; a refused item stays held)."""
        return await self.settle([], retries, [])

    async def dead_letter(self, dead: Sequence[tuple[bytes, bytes]]) -> Settled:
        """Dead letter: LPUSH each letter to ``<queue>:dead``, then LREM the item from the
        processing list (SETTLE, the dead list's type checked first; a refused item stays
        held)."""
        return await self.settle([], [], dead)

    async def handback(self, pairs: Sequence[tuple[bytes, bytes]]) -> int:
        """Handback (at a stop): RPUSH held items back at the head of the queue, then LREM
        them from the processing list, first pair taken first again (HANDBACK, both keys'
        types checked first); an item no longer held is skipped."""
        if not pairs:
            return 0
        args = [part for pair in pairs for part in pair]
        return int(
            await self._handback(keys=[self.processing, self.queue, *self.priorities], args=args)
        )

    async def held_count(self) -> int:
        return int(await self.client.llen(self.processing))

    async def held(self) -> list[bytes]:
        """Every item in this consumer's processing list."""
        return list(await self.client.lrange(self.processing, 0, -1))

    async def heartbeat(self, lease_ms: int) -> bool:
        """Renew this consumer's lease; True if it was not registered (first, or expired)."""
        return bool(await self._heartbeat(keys=[self.consumers], args=[self.consumer, lease_ms]))

    async def leave(self) -> bool:
        """Deregister this consumer if it holds nothing; else its lease will expire."""
        return bool(await self._leave(keys=[self.consumers, self.processing], args=[self.consumer]))

    async def recover(self, token: str, lock_ms: int) -> int:
        """Recovery: find consumers whose lease in ``<queue>:consumers`` expired (never this
        one) and take the recovery lock (EXPIRED: SET NX PX), then move their processing
        lists whole to the head of the queue and ZREM them (RECOVER: LMOVE item by item, or
        RENAME onto an empty queue; types checked first); returns the items moved."""
        expired = await self._expired(
            keys=[self.consumers, self.lock], args=[token, lock_ms, self.consumer]
        )
        if not expired:
            return 0
        return await self.recover_lists([_text(n) for n in expired], token)

    async def recover_lists(self, names: Sequence[str], token: str = "") -> int:
        """Move the processing lists of consumers ``names`` back to the queue, those that
        are (still) expired or not registered at all; returns the items moved."""
        lists = [keys.processing(self.queue, n) for n in names]
        return int(
            await self._recover(
                keys=[self.consumers, self.queue, self.lock, *self.priorities, *lists],
                args=[token, self.consumer, *names],
            )
        )

    async def scan_processing(self, cursor: int, count: int) -> tuple[int, list[str]]:
        """One SCAN step over this queue's processing lists: (next cursor, consumer names).

        On a cluster the keys live in the queue's slot, so the scan goes to that node only."""
        options: dict[str, Any] = {}
        if hasattr(self.client, "get_node_from_key"):
            options["target_nodes"] = self.client.get_node_from_key(self.queue)
        reply = await self.client.scan(
            cursor,
            match=keys.glob_escape(self.processing_prefix) + "*",
            count=count,
            _type="list",
            **options,
        )
        nxt, found = reply
        if isinstance(nxt, dict):  # a cluster client gives a cursor per node
            nxt = next(iter(nxt.values()), 0)
        start = len(self.processing_prefix)
        return int(nxt), [_text(k)[start:] for k in found]

    async def unregistered(self, names: Sequence[str]) -> list[str]:
        """Those of ``names`` that are not in the consumers ZSET at all."""
        if not names:
            return []
        scores = await self.client.zmscore(self.consumers, list(names))
        return [n for n, s in zip(names, scores, strict=True) if s is None]
