"""``within``: a handler call under its ``timeout=``, run in the caller's own task."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _waiting import completes, until

from aioredq import HandlerTimeout, _limits
from aioredq._limits import within


@pytest.fixture(autouse=True)
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_limits, "GRACE", 0.05)


async def test_a_call_that_never_waits_gives_its_value() -> None:
    async def quick() -> int:
        return 7

    assert await within(quick(), 0.01, "quick") == 7


async def test_a_call_that_waits_gives_its_value_and_leaves_the_task_uncancelled() -> None:
    async def waits() -> str:
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        return "done"

    assert await within(waits(), 30, "waits") == "done"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_a_call_past_its_timeout_is_cancelled_and_times_out() -> None:
    cancelled = asyncio.Event()

    async def hangs() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(HandlerTimeout, match=r"timeout of 0\.05s"):
        await within(hangs(), 0.05, "hangs")
    assert cancelled.is_set()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # still runs: the deadline's cancellation was taken back


async def test_a_call_that_ends_quietly_when_cancelled_still_times_out() -> None:
    async def quiet() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return "ignored"
        return "never"

    with pytest.raises(HandlerTimeout):
        await within(quiet(), 0.05, "quiet")


async def test_a_call_that_fails_when_cancelled_still_times_out() -> None:
    async def fails() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise ValueError("cleanup went wrong") from None

    with pytest.raises(HandlerTimeout):
        await within(fails(), 0.05, "fails")


async def test_a_call_that_ignores_its_cancellation_runs_on_in_a_task_of_its_own() -> None:
    release = asyncio.Event()
    finished: list[str] = []

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue
        await asyncio.sleep(0)
        finished.append("rest")

    with pytest.raises(HandlerTimeout):
        await completes(within(stubborn(), 0.05, "stubborn"), "the timed-out call")
    assert len(_limits.STRAYS) == 1
    assert finished == []
    release.set()
    await until(lambda: finished == ["rest"], what="the stray call to finish")
    await until(lambda: not _limits.STRAYS, what="the stray call to be forgotten")


async def test_a_call_that_ignores_its_cancellation_but_ends_within_the_grace() -> None:
    steps: list[str] = []

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            steps.append("cancelled")
        await asyncio.sleep(0)
        steps.append("ended")

    with pytest.raises(HandlerTimeout):
        await within(slow_to_stop(), 0.05, "slow_to_stop")
    assert steps == ["cancelled", "ended"]
    assert not _limits.STRAYS


async def test_a_stop_cancels_the_call_and_is_not_a_timeout() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def hangs() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def caller() -> Any:
        return await within(hangs(), 30, "hangs")

    task = asyncio.create_task(caller())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()


async def test_a_stop_of_a_stubborn_call_frees_the_caller_after_the_grace() -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    async def caller() -> Any:
        return await within(stubborn(), 30, "stubborn")

    task = asyncio.create_task(caller())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await completes(task, "the stopped caller")
    assert len(_limits.STRAYS) == 1
    release.set()
    await until(lambda: not _limits.STRAYS, what="the stray call to end")


async def test_something_else_cancelled_under_the_call_is_the_calls_business() -> None:
    loop = asyncio.get_running_loop()

    async def survives() -> str:
        fut = loop.create_future()
        loop.call_soon(fut.cancel)
        try:
            await fut
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(0)
        return "carried on"

    assert await within(survives(), 30, "survives") == "carried on"


async def test_errors_and_values_from_what_the_call_awaits_pass_through() -> None:
    loop = asyncio.get_running_loop()

    async def fails() -> None:
        fut = loop.create_future()
        loop.call_soon(fut.set_exception, KeyError("k"))
        await fut

    with pytest.raises(KeyError):
        await within(fails(), 30, "fails")

    async def gets() -> int:
        fut = loop.create_future()
        loop.call_soon(fut.set_result, 5)
        return int(await fut) + 1

    assert await within(gets(), 30, "gets") == 6


async def test_the_deadline_counts_from_the_start_of_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    clock = [1000.0]
    armed: list[float] = []
    call_at = loop.call_at

    def recording_call_at(
        when: float, callback: Any, *args: Any, **kwargs: Any
    ) -> asyncio.TimerHandle:
        armed.append(when)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "time", lambda: clock[0])
    monkeypatch.setattr(loop, "call_at", recording_call_at)

    async def slow_start() -> str:
        clock[0] += 3.0  # three seconds of work before its first wait
        await asyncio.sleep(0)
        return "done"

    assert await within(slow_start(), 5, "slow_start") == "done"
    assert armed == [1005.0]
