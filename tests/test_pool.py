"""The worker pool on its own (no Redis): the steps a job runs in, what a cancel interrupts,
what a close hands back, and the room held outcomes take."""

from __future__ import annotations

import asyncio
from typing import Any

from _waiting import until

from aioredq._pool import Pool


class Steps:
    """begin / end / fail of a pool, recording what they saw; each job is a name."""

    def __init__(self) -> None:
        self.ended: list[tuple[str, Any]] = []
        self.failed: list[tuple[str, str]] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.after: dict[str, asyncio.Event] = {}  # jobs whose ``end`` returns a wait
        self.cancelling: list[int] = []  # the worker's cancel requests as ``fail`` saw them

    def begin(self, job: str) -> Any:
        if job.startswith("skip"):
            return None
        return self._run(job)

    async def _run(self, job: str) -> str:
        if job in self.gates:
            await self.gates[job].wait()
        if job.startswith("boom"):
            raise ValueError(job)
        return job.upper()

    def end(self, job: str, value: Any, started: float) -> Any:
        self.ended.append((job, value))
        return self.after[job].wait() if job in self.after else None

    def fail(self, job: str, exc: BaseException, started: float) -> None:
        self.failed.append((job, type(exc).__name__))
        current = asyncio.current_task()
        assert current is not None
        self.cancelling.append(current.cancelling())


def make_pool(steps: Steps, size: int = 2, capacity: int = 4) -> Pool[str]:
    return Pool(size, capacity, steps.begin, end=steps.end, fail=steps.fail)


async def test_a_job_runs_through_begin_then_end_or_fail() -> None:
    steps = Steps()
    pool = make_pool(steps)
    pool.start()
    pool.put_many(["a", "skip-1", "boom-1", "b"])
    await until(lambda: len(steps.ended) + len(steps.failed) == 3, "three calls decided")
    await pool.wait_idle()
    assert sorted(steps.ended) == [("a", "A"), ("b", "B")]
    assert steps.failed == [("boom-1", "ValueError")]
    assert await pool.close(1.0) == []


async def test_cancel_job_interrupts_only_a_call_in_progress() -> None:
    steps = Steps()
    steps.gates["slow"] = asyncio.Event()
    steps.after["late"] = asyncio.Event()
    pool = make_pool(steps)
    pool.start()
    pool.put_many(["slow", "late"])
    await until(lambda: ("late", "LATE") in steps.ended, "late past its call")
    # "late" waits on what its end returned: its call is over, nothing to interrupt.
    assert not pool.cancel_job(lambda job: job == "late")
    assert pool.running_jobs() == ["slow", "late"]
    assert pool.cancel_job(lambda job: job == "slow")
    await until(lambda: steps.failed == [("slow", "CancelledError")], "the call cancelled")
    assert steps.cancelling == [0]  # the pool took its cancel back: the worker goes on
    steps.after["late"].set()
    await pool.wait_idle()
    assert await pool.close(1.0) == []


async def test_close_hands_back_jobs_in_their_call_and_past_it() -> None:
    steps = Steps()
    steps.gates["stuck"] = asyncio.Event()
    steps.after["ending"] = asyncio.Event()
    pool = make_pool(steps)
    pool.start()
    pool.put_many(["stuck", "ending", "queued"])
    await until(lambda: ("ending", "ENDING") in steps.ended, "ending past its call")
    assert pool.take_unstarted() == ["queued"]
    # Interrupted in its call (it ran, like a crash) and past it (on its way back).
    assert await pool.close(0.05, grace=1.0) == ["stuck"]
    assert pool.interrupted_after == ["ending"]
    # A cancellation of the worker itself goes to ``fail`` with the request still pending:
    # the decider there tells a stop from a handler's own error by it.
    assert steps.failed == [("stuck", "CancelledError")]
    assert steps.cancelling == [1]


async def test_held_outcomes_take_room_only_while_writes_fail() -> None:
    pool: Pool[str] = make_pool(Steps(), size=2, capacity=4)
    pool.hold(3)
    assert pool.room == 4  # up to a capacity's worth wait for their write freely
    pool.hold(2)
    assert pool.room == 3  # beyond it, each takes room
    pool.writes_ok(False)
    assert pool.room == -1  # writes failing: every one counts
    pool.settled(5)
    assert pool.room == 4
    pool.writes_ok(True)
    assert pool.room == 4
