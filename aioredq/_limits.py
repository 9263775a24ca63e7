"""Running a handler call under its ``timeout=``.

The call runs as a task of its own, so a handler that swallows its cancellation cannot hold
the caller (and its pool slot) forever: after a short grace the caller moves on, the delivery
counts as timed out, and the stubborn call is kept (not garbage collected) and counted until it
ends by itself."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from ._exceptions import HandlerTimeout

log = logging.getLogger("aioredq")
# How long a timed-out or interrupted call has to end once cancelled.
GRACE = 1.0
# Calls that ignored their cancellation and still run: the event loop only holds tasks weakly.
STRAYS: set[asyncio.Task[Any]] = set()


async def within(call: Awaitable[Any], timeout: float | None, name: str) -> Any:
    """Await ``call``; past ``timeout`` seconds cancel it and raise ``HandlerTimeout``."""
    if timeout is None:
        return await call
    task = asyncio.ensure_future(call)
    try:
        await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        # We are cancelled (a stop): the handler goes with us.
        task.cancel()
        await _end(task, name)
        raise
    if task.done():
        return task.result()
    task.cancel()
    await _end(task, name)
    raise HandlerTimeout(f"the handler ran longer than its timeout of {timeout:g}s")


async def _end(task: asyncio.Task[Any], name: str) -> None:
    await asyncio.wait({task}, timeout=GRACE)
    if task.done():
        if not task.cancelled():
            task.exception()  # retrieved: its outcome no longer matters
        return
    STRAYS.add(task)
    task.add_done_callback(_gone)
    log.error(
        "handler=%s ignored its cancellation for %.1fs and still runs in the background "
        "(%d such call(s) now); its slot is free again",
        name,
        GRACE,
        len(STRAYS),
    )


def _gone(task: asyncio.Task[Any]) -> None:
    STRAYS.discard(task)
    if not task.cancelled():
        task.exception()
