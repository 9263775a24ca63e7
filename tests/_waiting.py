"""Waiting in tests: poll a condition until it holds, failing with a clear message after a
generous deadline (the machine may be slow and shared; nothing here measures speed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

WAIT = 20.0


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT:.0f} s waiting for {what}")
        await asyncio.sleep(0.01)


async def until_blocked(client: Any, what: str, count: int = 1) -> None:
    """Wait until ``count`` clients of the server behind ``client`` are parked in a blocking
    command (a consumer waiting in BLMOVE / XREADGROUP BLOCK)."""

    async def blocked() -> int:
        return int((await client.info("clients"))["blocked_clients"]) >= count

    await until_redis(blocked, True, what)


async def completes(awaitable: Awaitable[Any], what: str) -> Any:
    """Await ``awaitable``, failing clearly if it has not completed within the deadline."""
    try:
        return await asyncio.wait_for(awaitable, WAIT)
    except TimeoutError:
        pytest.fail(f"{what} did not complete within {WAIT:.0f} s")


async def until_redis(read: Callable[[], Awaitable[Any]], expected: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while (value := await read()) != expected:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {WAIT:.0f} s waiting for {what} (last: {value!r})")
        await asyncio.sleep(0.02)
