"""A fixed pool of worker coroutines per handler, fed from a local buffer.

A task per message costs ~10 us; a fixed pool fed through a deque costs well under 1 us, and
gives the two numbers a consumer needs: how much room is left (so a fetch never asks for more
than ``capacity``), and which jobs were not started or were interrupted at shutdown (so they can
be handed back).

Workers are woken one at a time: a new job wakes one idle worker, and a worker that takes a job
while more are queued wakes the next. Handlers that suspend (I/O) so bring in as many workers as
there are jobs, while handlers that never suspend are run by one worker without waking the other
fifteen for nothing.

A job runs in steps the worker calls itself, so running one costs no coroutine frame beside the
handler's own: ``begin`` (synchronous) returns the call to await, or None when the job is done
without one; then ``end`` with what the call returned, or ``fail`` with what it raised; either
may return something to await before the worker takes its next job (rare: writing to Redis).
Without ``end``, the call is all there is to the job (its exceptions go to ``failed``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

J = TypeVar("J")
# What a worker awaits after a job's call, if anything.
After = Awaitable[None] | None


class Pool(Generic[J]):
    def __init__(
        self,
        size: int,
        capacity: int,
        begin: Callable[[J], Awaitable[Any] | None],
        failed: Callable[[J], Awaitable[None]] | None = None,
        *,
        end: Callable[[J, Any, float], After] | None = None,
        fail: Callable[[J, BaseException, float], After] | None = None,
    ) -> None:
        self.size = size
        self.capacity = max(capacity, size)
        self._begin = begin
        self._end = end
        self._fail = fail
        self._failed = failed  # called when a step raises
        self._queued: deque[J] = deque()
        # Jobs whose call is being awaited, by worker (what ``cancel_job`` may interrupt), and
        # jobs past their call whose worker awaits what ``end`` or ``fail`` returned.
        self._running: dict[asyncio.Task[None], J] = {}
        self._finishing: dict[asyncio.Task[None], J] = {}
        self._cancelled: set[asyncio.Task[None]] = set()  # workers ``cancel_job`` cancelled
        # Jobs ``close`` interrupted past their call (see ``close``).
        self.interrupted_after: list[J] = []
        self._workers: list[asyncio.Task[None]] = []
        self._sleepers: deque[asyncio.Future[None]] = deque()  # idle workers, to wake
        self._waking = 0  # woken, not yet running
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._busy = 0
        self._wanted = 0  # room the feeder waits for (0: nobody waits)
        # The same as a bound on queued + busy jobs, read by the workers for each job (-1:
        # nobody waits). Held outcomes are counted when the wait starts: any written since
        # then wake the feeder through ``settled``.
        self._busy_at_most = -1
        self._stop_waiting = False
        self._resumed = asyncio.Event()  # cleared: workers start no new job
        self._resumed.set()
        self._paused = False  # the same, read by the workers for each job
        self.stragglers = 0  # workers that outlived their cancellation at ``close``
        # Finished jobs whose outcome is not written to Redis yet (see ``hold``), and how many
        # of them take no room: while writes go well, up to a capacity's worth wait for the
        # next settle without holding up the next fetch (so a read overlaps the previous
        # write); while writes fail or are refused, every one of them counts.
        self.unsettled = 0
        self.unsettled_free = self.capacity

    # feeding -----------------------------------------------------------------------------
    @property
    def room(self) -> int:
        held = self.unsettled - self.unsettled_free
        return self.capacity - len(self._queued) - self._busy - (held if held > 0 else 0)

    def writes_ok(self, ok: bool) -> None:
        """Whether outcomes are being written: if not, each held one takes room."""
        self.unsettled_free = self.capacity if ok else 0
        if self._wanted and self.room >= self._wanted:
            self._room.set()

    def hold(self, count: int = 1) -> None:
        """``count`` finished jobs wait to be settled: beyond ``unsettled_free`` they keep
        their place in the pool, so outcomes that Redis refuses to take cannot pile up
        without bound."""
        self.unsettled += count

    def settled(self, count: int) -> None:
        """``count`` held outcomes are written: their room is free again."""
        self.unsettled = max(self.unsettled - count, 0)
        if self._wanted and self.room >= self._wanted:
            self._room.set()

    @property
    def outstanding(self) -> int:
        return len(self._queued) + self._busy

    async def wait_room(self, at_least: int = 1) -> None:
        """Return when ``at_least`` jobs fit, or after ``stop_waiting``."""
        try:
            while self.room < at_least and not self._stop_waiting:
                self._wanted = at_least
                self._busy_at_most = self.room + self._busy + len(self._queued) - at_least
                self._room.clear()
                await self._room.wait()
        finally:
            self._wanted = 0
            self._busy_at_most = -1

    def stop_waiting(self) -> None:
        self._stop_waiting = True
        self._room.set()

    # pausing ------------------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        """Start no new job (running ones go on) until ``resume``."""
        self._paused = True
        self._resumed.clear()

    def resume(self) -> None:
        self._paused = False
        self._resumed.set()

    async def wait_resumed(self) -> None:
        await self._resumed.wait()

    def drop(self, unwanted: Callable[[J], bool]) -> list[J]:
        """Remove and return the queued (unstarted) jobs for which ``unwanted`` is true."""
        dropped = [job for job in self._queued if unwanted(job)]
        if dropped:
            self._queued = deque(job for job in self._queued if not unwanted(job))
            if not self._busy and not self._queued:
                self._idle.set()
        return dropped

    def put_many(self, jobs: list[J]) -> None:
        self._queued.extend(jobs)
        self._idle.clear()
        self._wake_one()

    def offer(self, job: J, limit: int) -> J | None:
        """Queue ``job``; if ``limit`` jobs already wait, drop the oldest and return it."""
        dropped = self._queued.popleft() if len(self._queued) >= limit else None
        self._queued.append(job)
        self._idle.clear()
        self._wake_one()
        return dropped

    def _wake_one(self) -> None:
        while self._sleepers:
            sleeper = self._sleepers.popleft()
            if not sleeper.done():
                sleeper.set_result(None)
                self._waking += 1
                return

    def running_jobs(self) -> list[J]:
        return [*self._running.values(), *self._finishing.values()]

    def cancel_job(self, wanted: Callable[[J], bool]) -> bool:
        """Cancel the calls of the running jobs for which ``wanted`` is true; False if none."""
        found = False
        for task, job in self._running.items():
            if wanted(job) and task not in self._cancelled:
                task.cancel()
                self._cancelled.add(task)
                found = True
        return found

    def _cancel_spent(self, worker: asyncio.Task[None]) -> None:
        """The call ``cancel_job`` cancelled has ended, whatever it raised or returned: the
        worker is no longer being cancelled on its account (a stop's cancel still counts)."""
        if worker in self._cancelled:
            self._cancelled.discard(worker)
            worker.uncancel()

    async def wait_idle(self) -> None:
        await self._idle.wait()

    # lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._work()) for _ in range(self.size)]

    async def _work(self) -> None:
        current = asyncio.current_task()
        assert current is not None
        loop = asyncio.get_running_loop()
        begin, end, fail = self._begin, self._end, self._fail
        running = self._running
        clock = time.perf_counter
        while True:
            if self._busy + len(self._queued) <= self._busy_at_most:
                # The feeder waits for this room: let it send its next read first, so the round
                # trip overlaps the queued jobs (a handler that never waits would drain them).
                self._room.set()
                await asyncio.sleep(0)
                continue
            if not self._queued:
                if self._closing:
                    return
                await self._sleep(loop)
                continue
            if self._paused:
                await self._resumed.wait()
                continue
            job = self._queued.popleft()
            if self._queued and self._sleepers and not self._waking:
                self._wake_one()  # it runs if this job suspends (one on its way is enough)
            self._busy += 1
            after: After = None
            try:
                call = begin(job)
                if call is not None:
                    running[current] = job
                    if end is None or fail is None:
                        try:
                            await call
                        finally:
                            del running[current]
                    else:
                        started = clock()
                        try:
                            value = await call
                        except (Exception, asyncio.CancelledError) as exc:
                            del running[current]
                            if self._cancelled:
                                self._cancel_spent(current)
                            after = fail(job, exc, started)
                        else:
                            del running[current]
                            if self._cancelled:
                                self._cancel_spent(current)
                            after = end(job, value, started)
                if after is not None:
                    await self._finish(current, job, after)
            except Exception:
                if self._failed is None:
                    raise
                await self._finish(current, job, self._failed(job))
            finally:
                self._busy -= 1
                if not self._busy and not self._queued:
                    self._idle.set()

    async def _sleep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait to be woken (a job came, or the pool closes)."""
        sleeper = loop.create_future()
        self._sleepers.append(sleeper)
        try:
            await sleeper
        except asyncio.CancelledError:
            if sleeper.done() and not sleeper.cancelled():
                self._waking -= 1
                self._wake_one()  # pass on the wake-up this worker will not use
            raise
        self._waking -= 1

    async def _finish(self, worker: asyncio.Task[None], job: J, after: Awaitable[None]) -> None:
        self._finishing[worker] = job
        try:
            await after
        finally:
            del self._finishing[worker]

    def take_unstarted(self) -> list[J]:
        """Remove and return the jobs that no worker has started, in arrival order."""
        jobs = list(self._queued)
        self._queued.clear()
        if not self._busy:
            self._idle.set()
        return jobs

    def cancel(self) -> None:
        """Cancel every worker at once (the consumer itself is being cancelled)."""
        for task in self._workers:
            task.cancel()
        self._workers = []

    async def close(self, timeout: float, grace: float | None = None) -> list[J]:
        """Let running jobs finish within ``timeout``; cancel the rest and return the jobs
        whose call they interrupted, waiting at most ``grace`` seconds (None: as long as it
        takes) for them to end. Jobs past their call (awaiting what ``end`` or ``fail``
        returned) that were interrupted are left in ``interrupted_after``.

        Call ``take_unstarted`` first: workers still take queued jobs until the buffer is empty.
        """
        self._closing = True
        self.resume()
        while self._sleepers:
            self._wake_one()
        if not self._workers:
            return []
        done, pending = await asyncio.wait(self._workers, timeout=timeout)
        interrupted = [self._running[t] for t in pending if t in self._running]
        self.interrupted_after = [self._finishing[t] for t in pending if t in self._finishing]
        for task in pending:
            task.cancel()
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=grace)
            self.stragglers = len(stuck)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        self._workers = []
        return interrupted
