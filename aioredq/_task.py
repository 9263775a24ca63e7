"""The consumer of a ``@app.task`` queue."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from ._codec import TaskItem, parse_task_item
from ._connection import BLOCK_SECONDS, Connection
from ._consumer import Ack, Again, Consumer, Dead, log
from ._handlers import TaskHandler
from ._message import Message
from ._stats import Counters
from ._transports.queue import QueueTransport

MEMORY_POLL = 0.05


class TaskConsumer(Consumer[TaskItem]):
    def __init__(
        self,
        handler: TaskHandler,
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
        self.transport = QueueTransport(conn.command, handler.key, consumer)
        self.lease_ms = int(spec.lease * 1000)
        self.upkeep_interval = min(spec.lease / 3, 1.0)
        self._wakeup = wakeup
        self._fetches = 0
        self._token = uuid.uuid4().hex
        self._acks: list[bytes] = []
        self._retries: list[tuple[bytes, int]] = []
        self._dead: list[tuple[bytes, bytes]] = []

    async def fetch(self, room: int) -> list[TaskItem]:
        self._fetches += 1
        count = min(room, self.spec.batch)
        fetched = await self.transport.fetch(
            count, self.lease_ms, f"{self.transport.consumer}:{self._fetches}:", count
        )
        if fetched.items:
            return [parse_task_item(raw) for raw in fetched.items]
        timeout = BLOCK_SECONDS
        if fetched.next_due_ms is not None:
            timeout = min(timeout, max((fetched.next_due_ms - fetched.now_ms) / 1000, 0.01))
        if self.conn.can_block:
            await self.transport.wait(self.conn.blocking, timeout)
        else:
            # fakeredis cannot block: wake on a local enqueue, else poll.
            assert self._wakeup is not None
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), min(timeout, MEMORY_POLL))
            except TimeoutError:
                pass
        return []

    async def process(self, item: TaskItem) -> None:
        env = item.envelope or {}
        enqueued = env.get("enqueued_at")
        message = Message(
            id=item.id,
            kind="task",
            name=self.handler.key,
            channel=self.handler.key,
            attempt=item.attempts,
            raw=item.original,
            headers=dict(env.get("headers") or {}),
            enqueued_at=None if enqueued is None else datetime.fromtimestamp(enqueued, UTC),
        )
        decision = await self.execute(
            lambda: self.handler.codec.decode_item(item),
            message,
            self.spec.max_attempts,
            self.spec.backoff,
        )
        match decision:
            case Ack():
                self._acks.append(item.raw)
            case Again(delay):
                self._retries.append((item.raw, max(int(delay * 1000), 1)))
            case Dead(error):
                self._dead.append((item.raw, self._letter(item, error)))
        self.settle_soon()

    def _letter(self, item: TaskItem, error: str) -> bytes:
        letter: dict[str, Any] = {
            "id": item.id,
            "queue": self.handler.key,
            "body": item.original.decode("utf-8", "replace"),
            "error": error,
            "attempts": item.attempts,
            "failed_at": datetime.now(UTC).isoformat(),
        }
        return json.dumps(letter).encode()

    def has_unsettled(self) -> bool:
        return bool(self._acks or self._retries or self._dead)

    async def settle(self) -> None:
        batch = self._acks, self._retries, self._dead
        self._acks, self._retries, self._dead = [], [], []
        try:
            await self.transport.settle(*batch)
        except BaseException:
            self._acks[:0], self._retries[:0], self._dead[:0] = batch
            raise

    async def upkeep(self) -> None:
        await self.transport.heartbeat(self.lease_ms)
        moved = await self.transport.recover(self._token, self.lease_ms)
        if moved:
            log.warning(
                "queue %r: moved %d in-flight item(s) of dead consumer(s) back to the queue",
                self.handler.key,
                moved,
            )

    async def handback(self, jobs: list[TaskItem]) -> None:
        if jobs:
            await self.transport.handback([(j.raw, j.undelivered()) for j in jobs])

    async def leave(self) -> None:
        await self.transport.leave()
