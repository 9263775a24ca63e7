"""Periodic jobs (``@app.task(..., cron=..., tz=...)`` or ``every=seconds``): the scheduler.

Ticks are computed from the schedule alone (``_cron``), so every app running the handler
agrees on them; the fire script (``_transports/schedule.py``) makes each tick one job.
A tick missed while no app ran fires once at start (the latest one), not once per missed
tick; a schedule never fired before starts with the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from typing import Any

from anyio.abc import TaskStatus

from ._codec import encode_envelope, new_ids
from ._connection import Connection
from ._cron import Schedule
from ._handlers import TaskHandler
from ._transports.schedule import ScheduleTransport

log = logging.getLogger("aioredq")
RETRY_AFTER = 1.0  # seconds before a failed fire is tried again


def schedule_of(handler: TaskHandler) -> Schedule | None:
    spec = handler.spec
    if spec.cron is None and spec.every is None:
        return None
    return Schedule(spec.cron, spec.tz, spec.every)


class Scheduler:
    """Fires one handler's ticks; one per app running the handler, all racing harmlessly."""

    def __init__(self, handler: TaskHandler, conn: Connection, schedule: Schedule) -> None:
        self.handler = handler
        self.schedule = schedule
        self.transport = ScheduleTransport(conn, handler.key, handler.name)
        self._stop = asyncio.Event()
        self.fired = 0  # ticks this scheduler fired (the others lost the race)

    @property
    def idle(self) -> bool:
        return True

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, shutdown_timeout: float, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        upto: float | None = None  # the latest tick known fired (by anyone)
        problem: str | None = None  # reported once, until it works again
        while not self._stop.is_set():
            now = time.time()
            due = self.schedule.latest_at_or_before(now)
            try:
                if upto is None:
                    last = await self.transport.last()
                    # Never fired: start with the next tick. Else a missed one fires once.
                    upto = due if last is None else last / 1000
                if due > upto + 1e-6:
                    await self._fire(due)
                    upto = due
            except Exception as exc:
                if str(exc) != problem:
                    log.warning(
                        "handler=%s: periodic tick not enqueued (%s; schedule key %r); "
                        "trying again every %.0fs",
                        self.handler.name,
                        exc,
                        self.transport.key,
                        RETRY_AFTER,
                    )
                problem = str(exc)
                await self._sleep(RETRY_AFTER)
                continue
            if problem is not None:
                log.warning(
                    "handler=%s: periodic ticks working again (was: %s)", self.handler.name, problem
                )
                problem = None
            await self._sleep(self.schedule.next_after(now) - time.time())

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), max(seconds, 0.0))

    async def _fire(self, tick: float) -> None:
        at = datetime.fromtimestamp(tick, self.schedule.zone)
        (msg_id,) = new_ids(1)
        item = encode_envelope(at, msg_id=msg_id)
        if await self.transport.fire(round(tick * 1000), item):
            self.fired += 1


def describe(handler: TaskHandler, last_ms: int | None, now: float) -> dict[str, Any] | None:
    """``{"next", "last_fired"}`` (ISO 8601 in the schedule's zone) for inspect and metrics."""
    schedule = schedule_of(handler)
    if schedule is None:
        return None
    zone = schedule.zone
    nxt = datetime.fromtimestamp(schedule.next_after(now), zone).isoformat()
    last = None if last_ms is None else datetime.fromtimestamp(last_ms / 1000, zone).isoformat()
    return {"next": nxt, "last_fired": last}
