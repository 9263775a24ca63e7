"""Running a handler call under its ``timeout=``.

The call runs in the caller's own task, driven step by step: a call that ends without waiting
costs no task, no timer and no trip through the event loop. The deadline is armed at the call's
first wait; when it passes, the caller's task is cancelled, which cancels the call where it
waits, as ``asyncio.timeout`` would. A call that swallows that cancellation (or a stop's) cannot
hold the caller, and its pool slot, forever: after a short grace the rest of the call is moved
to a task of its own, the caller moves on (the delivery counts as timed out), and the stubborn
call is kept (not garbage collected) and counted until it ends by itself."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Generator
from typing import Any

from ._exceptions import HandlerTimeout

log = logging.getLogger("aioredq")
# How long a timed-out or interrupted call has to end once cancelled.
GRACE = 1.0
# Calls that ignored their cancellation and still run: the event loop only holds tasks weakly.
STRAYS: set[asyncio.Task[Any]] = set()


def within(call: Awaitable[Any], timeout: float | None, name: str) -> Awaitable[Any]:
    """``call``, awaited; past ``timeout`` seconds it is cancelled and ``HandlerTimeout`` raised."""
    if timeout is None:
        return call
    return _Within(call, timeout, name)


class _Within:
    """The awaitable ``within`` gives: ``await`` it once, in the task that runs the call."""

    __slots__ = ("_call", "_name", "_timeout")

    def __init__(self, call: Awaitable[Any], timeout: float, name: str) -> None:
        self._call = call
        self._timeout = timeout
        self._name = name

    def __await__(self) -> Generator[Any, Any, Any]:
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + self._timeout  # from the start, its first steps included
        steps = self._call.__await__()
        try:
            waits_on = next(steps)
        except StopIteration as done:
            return done.value  # ended without waiting: nothing to time
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a handler call with a timeout runs in an asyncio task")
        deadline = _Deadline(task, loop, ends_at)
        try:
            return (yield from _until_cancelled(steps, waits_on, deadline))
        except asyncio.CancelledError:
            if deadline.expired():
                raise self._timed_out() from None
            raise
        except _Stubborn as stubborn:
            deadline.disarm()  # cancelled already: the grace is all the call gets now
            try:
                yield from _grace(steps, stubborn.waits_on, self._name)
            except asyncio.CancelledError:
                deadline.expired()  # a stop in the grace: it is the outcome
                raise
            if deadline.expired():
                raise self._timed_out() from None
            raise asyncio.CancelledError from None
        finally:
            deadline.disarm()

    def _timed_out(self) -> HandlerTimeout:
        return HandlerTimeout(f"the handler ran longer than its timeout of {self._timeout:g}s")


class _Stubborn(Exception):
    """The call caught its cancellation and waits again (on ``waits_on``)."""

    def __init__(self, waits_on: Any) -> None:
        self.waits_on = waits_on


class _Deadline:
    """Cancels ``task`` at loop time ``when``, as ``asyncio.timeout_at`` does."""

    __slots__ = ("_cancelling", "_fired", "_handle", "_task")

    def __init__(
        self, task: asyncio.Task[Any], loop: asyncio.AbstractEventLoop, when: float
    ) -> None:
        self._task = task
        self._cancelling = task.cancelling()
        self._fired = False
        self._handle: asyncio.TimerHandle | None = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._fired = True
        self._handle = None
        self._task.cancel()

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def cancelled(self) -> bool:
        """Whether the task was cancelled since the call began (by the deadline or a stop),
        rather than something the call waits on being cancelled under it."""
        return self._fired or self._task.cancelling() > self._cancelling

    def expired(self) -> bool:
        """Whether the deadline cancelled the task and nothing else did; its cancellation is
        taken back (ask once, on the way out)."""
        if not self._fired:
            return False
        self._fired = False
        return self._task.uncancel() <= self._cancelling


def _until_cancelled(
    steps: Generator[Any, Any, Any], waits_on: Any, deadline: _Deadline
) -> Generator[Any, Any, Any]:
    """Delegate to the call as ``yield from`` does, until it ends, or until the task is
    cancelled: then the call ends with ``CancelledError`` whatever it does (its own outcome
    no longer matters), or raises ``_Stubborn`` if it goes on waiting."""
    send = steps.send
    throw = steps.throw
    while True:
        try:
            sent = yield waits_on
        except asyncio.CancelledError as exc:
            if not deadline.cancelled():
                try:
                    waits_on = throw(exc)
                except StopIteration as done:
                    return done.value
                continue
            try:
                waits_on = throw(exc)
            except (Exception, asyncio.CancelledError):  # ended, however: cancelled all the same
                raise exc from None
            raise _Stubborn(waits_on) from None
        except GeneratorExit:
            steps.close()
            raise
        except BaseException as exc:  # passed on to the call, as yield from does
            try:
                waits_on = throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                waits_on = send(sent)
            except StopIteration as done:
                return done.value


def _grace(steps: Generator[Any, Any, Any], waits_on: Any, name: str) -> Generator[Any, Any, None]:
    """The call ignored its cancellation: give it ``GRACE`` seconds to end (how, no longer
    matters), then move what is left of it to a task of its own."""
    loop = asyncio.get_running_loop()
    ends_at = loop.time() + GRACE
    while True:
        left = ends_at - loop.time()
        if left <= 0:
            _stray(steps, waits_on, name)
            return
        try:
            yield from _wait_at_most(waits_on, left)
        except asyncio.CancelledError:
            _stray(steps, waits_on, name)  # a stop: we go, it stays on its own
            raise
        if waits_on is not None and not waits_on.done():
            continue
        try:
            waits_on = steps.send(None)  # what it waited on is done: resume it
        except (Exception, asyncio.CancelledError):  # it ended within the grace
            return


def _wait_at_most(waits_on: Any, seconds: float) -> Generator[Any, Any, None]:
    """Wait until ``waits_on`` is done, or ``seconds`` have passed; never cancel it."""
    if waits_on is None:
        yield None  # a bare yield (``asyncio.sleep(0)``): one trip through the loop
        return
    loop = asyncio.get_running_loop()
    woken = loop.create_future()

    def wake(_: Any = None) -> None:
        if not woken.done():
            woken.set_result(None)

    waits_on.add_done_callback(wake)
    handle = loop.call_later(seconds, wake)
    try:
        yield from woken
    finally:
        handle.cancel()
        waits_on.remove_done_callback(wake)


def _stray(steps: Generator[Any, Any, Any], waits_on: Any, name: str) -> None:
    """Run the rest of the call in a task of its own, kept and counted until it ends."""
    task = asyncio.ensure_future(_rest(steps, waits_on))
    STRAYS.add(task)
    task.add_done_callback(_gone)
    log.error(
        "handler=%s ignored its cancellation for %.1fs and still runs in the background "
        "(%d such call(s) now); its slot is free again",
        name,
        GRACE,
        len(STRAYS),
    )


async def _rest(steps: Generator[Any, Any, Any], waits_on: Any) -> Any:
    if waits_on is not None:
        await asyncio.wait({waits_on})
    return await _Resumed(steps)


class _Resumed:
    """A call suspended where what it waits on is now done: awaiting this resumes it."""

    def __init__(self, steps: Generator[Any, Any, Any]) -> None:
        self._steps = steps

    def __await__(self) -> Generator[Any, Any, Any]:
        return self._steps


def _gone(task: asyncio.Task[Any]) -> None:
    STRAYS.discard(task)
    if not task.cancelled():
        task.exception()
